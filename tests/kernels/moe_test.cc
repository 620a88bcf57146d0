// Router (hash and score layers) and the clamped SwiGLU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/ops.h"
#include "tests/kernels/reference.h"
#include "tests/kernels/test_util.h"

namespace flotilla::kernels {
namespace {

using test::Rng;

double ScoreRef(double z) { return std::sqrt(z > 20 ? z : std::log1p(std::exp(z))); }

TEST(Route, ScoreLayersMatchReference) {
  for (const auto& [experts, top_k] : std::vector<std::pair<int64_t, int64_t>>{{256, 6}, {16, 2}}) {
    const int64_t m = 9;
    Rng rng(experts);
    const std::vector<float> logits = rng.F32(m * experts, 2.0), bias = rng.F32(experts, 0.3);
    std::vector<int32_t> idx(m * top_k);
    std::vector<float> w(m * top_k);
    Route({.logits = logits.data(),
           .bias = bias.data(),
           .m = m,
           .num_experts = experts,
           .top_k = top_k,
           .route_scale = 1.5f,
           .expert_idx = idx.data(),
           .weights = w.data()});
    for (int64_t t = 0; t < m; ++t) {
      std::vector<int32_t> order(experts);
      std::iota(order.begin(), order.end(), 0);
      const auto biased = [&](int32_t e) { return ScoreRef(logits[t * experts + e]) + bias[e]; };
      std::stable_sort(order.begin(), order.end(),
                       [&](int32_t a, int32_t b) { return biased(a) > biased(b); });
      double sum = 0;
      for (int64_t i = 0; i < top_k; ++i) sum += ScoreRef(logits[t * experts + order[i]]);
      for (int64_t i = 0; i < top_k; ++i) {
        EXPECT_EQ(idx[t * top_k + i], order[i]) << t << " " << i;
        const double want = ScoreRef(logits[t * experts + order[i]]) / sum * 1.5;
        EXPECT_NEAR(w[t * top_k + i], want, 1e-6 * want) << t << " " << i;
      }
    }
  }
}

TEST(Route, TiesGoToTheLowerExpertAndLargeLogitsPassThrough) {
  const int64_t experts = 8, top_k = 3;
  std::vector<float> logits(experts, 0.5f), bias(experts, 0.0f);
  logits[5] = 25.0f;  // z > 20: score = sqrt(z) = 5
  std::vector<int32_t> idx(top_k);
  std::vector<float> w(top_k);
  Route({.logits = logits.data(),
         .bias = bias.data(),
         .m = 1,
         .num_experts = experts,
         .top_k = top_k,
         .route_scale = 1.0f,
         .expert_idx = idx.data(),
         .weights = w.data()});
  EXPECT_EQ(idx, (std::vector<int32_t>{5, 0, 1}));
  const double s = ScoreRef(0.5);
  EXPECT_NEAR(w[0], 5.0 / (5 + 2 * s), 1e-6);
  EXPECT_NEAR(w[1], s / (5 + 2 * s), 1e-6);
}

TEST(Route, HashLayersUseTheTableInOrder) {
  const int64_t experts = 256, top_k = 6, m = 3, ld = 8;
  Rng rng(7);
  const std::vector<float> logits = rng.F32(m * experts, 2.0);
  std::vector<int64_t> hash(m * ld);
  for (auto& h : hash) h = rng.Int(0, experts - 1);
  std::vector<int32_t> idx(m * top_k);
  std::vector<float> w(m * top_k);
  Route({.logits = logits.data(),
         .hash_ids = hash.data(),
         .ld_hash = ld,
         .m = m,
         .num_experts = experts,
         .top_k = top_k,
         .route_scale = 1.5f,
         .expert_idx = idx.data(),
         .weights = w.data()});
  for (int64_t t = 0; t < m; ++t) {
    double sum = 0;
    for (int64_t i = 0; i < top_k; ++i) sum += ScoreRef(logits[t * experts + hash[t * ld + i]]);
    for (int64_t i = 0; i < top_k; ++i) {
      EXPECT_EQ(idx[t * top_k + i], hash[t * ld + i]);
      const double want = ScoreRef(logits[t * experts + hash[t * ld + i]]) / sum * 1.5;
      EXPECT_NEAR(w[t * top_k + i], want, 1e-6 * want);
    }
  }
}

TEST(SwiGlu, MatchesReferenceWithClamps) {
  const int64_t m = 5, inter = 128, ld_in = 140, ld_out = 130;
  Rng rng(3);
  std::vector<bf16> gate = rng.Bf16(m * ld_in, 6.0), up = rng.Bf16(m * ld_in, 6.0);
  gate[0] = F32ToBf16(50.0f);  // clamped to 10 (upper only)
  up[0] = F32ToBf16(-30.0f);   // clamped to -10
  gate[1] = F32ToBf16(-50.0f);
  const std::vector<float> row_weight = rng.F32(m, 0.5);
  for (const bool weighted : {false, true}) {
    std::vector<bf16> out(m * ld_out, 0x4242);
    SwiGlu({.gate = gate.data(),
            .up = up.data(),
            .ld_in = ld_in,
            .row_weight = weighted ? row_weight.data() : nullptr,
            .m = m,
            .inter = inter,
            .limit = 10.0f,
            .out = out.data(),
            .ld_out = ld_out});
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t i = 0; i < inter; ++i) {
        const double g = std::min(ref::Bf16(gate[r * ld_in + i]), 10.0);
        const double u = std::clamp(ref::Bf16(up[r * ld_in + i]), -10.0, 10.0);
        const double want = (weighted ? row_weight[r] : 1.0) * g / (1 + std::exp(-g)) * u;
        ASSERT_LE(std::fabs(ref::Bf16(out[r * ld_out + i]) - want),
                  std::ldexp(std::fabs(want), -7) + 1e-30)
            << r << " " << i;
      }
      for (int64_t i = inter; i < ld_out; ++i) ASSERT_EQ(out[r * ld_out + i], 0x4242);
    }
    if (!weighted) {
      EXPECT_NEAR(Bf16ToF32(out[0]), -10.0 * 10.0 / (1 + std::exp(-10.0)), 0.05);
    }
  }
}

// ------------------------------------------------------------------ permutation and combine

TEST(MoePermute, GroupsAssignmentsByExpertInTokenOrder) {
  // 3 tokens, top-2, local experts [4, 8): expert 2 and 9 are another rank's.
  const std::vector<int32_t> idx = {5, 4,   // token 0: flat 0 -> 5, flat 1 -> 4
                                    2, 5,   // token 1: flat 2 -> 2 (not local), 3 -> 5
                                    7, 9};  // token 2: flat 4 -> 7, flat 5 -> 9 (not local)
  std::vector<int64_t> offsets(5, -1);
  std::vector<int32_t> order(6, -1);
  MoePermute({.expert_idx = idx.data(),
              .n = 3,
              .k = 2,
              .first_expert = 4,
              .num_experts = 4,
              .offsets = offsets.data(),
              .order = order.data()});
  EXPECT_EQ(offsets, (std::vector<int64_t>{0, 1, 3, 3, 4}));  // 4: 1, 5: 2, 6: 0, 7: 1
  EXPECT_EQ(std::vector<int32_t>(order.begin(), order.begin() + 4),
            (std::vector<int32_t>{1, 0, 3, 4}));
}

TEST(GatherScatterRows, MoveRowsThroughAnIndexList) {
  // Source rows of 3 bytes at stride 4; flat indices / 2 pick the rows.
  const std::vector<uint8_t> src = {10, 11, 12, 0, 20, 21, 22, 0, 30, 31, 32, 0};
  const std::vector<int32_t> index = {5, 0, 3};  // rows 2, 0, 1
  std::vector<uint8_t> dst(9, 0);
  GatherRows({.src = src.data(),
              .ld_src = 4,
              .index = index.data(),
              .rows = 3,
              .divisor = 2,
              .row_bytes = 3,
              .dst = dst.data(),
              .ld_dst = 3});
  EXPECT_EQ(dst, (std::vector<uint8_t>{30, 31, 32, 10, 11, 12, 20, 21, 22}));
  std::vector<uint8_t> back(12, 0);
  ScatterRows({.src = dst.data(),
               .ld_src = 3,
               .index = index.data(),
               .rows = 3,
               .divisor = 2,
               .row_bytes = 3,
               .dst = back.data(),
               .ld_dst = 4});
  EXPECT_EQ(back, src);
}

TEST(MoeCombine, SumsInIncreasingExpertIdThenShared) {
  // One token, top-3: slot 0 expert 7 (1.0), slot 1 expert 2 (2^25), slot 2 expert 4 (-2^25).
  // Expert order: (2^25 - 2^25) + 1 = 1; slot order would lose the 1 (1 + 2^25 rounds to 2^25).
  const std::vector<int32_t> idx = {7, 2, 4};
  const std::vector<bf16> routed = {F32ToBf16(1.0f), F32ToBf16(0x1p25f), F32ToBf16(-0x1p25f)};
  const std::vector<bf16> shared = {F32ToBf16(0.5f)};
  bf16 out = 0;
  MoeCombine({.expert_idx = idx.data(),
              .routed = routed.data(),
              .shared = shared.data(),
              .n = 1,
              .k = 3,
              .d = 1,
              .out = &out});
  EXPECT_EQ(Bf16ToF32(out), 1.5f);
  MoeCombine(
      {.expert_idx = idx.data(), .routed = routed.data(), .n = 1, .k = 3, .d = 1, .out = &out});
  EXPECT_EQ(Bf16ToF32(out), 1.0f);
  // One rounding at the end: 1 + 2^-8 + 2^-8 is 1 + 2^-7 in f32, representable in bf16, while
  // rounding after each add would stop at 1 (1 + 2^-8 is a bf16 tie, to even: 1).
  const std::vector<int32_t> idx2 = {0, 1};
  const std::vector<bf16> r2 = {F32ToBf16(1.0f), F32ToBf16(0x1p-8f)};
  const std::vector<bf16> s2 = {F32ToBf16(0x1p-8f)};
  MoeCombine({.expert_idx = idx2.data(),
              .routed = r2.data(),
              .shared = s2.data(),
              .n = 1,
              .k = 2,
              .d = 1,
              .out = &out});
  EXPECT_EQ(Bf16ToF32(out), 1.0f + 0x1p-7f);
}

}  // namespace
}  // namespace flotilla::kernels
