// Hyper-connections: hand-worked Sinkhorn cases, the doubly-stochastic property, references.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/ops.h"
#include "tests/kernels/reference.h"
#include "tests/kernels/test_util.h"

namespace flotilla::kernels {
namespace {

using test::Rng;

struct HcOut {
  std::vector<bf16> x;
  std::vector<float> post, comb;
};

HcOut RunHcPre(const std::vector<bf16>& h, const std::vector<float>& fn, const float* scale,
               const std::vector<float>& base, int64_t m, int64_t hc, int64_t d, int64_t iters,
               float hc_eps) {
  HcOut o{std::vector<bf16>(m * d), std::vector<float>(m * hc), std::vector<float>(m * hc * hc)};
  HcPre({.h = h.data(),
         .fn = fn.data(),
         .scale = scale,
         .base = base.data(),
         .m = m,
         .hc = hc,
         .d = d,
         .sinkhorn_iters = iters,
         .norm_eps = 1e-6f,
         .hc_eps = hc_eps,
         .x = o.x.data(),
         .post = o.post.data(),
         .comb = o.comb.data()});
  return o;
}

// fn = 0 makes every mix 0, so the split is decided by `base` alone.
TEST(Sinkhorn, HandWorkedTwoStreams) {
  const int64_t hc = 2, d = 16;
  const float ln3 = std::log(3.0f);
  const float scale[3] = {1, 1, 1};
  // pre logits (0, ln 3), post logits (0, -ln 3), comb logits [[ln 3, 0], [0, 0]]
  const std::vector<float> base = {0, ln3, 0, -ln3, ln3, 0, 0, 0};
  const std::vector<float> fn(8 * hc * d, 0.0f);
  std::vector<bf16> h(hc * d);
  for (int64_t c = 0; c < d; ++c) {
    h[c] = F32ToBf16(1.0f);
    h[d + c] = F32ToBf16(2.0f);
  }
  // One column normalisation: softmax rows [3/4 1/4], [1/2 1/2] -> columns / (5/4, 3/4).
  HcOut o = RunHcPre(h, fn, scale, base, 1, hc, d, /*iters=*/1, /*hc_eps=*/0.0f);
  EXPECT_NEAR(o.post[0], 1.0, 1e-7);
  EXPECT_NEAR(o.post[1], 0.5, 1e-7);
  EXPECT_NEAR(o.comb[0], 0.6, 1e-6);
  EXPECT_NEAR(o.comb[1], 1.0 / 3.0, 1e-6);
  EXPECT_NEAR(o.comb[2], 0.4, 1e-6);
  EXPECT_NEAR(o.comb[3], 2.0 / 3.0, 1e-6);
  // x = pre0 * 1 + pre1 * 2 = 0.5 + 1.5 = 2 (pre = sigmoid + eps, eps = 0 here).
  for (int64_t c = 0; c < d; ++c) EXPECT_EQ(Bf16ToF32(o.x[c]), 2.0f);
  // 20 normalisations converge to [[p, 1-p], [1-p, p]] with the cross ratio 3 kept:
  // p^2 / (1-p)^2 = 3, p = sqrt(3) / (1 + sqrt(3)).
  o = RunHcPre(h, fn, scale, base, 1, hc, d, 20, 0.0f);
  const double p = std::sqrt(3.0) / (1.0 + std::sqrt(3.0));
  EXPECT_NEAR(o.comb[0], p, 1e-5);
  EXPECT_NEAR(o.comb[1], 1 - p, 1e-5);
  EXPECT_NEAR(o.comb[2], 1 - p, 1e-5);
  EXPECT_NEAR(o.comb[3], p, 1e-5);
}

TEST(Sinkhorn, DoublyStochasticAfter20Iterations) {
  const int64_t hc = 4, d = 256, m = 5, n_mix = (2 + hc) * hc;
  Rng rng(1);
  const std::vector<bf16> h = rng.Bf16(m * hc * d);
  const std::vector<float> fn = rng.F32(n_mix * hc * d, 0.05);
  const std::vector<float> base = rng.F32(n_mix, 1.0);
  const float scale[3] = {0.5f, 0.7f, 1.3f};
  const HcOut o = RunHcPre(h, fn, scale, base, m, hc, d, 20, 1e-6f);
  for (int64_t t = 0; t < m; ++t) {
    const float* c = o.comb.data() + t * hc * hc;
    for (int64_t k = 0; k < hc; ++k) {
      double col = 0, row = 0;
      for (int64_t j = 0; j < hc; ++j) {
        col += c[j * hc + k];
        row += c[k * hc + j];
        EXPECT_GT(c[j * hc + k], 0.0f);
      }
      EXPECT_NEAR(col, 1.0, 1e-5) << "token " << t << " column " << k;
      EXPECT_NEAR(row, 1.0, 2e-3) << "token " << t << " row " << k;
    }
  }
}

// hc_pre against a double reference: post / comb within 1e-4 relative, x within a bf16 ulp.
TEST(HcPre, MatchesReference) {
  for (const int64_t d : {256, 4096}) {
    const int64_t hc = 4, m = d == 256 ? 3 : 1, n_mix = (2 + hc) * hc, width = hc * d;
    Rng rng(d);
    const std::vector<bf16> h = rng.Bf16(m * width);
    const std::vector<float> fn = rng.F32(n_mix * width, 0.02);
    const std::vector<float> base = rng.F32(n_mix, 0.5);
    const float scale[3] = {0.9f, 1.1f, 1.7f};
    const HcOut o = RunHcPre(h, fn, scale, base, m, hc, d, 20, 1e-6f);
    EXPECT_EQ(test::CountNan(o.x) + test::CountNan(o.post) + test::CountNan(o.comb), 0);
    for (int64_t t = 0; t < m; ++t) {
      const bf16* v = h.data() + t * width;
      double ss = 0;
      for (int64_t i = 0; i < width; ++i) ss += ref::Bf16(v[i]) * ref::Bf16(v[i]);
      const double r = 1.0 / std::sqrt(ss / width + static_cast<double>(1e-6f));
      std::vector<double> mix(n_mix);
      for (int64_t j = 0; j < n_mix; ++j) {
        double dot = 0;
        for (int64_t i = 0; i < width; ++i) dot += fn[j * width + i] * ref::Bf16(v[i]);
        mix[j] = dot * r;
      }
      const double sc[3] = {scale[0], scale[1], scale[2]};
      std::vector<double> bd(base.begin(), base.end()), pre(hc), post(hc), comb(hc * hc);
      ref::SinkhornSplit(mix.data(), sc, bd.data(), hc, 20, static_cast<double>(1e-6f), pre.data(),
                         post.data(), comb.data());
      for (int64_t j = 0; j < hc; ++j)
        EXPECT_NEAR(o.post[t * hc + j], post[j], 1e-4 * std::fabs(post[j])) << j;
      for (int64_t j = 0; j < hc * hc; ++j)
        EXPECT_NEAR(o.comb[t * hc * hc + j], comb[j], 1e-4 * comb[j] + 1e-7) << j;
      for (int64_t c = 0; c < d; ++c) {
        double want = 0, size = 0;
        for (int64_t j = 0; j < hc; ++j) {
          want += pre[j] * ref::Bf16(v[j * d + c]);
          size += std::fabs(pre[j] * ref::Bf16(v[j * d + c]));
        }
        ASSERT_LE(std::fabs(ref::Bf16(o.x[t * d + c]) - want),
                  std::ldexp(std::fabs(want), -7) + 1e-4 * size)
            << c;
      }
    }
  }
}

TEST(HcPost, MatchesReference) {
  const int64_t hc = 4, d = 256, m = 3;
  Rng rng(2);
  const std::vector<bf16> x = rng.Bf16(m * d), res = rng.Bf16(m * hc * d);
  const std::vector<float> post = rng.F32(m * hc, 0.5), comb = rng.F32(m * hc * hc, 0.3);
  std::vector<bf16> out(m * hc * d);
  HcPost({.x = x.data(),
          .res = res.data(),
          .post = post.data(),
          .comb = comb.data(),
          .m = m,
          .hc = hc,
          .d = d,
          .h_out = out.data()});
  for (int64_t t = 0; t < m; ++t) {
    for (int64_t k = 0; k < hc; ++k) {
      for (int64_t c = 0; c < d; ++c) {
        double want = post[t * hc + k] * ref::Bf16(x[t * d + c]);
        double size = std::fabs(want);
        for (int64_t j = 0; j < hc; ++j) {
          const double term = comb[t * hc * hc + j * hc + k] * ref::Bf16(res[(t * hc + j) * d + c]);
          want += term;
          size += std::fabs(term);
        }
        ASSERT_LE(std::fabs(ref::Bf16(out[(t * hc + k) * d + c]) - want),
                  std::ldexp(std::fabs(want), -7) + std::ldexp(size, -20));
      }
    }
  }
  EXPECT_EQ(test::CountNan(out), 0);
}

TEST(HcHead, MatchesReference) {
  const int64_t hc = 4, d = 256, m = 2, width = hc * d;
  Rng rng(3);
  const std::vector<bf16> h = rng.Bf16(m * width);
  const std::vector<float> fn = rng.F32(hc * width, 0.02), base = rng.F32(hc, 0.5);
  const float scale[1] = {1.3f};
  std::vector<bf16> y(m * d);
  HcHead({.h = h.data(),
          .fn = fn.data(),
          .scale = scale,
          .base = base.data(),
          .m = m,
          .hc = hc,
          .d = d,
          .norm_eps = 1e-6f,
          .hc_eps = 1e-6f,
          .y = y.data()});
  for (int64_t t = 0; t < m; ++t) {
    const bf16* v = h.data() + t * width;
    double ss = 0;
    for (int64_t i = 0; i < width; ++i) ss += ref::Bf16(v[i]) * ref::Bf16(v[i]);
    const double r = 1.0 / std::sqrt(ss / width + static_cast<double>(1e-6f));
    std::vector<double> pre(hc);
    for (int64_t j = 0; j < hc; ++j) {
      double dot = 0;
      for (int64_t i = 0; i < width; ++i) dot += fn[j * width + i] * ref::Bf16(v[i]);
      pre[j] = 1.0 / (1.0 + std::exp(-(dot * r * scale[0] + base[j]))) + static_cast<double>(1e-6f);
    }
    for (int64_t c = 0; c < d; ++c) {
      double want = 0, size = 0;
      for (int64_t j = 0; j < hc; ++j) {
        want += pre[j] * ref::Bf16(v[j * d + c]);
        size += std::fabs(pre[j] * ref::Bf16(v[j * d + c]));
      }
      ASSERT_LE(std::fabs(ref::Bf16(y[t * d + c]) - want),
                std::ldexp(std::fabs(want), -7) + 1e-5 * size)
          << c;
    }
  }
}

}  // namespace
}  // namespace flotilla::kernels
