// RMSNorm, per-head bf16 RMS norm, RoPE tables (spec §5.3 reference values) and rotation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>

#include "kernels/ops.h"
#include "tests/kernels/reference.h"
#include "tests/kernels/test_util.h"

namespace flotilla::kernels {
namespace {

using test::Rng;

struct NormCase {
  int64_t m, d, ldx, ldy;
};

class RmsNormTest : public ::testing::TestWithParam<NormCase> {};

// Bound: one bf16 ulp (2^-7 relative) of the exact value.
TEST_P(RmsNormTest, MatchesReference) {
  const NormCase c = GetParam();
  Rng rng(c.d);
  const std::vector<bf16> x = rng.Bf16(c.m * c.ldx, 3.0), w = rng.Bf16(c.d, 1.0);
  std::vector<bf16> y(c.m * c.ldy, 0x1234);
  RmsNorm(x.data(), c.ldx, w.data(), c.m, c.d, 1e-6f, y.data(), c.ldy);
  for (int64_t i = 0; i < c.m; ++i) {
    double ss = 0;
    for (int64_t j = 0; j < c.d; ++j)
      ss += ref::Bf16(x[i * c.ldx + j]) * ref::Bf16(x[i * c.ldx + j]);
    const double r = 1.0 / std::sqrt(ss / c.d + static_cast<double>(1e-6f));
    for (int64_t j = 0; j < c.d; ++j) {
      const double want = ref::Bf16(w[j]) * ref::Bf16(x[i * c.ldx + j]) * r;
      ASSERT_LE(std::fabs(ref::Bf16(y[i * c.ldy + j]) - want),
                std::ldexp(std::fabs(want), -7) + 1e-38)
          << i << "," << j;
    }
    for (int64_t j = c.d; j < c.ldy; ++j) ASSERT_EQ(y[i * c.ldy + j], 0x1234);
  }
  // In place (y aliases x) gives the same bits.
  std::vector<bf16> inplace = x;
  RmsNorm(inplace.data(), c.ldx, w.data(), c.m, c.d, 1e-6f, inplace.data(), c.ldx);
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t j = 0; j < c.d; ++j) ASSERT_EQ(inplace[i * c.ldx + j], y[i * c.ldy + j]);
}

INSTANTIATE_TEST_SUITE_P(Shapes, RmsNormTest,
                         ::testing::Values(NormCase{1, 256, 256, 256},
                                           NormCase{3, 4096, 4096, 4096},
                                           NormCase{5, 1024, 1030, 1024}, NormCase{2, 7, 9, 8},
                                           NormCase{4, 100, 100, 101}, NormCase{2, 512, 512, 512}));

// The five bf16 roundings of §5.1 step 4, with the f32 sum replaced by an exact one.
double HeadFactorRef(const bf16* q, int64_t dim, double* sum_out) {
  double sum = 0;
  for (int64_t j = 0; j < dim; ++j)
    sum += ref::Bf16(ref::ToBf16(ref::Bf16(q[j]) * ref::Bf16(q[j])));
  *sum_out = sum;
  const double mean =
      ref::Bf16(ref::ToBf16(static_cast<float>(sum) * (1.0f / static_cast<float>(dim))));
  const double shifted =
      ref::Bf16(ref::ToBf16(static_cast<float>(mean + static_cast<double>(1e-6f))));
  return ref::Bf16(ref::ToBf16(static_cast<float>(1.0 / std::sqrt(shifted))));
}

TEST(HeadRmsNorm, HandWorked) {
  std::vector<bf16> q(3 * 128);
  for (int j = 0; j < 128; ++j) {
    q[j] = F32ToBf16(1.0f);        // mean 1, r = 1
    q[128 + j] = F32ToBf16(2.0f);  // mean 4, r = 0.5
    q[256 + j] = F32ToBf16(3.0f);  // mean 9, r = bf16(1/3) = 0.333984375, q*r = 1.0019.. -> 1.0
  }
  HeadRmsNormBf16(q.data(), 3, 128, 1e-6f);
  for (int j = 0; j < 3 * 128; ++j) EXPECT_EQ(Bf16ToF32(q[j]), 1.0f) << j;
}

TEST(HeadRmsNorm, MatchesReference) {
  for (const int64_t dim : {128, 512, 20}) {
    Rng rng(dim);
    const int64_t rows = 9;
    const std::vector<bf16> q0 = rng.Bf16(rows * dim, 2.0);
    std::vector<bf16> q = q0;
    HeadRmsNormBf16(q.data(), rows, dim, 1e-6f);
    for (int64_t r = 0; r < rows; ++r) {
      double sum;
      const double factor = HeadFactorRef(q0.data() + r * dim, dim, &sum);
      for (int64_t j = 0; j < dim; ++j) {
        const double want = ref::Bf16(ref::ToBf16(ref::Bf16(q0[r * dim + j]) * factor));
        // The f32 sum may round the bf16 mean differently from the exact sum: one ulp of r.
        ASSERT_LE(std::fabs(ref::Bf16(q[r * dim + j]) - want), std::ldexp(std::fabs(want), -6))
            << dim << " " << r;
      }
    }
    EXPECT_EQ(test::CountNan(q), 0);
  }
}

float F32(const char* decimal) { return std::strtof(decimal, nullptr); }

TEST(RopeFrequencies, CompressedLayersYarnSpecValues) {
  float f[32];
  RopeFrequencies(64, 160000.0, true, 16.0, 65536, 32.0, 1.0, f);
  EXPECT_EQ(f[0], 1.0f);
  EXPECT_EQ(f[1], F32("0.687656045"));
  EXPECT_EQ(f[15], F32("3.6355385e-3"));
  EXPECT_EQ(f[16], F32("2.2656249e-3"));
  EXPECT_EQ(f[24], F32("1.9531246e-5"));  // ramp via the f32 reciprocal 0.1f (spec §5.3)
  EXPECT_EQ(f[25], F32("5.3723124e-6"));
  EXPECT_EQ(f[31], F32("5.6805294e-7"));
  // low = 15, high = 25: pairs up to 15 keep the base frequency, from 25 on it is divided by 16.
  float plain[32];
  RopeFrequencies(64, 160000.0, false, 16.0, 65536, 32.0, 1.0, plain);
  for (int i = 0; i <= 15; ++i) EXPECT_EQ(f[i], plain[i]) << i;
  for (int i = 25; i < 32; ++i) EXPECT_EQ(f[i], plain[i] / 16.0f) << i;
  for (int i = 16; i < 25; ++i) {
    EXPECT_LT(f[i], plain[i]) << i;
    EXPECT_GT(f[i], plain[i] / 16.0f) << i;
  }
}

TEST(RopeFrequencies, SlidingWindowLayersSpecValues) {
  float f[32];
  RopeFrequencies(64, 10000.0, false, 16.0, 65536, 32.0, 1.0, f);
  EXPECT_EQ(f[0], 1.0f);
  EXPECT_EQ(f[1], F32("0.749894202"));
  EXPECT_EQ(f[16], F32("9.9999998e-3"));
  EXPECT_EQ(f[31], F32("1.3335215e-4"));
  for (int i = 0; i < 32; ++i) {  // 1 / 10000^(2i/64) within one f32 ulp
    const double want = 1.0 / std::pow(10000.0, 2.0 * i / 64.0);
    EXPECT_NEAR(f[i], want, want * 1.2e-7) << i;
  }
}

struct RopeCase {
  int64_t heads, head_dim, rope_offset, rope_dim;
};

class ApplyRopeTest : public ::testing::TestWithParam<RopeCase> {};

TEST_P(ApplyRopeTest, MatchesReferenceAndInverts) {
  const RopeCase c = GetParam();
  const int64_t tokens = 6, ld = c.heads * c.head_dim + 16;
  const std::vector<int64_t> pos = {0, 1, 2, 1000, 65535, 1048575};
  Rng rng(c.head_dim);
  const std::vector<bf16> x0 = rng.Bf16(tokens * ld);
  std::vector<float> freqs(c.rope_dim / 2);
  RopeFrequencies(c.rope_dim, 160000.0, true, 16.0, 65536, 32.0, 1.0, freqs.data());
  std::vector<bf16> x = x0;
  RopeParams p{.x = x.data(),
               .ld = ld,
               .head_stride = c.head_dim,
               .num_tokens = tokens,
               .num_heads = c.heads,
               .rope_offset = c.rope_offset,
               .rope_dim = c.rope_dim,
               .positions = pos.data(),
               .freqs = freqs.data()};
  ApplyRope(p);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < c.heads; ++h) {
      for (int64_t j = 0; j < c.head_dim; ++j) {
        const int64_t at = t * ld + h * c.head_dim + j;
        if (j < c.rope_offset || j >= c.rope_offset + c.rope_dim) {
          ASSERT_EQ(x[at], x0[at]);
          continue;
        }
        const int64_t i = (j - c.rope_offset) / 2, pair = at - ((j - c.rope_offset) & 1);
        // theta is the f32 product of the contract; cos / sin in double.
        const double theta = static_cast<float>(static_cast<float>(pos[t]) * freqs[i]);
        const double re = ref::Bf16(x0[pair]), im = ref::Bf16(x0[pair + 1]);
        const double want = ((j - c.rope_offset) & 1) ? re * std::sin(theta) + im * std::cos(theta)
                                                      : re * std::cos(theta) - im * std::sin(theta);
        ASSERT_LE(std::fabs(ref::Bf16(x[at]) - want),
                  std::ldexp(std::fabs(want), -7) + 1e-6 * (std::fabs(re) + std::fabs(im)))
            << t << " " << h << " " << j;
      }
    }
  }
  p.inverse = true;
  ApplyRope(p);
  // Forward then inverse: back to the input within two bf16 roundings of the pair's size.
  for (size_t i = 0; i + 1 < x.size(); i += 2) {
    const double size = std::fabs(ref::Bf16(x0[i])) + std::fabs(ref::Bf16(x0[i + 1]));
    for (size_t j = i; j < i + 2; ++j) {
      ASSERT_LE(std::fabs(ref::Bf16(x[j]) - ref::Bf16(x0[j])), std::ldexp(size, -6)) << j;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, ApplyRopeTest,
                         ::testing::Values(RopeCase{4, 128, 64, 64},    // test model heads
                                           RopeCase{64, 512, 448, 64},  // V4-Flash heads
                                           RopeCase{1, 512, 448, 64},   // KV row
                                           RopeCase{4, 128, 64, 64}));

}  // namespace
}  // namespace flotilla::kernels
