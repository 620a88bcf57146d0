// Sparse attention, compressor pooling, Hadamard rotation, indexer scores and top-k.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "kernels/ops.h"
#include "tests/kernels/reference.h"
#include "tests/kernels/test_util.h"

namespace flotilla::kernels {
namespace {

using test::Rng;
const float kInf = std::numeric_limits<float>::infinity();

// ------------------------------------------------------------------ sparse attention

struct AttnCase {
  int64_t heads, dim, n;
  std::vector<int64_t> empty;  // list positions without a row
};

class SparseAttentionTest : public ::testing::TestWithParam<AttnCase> {};

// Reference: softmax over [scores, sink] in double, sink probability discarded. The kernel rounds
// probabilities to bf16 before P.V (2^-9 relative each) and the output to bf16.
TEST_P(SparseAttentionTest, MatchesReference) {
  const AttnCase c = GetParam();
  Rng rng(c.n);
  const std::vector<bf16> q = rng.Bf16(c.heads * c.dim), kv = rng.Bf16(c.n * c.dim);
  const std::vector<float> sink = rng.F32(c.heads, 1.0);
  std::vector<const bf16*> rows(c.n);
  for (int64_t i = 0; i < c.n; ++i) rows[i] = kv.data() + i * c.dim;
  for (int64_t i : c.empty) rows[i] = nullptr;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.dim)));
  std::vector<bf16> out(c.heads * c.dim);
  SparseAttention({.q = q.data(),
                   .rows = rows.data(),
                   .n = c.n,
                   .sink = sink.data(),
                   .num_heads = c.heads,
                   .dim = c.dim,
                   .scale = scale,
                   .out = out.data()});
  EXPECT_EQ(test::CountNan(out), 0);
  for (int64_t h = 0; h < c.heads; ++h) {
    std::vector<double> s(c.n, -1e300);
    double mx = -1e300;
    for (int64_t i = 0; i < c.n; ++i) {
      if (!rows[i]) continue;
      double dot = 0;
      for (int64_t j = 0; j < c.dim; ++j)
        dot += ref::Bf16(q[h * c.dim + j]) * ref::Bf16(rows[i][j]);
      s[i] = dot * scale;
      mx = std::max(mx, s[i]);
    }
    double den = std::exp(sink[h] - mx);
    for (int64_t i = 0; i < c.n; ++i) den += rows[i] ? std::exp(s[i] - mx) : 0.0;
    for (int64_t j = 0; j < c.dim; ++j) {
      double want = 0, size = 0;
      for (int64_t i = 0; i < c.n; ++i) {
        if (!rows[i]) continue;
        const double term = std::exp(s[i] - mx) / den * ref::Bf16(rows[i][j]);
        want += term;
        size += std::fabs(term);
      }
      ASSERT_LE(std::fabs(ref::Bf16(out[h * c.dim + j]) - want),
                std::ldexp(std::fabs(want), -7) + std::ldexp(size, -8))
          << "head " << h << " dim " << j;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, SparseAttentionTest,
                         ::testing::Values(AttnCase{4, 128, 1, {}},
                                           AttnCase{4, 128, 150, {3, 64, 65, 149}},  // test model
                                           AttnCase{4, 128, 64, {}},
                                           AttnCase{
                                               64, 512, 640, {100, 127, 130, 600}},  // V4-Flash
                                           AttnCase{2, 512, 200, {}}));

TEST(SparseAttention, HandWorked) {
  // One row, no sink weight: the output is the row itself. Two equal rows: the same.
  Rng rng(1);
  const std::vector<bf16> q = rng.Bf16(128), row = rng.Bf16(128);
  const float sink[1] = {-kInf};
  const bf16* rows[2] = {row.data(), row.data()};
  std::vector<bf16> out(128);
  for (int n = 1; n <= 2; ++n) {
    SparseAttention({.q = q.data(),
                     .rows = rows,
                     .n = n,
                     .sink = sink,
                     .num_heads = 1,
                     .dim = 128,
                     .scale = 0.088388346f,
                     .out = out.data()});
    for (int j = 0; j < 128; ++j) EXPECT_EQ(out[j], row[j]) << n << " " << j;
  }
  // A block that is entirely empty changes nothing.
  std::vector<const bf16*> padded(130, nullptr);
  padded[0] = row.data();
  SparseAttention({.q = q.data(),
                   .rows = padded.data(),
                   .n = 130,
                   .sink = sink,
                   .num_heads = 1,
                   .dim = 128,
                   .scale = 0.088388346f,
                   .out = out.data()});
  for (int j = 0; j < 128; ++j) EXPECT_EQ(out[j], row[j]) << j;
}

// ------------------------------------------------------------------ compressor pooling

TEST(CompressPool, HandWorked) {
  // Slot 0 is empty (g = -inf, k garbage but finite): it weighs exactly 0.
  const float k0[2] = {1e30f, -7.0f}, k1[2] = {2.0f, 8.0f}, k2[2] = {4.0f, 2.0f};
  const float g0[2] = {-kInf, -kInf}, g1[2] = {0.0f, std::log(3.0f)}, g2[2] = {0.0f, 0.0f};
  const float* k[3] = {k0, k1, k2};
  const float* g[3] = {g0, g1, g2};
  float out[2];
  CompressPool(k, g, 3, 2, out);
  EXPECT_EQ(out[0], 3.0f);                         // (1/2) * 2 + (1/2) * 4, exact
  EXPECT_NEAR(out[1], 0.75 * 8 + 0.25 * 2, 2e-6);  // softmax (3/4, 1/4)
}

TEST(CompressPool, MatchesReference) {
  for (const int64_t slots : {8, 128}) {
    const int64_t d = slots == 8 ? 512 : 128;
    Rng rng(slots);
    std::vector<std::vector<float>> kk(slots), gg(slots);
    std::vector<const float*> k(slots), g(slots);
    for (int64_t s = 0; s < slots; ++s) {
      kk[s] = rng.F32(d);
      gg[s] = rng.F32(d, 2.0);
      if (slots == 8 && s < 4 && (s % 2)) std::fill(gg[s].begin(), gg[s].end(), -kInf);
      k[s] = kk[s].data();
      g[s] = gg[s].data();
    }
    std::vector<float> out(d);
    CompressPool(k.data(), g.data(), slots, d, out.data());
    for (int64_t c = 0; c < d; ++c) {
      double mx = -1e300;
      for (int64_t s = 0; s < slots; ++s) mx = std::max(mx, static_cast<double>(g[s][c]));
      double den = 0, want = 0, size = 0;
      for (int64_t s = 0; s < slots; ++s) den += std::exp(g[s][c] - mx);
      for (int64_t s = 0; s < slots; ++s) {
        want += std::exp(g[s][c] - mx) / den * k[s][c];
        size += std::exp(g[s][c] - mx) / den * std::fabs(k[s][c]);
      }
      ASSERT_LE(std::fabs(out[c] - want), 1e-6 * size + 1e-30) << slots << " " << c;
    }
  }
}

// ------------------------------------------------------------------ Hadamard

int Popcount(int64_t v) { return __builtin_popcountll(static_cast<unsigned long long>(v)); }

TEST(Hadamard, ExactOnRepresentableInputs) {
  for (const int64_t dim : {2, 8, 64, 128}) {
    Rng rng(dim);
    const int64_t rows = 5;
    std::vector<bf16> x(rows * dim);
    for (auto& v : x) v = F32ToBf16(static_cast<float>(rng.Int(-8, 8)));
    const std::vector<bf16> x0 = x;
    HadamardRotateBf16(x.data(), rows, dim);
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t a = 0; a < dim; ++a) {
        int64_t hx = 0;  // Sylvester H[a][b] = (-1)^popcount(a & b), integer arithmetic
        for (int64_t b = 0; b < dim; ++b)
          hx += (Popcount(a & b) & 1 ? -1 : 1) * static_cast<int64_t>(Bf16ToF32(x0[r * dim + b]));
        // The butterflies are exact here; one f32 product with f32(1/sqrt(dim)), one rounding.
        EXPECT_EQ(x[r * dim + a], ref::ToBf16(static_cast<float>(static_cast<double>(hx) * scale)))
            << dim << " " << a;
        EXPECT_NEAR(Bf16ToF32(x[r * dim + a]), hx / std::sqrt(static_cast<double>(dim)),
                    std::ldexp(std::fabs(hx / std::sqrt(static_cast<double>(dim))), -8) + 1e-30);
      }
    }
  }
}

TEST(Hadamard, MatchesMatrixProduct) {
  const int64_t dim = 128, rows = 7;
  Rng rng(2);
  std::vector<bf16> x = rng.Bf16(rows * dim);
  const std::vector<bf16> x0 = x;
  HadamardRotateBf16(x.data(), rows, dim);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t a = 0; a < dim; ++a) {
      double want = 0, size = 0;
      for (int64_t b = 0; b < dim; ++b) {
        const double v = ref::Bf16(x0[r * dim + b]);
        want += (Popcount(a & b) & 1 ? -v : v);
        size += std::fabs(v);
      }
      want /= std::sqrt(static_cast<double>(dim));
      ASSERT_LE(std::fabs(ref::Bf16(x[r * dim + a]) - want),
                std::ldexp(std::fabs(want), -7) + 1e-6 * size);
    }
  }
}

// ------------------------------------------------------------------ indexer scores

TEST(IndexerScores, HandWorked) {
  // Head 0 looks at element 0, head 1 at element 1 (one-hot queries).
  const int64_t heads = 2, dim = 128, n = 3;
  std::vector<bf16> q(heads * dim, 0), keys(n * dim, 0);
  q[0] = F32ToBf16(1.0f);
  q[dim + 1] = F32ToBf16(1.0f);
  const float k0[3] = {2.0f, -1.0f, 0.5f}, k1[3] = {3.0f, 4.0f, -2.0f};
  for (int j = 0; j < n; ++j) {
    keys[j * dim] = F32ToBf16(k0[j]);
    keys[j * dim + 1] = F32ToBf16(k1[j]);
  }
  const bf16 w[2] = {F32ToBf16(0.5f), F32ToBf16(0.25f)};
  float scores[3];
  IndexerScores({.q = q.data(),
                 .w = w,
                 .keys = keys.data(),
                 .ldk = dim,
                 .n = n,
                 .num_heads = heads,
                 .dim = dim,
                 .scores = scores});
  EXPECT_EQ(scores[0], 0.5f * 2 + 0.25f * 3);  // 1.75
  EXPECT_EQ(scores[1], 0.0f + 0.25f * 4);      // ReLU drops -1
  EXPECT_EQ(scores[2], 0.5f * 0.5f + 0.0f);
}

TEST(IndexerScores, MatchesReference) {
  for (const int64_t heads : {4, 64}) {
    const int64_t dim = 128, n = 1000, ldk = 136;
    Rng rng(heads);
    const std::vector<bf16> q = rng.Bf16(heads * dim), keys = rng.Bf16(n * ldk),
                            w = rng.Bf16(heads, 0.01);
    std::vector<float> scores(n);
    IndexerScores({.q = q.data(),
                   .w = w.data(),
                   .keys = keys.data(),
                   .ldk = ldk,
                   .n = n,
                   .num_heads = heads,
                   .dim = dim,
                   .scores = scores.data()});
    for (int64_t j = 0; j < n; ++j) {
      double want = 0, size = 0;
      for (int64_t h = 0; h < heads; ++h) {
        double dot = 0;
        for (int64_t i = 0; i < dim; ++i)
          dot += ref::Bf16(q[h * dim + i]) * ref::Bf16(keys[j * ldk + i]);
        const double relu = std::max(0.0, ref::Bf16(ref::ToBf16(dot)));
        want += ref::Bf16(ref::ToBf16(relu * ref::Bf16(w[h])));
        size += std::fabs(relu * ref::Bf16(w[h]));
      }
      // A dot near a bf16 tie may round to the neighbour: up to 1.5 bf16 ulps per head.
      ASSERT_LE(std::fabs(scores[j] - want), std::ldexp(size, -6) + 1e-30) << heads << " " << j;
    }
  }
}

// ------------------------------------------------------------------ top-k

std::vector<int32_t> TopKRef(const std::vector<float>& s, int64_t k) {
  std::vector<int32_t> idx(s.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return s[a] > s[b]; });
  idx.resize(k);
  return idx;
}

TEST(TopK, ExactWithTies) {
  for (const auto& [n, k] : std::vector<std::pair<int64_t, int64_t>>{
           {1000, 37}, {65536, 512}, {10, 10}, {1, 1}, {600, 512}}) {
    Rng rng(n + k);
    std::vector<float> s(n);
    for (auto& v : s) v = static_cast<float>(rng.Int(-20, 20)) * 0.25f;  // many ties
    for (int64_t i = 0; i < n; i += 7) s[i] = -kInf;                     // masked entries
    std::vector<int32_t> idx(k);
    TopK(s.data(), n, k, idx.data());
    EXPECT_EQ(idx, TopKRef(s, k)) << n << " " << k;
  }
}

// NaN ranks after every number; the buffered one-pass selection cuts many times on long inputs.
TEST(TopK, NaNsLastAndLongInputsExact) {
  const auto ref = [](const std::vector<float>& s, int64_t k) {
    std::vector<int32_t> idx(s.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) {
      const bool an = std::isnan(s[a]), bn = std::isnan(s[b]);
      if (an != bn) return bn;
      return !an && s[a] > s[b];
    });
    idx.resize(k);
    return idx;
  };
  for (const auto& [n, k] : std::vector<std::pair<int64_t, int64_t>>{
           {300000, 512}, {100000, 4}, {5000, 1}, {40, 30}, {20, 20}}) {
    Rng rng(n * 3 + k);
    std::vector<float> s(n);
    // Rising scores make every cut raise the threshold; a few NaNs and ties in between.
    for (int64_t i = 0; i < n; ++i) s[i] = float(i % 1000) * 0.01f + float(rng.Int(0, 3));
    for (int64_t i = 5; i < n; i += 97) s[i] = std::numeric_limits<float>::quiet_NaN();
    std::vector<int32_t> idx(k);
    TopK(s.data(), n, k, idx.data());
    EXPECT_EQ(idx, ref(s, k)) << n << " " << k;
  }
  // Fewer numbers than k: the NaNs fill the tail in index order.
  std::vector<float> s = {std::nanf(""), 1.0f, std::nanf(""), 2.0f};
  std::vector<int32_t> idx(4);
  TopK(s.data(), 4, 4, idx.data());
  EXPECT_EQ(idx, (std::vector<int32_t>{3, 1, 0, 2}));
}

}  // namespace
}  // namespace flotilla::kernels
