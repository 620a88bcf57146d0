#include "sharding/step_cost.h"

#include <cmath>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/sharding/test_util.h"

namespace flotilla {
namespace {

using ::flotilla::testing::ShippedConfig;

ShardPlan FlashPlan(int64_t gpus, int64_t tp) {
  absl::StatusOr<ShardPlan> p = ShardPlan::Make(ShippedConfig("DeepSeek-V4-Flash"),
                                                Layout::ForCluster(1, gpus, tp), ExpertFormat::kFp4);
  EXPECT_TRUE(p.ok()) << p.status();
  return *std::move(p);
}

// spec §1.4: "per-token active ≈ 13.27 B (6 of 256 experts + shared + dense parts, counting one
// 129280×4096 matrix)": one token through the whole model on one rank does 2 FLOPs a parameter.
TEST(StepCost, OneTokenDoesTwoFlopsPerActiveParameter) {
  const ShardPlan plan = FlashPlan(1, 1);
  const StepCost cost = EstimateStepCost(plan, plan.Rank(0), StepShape{});
  const double active = (cost.linear_flops + cost.expert_flops) / 2;
  EXPECT_NEAR(active / 1e9, 13.27, 0.005) << active;
}

// One token reads exactly 6 of 256 experts in every layer, and at large batch nearly all
// (the MTP layer counted, so that "all" is the plan's expert bytes).
TEST(StepCost, ExpertsReadGrowWithTheTokensOfTheGroup) {
  const ShardPlan plan = FlashPlan(1, 1);
  const RankPlan rank = plan.Rank(0);
  const double all = double(plan.ExpertBytes());
  StepShape one;
  one.mtp = true;
  EXPECT_NEAR(EstimateStepCost(plan, rank, one).expert_bytes, all * 6 / 256, 1.0);
  StepShape main_only;  // without the MTP layer: 43 of the 44 layers' experts
  EXPECT_NEAR(EstimateStepCost(plan, rank, main_only).expert_bytes, all * 43 / 44 * 6 / 256, 1.0);
  StepShape wide;
  wide.mtp = true;
  wide.sequences = 2048;
  EXPECT_GT(EstimateStepCost(plan, rank, wide).expert_bytes, all * 0.999999);
  // 64 tokens: 1 - (250/256)^64 = 78.0% of the experts.
  StepShape b64;
  b64.mtp = true;
  b64.sequences = 64;
  EXPECT_NEAR(EstimateStepCost(plan, rank, b64).expert_bytes / all,
              1 - std::pow(250.0 / 256.0, 64), 1e-12);
}

// One rank of EP 8 holds 32 experts: an eighth of the expert work of the same group tokens.
TEST(StepCost, AnEpRankDoesItsShareOfTheExperts) {
  const ShardPlan one = FlashPlan(1, 1), eight = FlashPlan(8, 1);
  StepShape s;
  s.sequences = 64;
  s.ep_tokens = 512;
  const StepCost a = EstimateStepCost(one, one.Rank(0), s);
  const StepCost b = EstimateStepCost(eight, eight.Rank(3), s);
  EXPECT_NEAR(b.expert_flops, a.expert_flops / 8, a.expert_flops * 1e-12);
  EXPECT_NEAR(b.expert_bytes, a.expert_bytes / 8, a.expert_bytes * 1e-12);
  EXPECT_DOUBLE_EQ(b.linear_flops, a.linear_flops);  // tp 1: every rank runs all dense parts
}

// Decode at 65,536 positions, one sequence, worked by hand from spec §1.3 and §8.2
// (main entry 584 B, indexer key 68 B, window 128, top-512, 64 heads of 512):
//   SWA (2 layers): 128 entries;  CSA (21): 128 + 512 entries + 16,384 keys;
//   HCA (20): 128 + 512 entries (65,536 / 128).
TEST(StepCost, DecodeKvAndAttentionAt64k) {
  const ShardPlan plan = FlashPlan(1, 1);
  StepShape s;
  s.context = 65536;
  const StepCost cost = EstimateStepCost(plan, plan.Rank(0), s);
  EXPECT_DOUBLE_EQ(cost.kv_bytes, 2 * 128 * 584.0 + 21 * (640 * 584.0 + 16384 * 68.0) +
                                      20 * 640 * 584.0);  // 38,870,016
  EXPECT_DOUBLE_EQ(cost.kv_bytes, 38'870'016.0);
  EXPECT_DOUBLE_EQ(cost.attention_flops, 64.0 * 4 * 512 * (2 * 128 + 41 * 640));
  EXPECT_DOUBLE_EQ(cost.indexer_flops, 64.0 * 2 * 128 * 16384 * 21);
}

// TP 2: half the heads and indexer heads, so half the attention and indexer work; the shared
// expert runs on half the tokens.
TEST(StepCost, TensorParallelRanksSplitHeads) {
  const ShardPlan one = FlashPlan(1, 1), two = FlashPlan(2, 2);
  StepShape s;
  s.sequences = 8;
  s.context = 4096;
  const StepCost a = EstimateStepCost(one, one.Rank(0), s);
  const StepCost b = EstimateStepCost(two, two.Rank(1), s);
  EXPECT_DOUBLE_EQ(b.attention_flops, a.attention_flops / 2);
  EXPECT_DOUBLE_EQ(b.indexer_flops, a.indexer_flops / 2);
  EXPECT_DOUBLE_EQ(b.kv_bytes, a.kv_bytes);  // one KV head: the whole KV on every TP rank
  EXPECT_LT(b.linear_flops, a.linear_flops * 0.75);
}

// A 4,096-token prefill chunk at position 0 of one sequence is compute-bound on an H200
// (4.8 TB/s, 989 TFLOP/s dense FP8 for this estimate); a batch-1 decode is bandwidth-bound.
TEST(StepCost, RooflineIsTheSlowerOfBytesAndFlops) {
  const ShardPlan plan = FlashPlan(1, 1);
  StepShape prefill;
  prefill.tokens_per_seq = 4096;
  const StepCost p = EstimateStepCost(plan, plan.Rank(0), prefill);
  EXPECT_DOUBLE_EQ(p.Seconds(4.8e12, 989e12), p.Flops() / 989e12);
  const StepCost d = EstimateStepCost(plan, plan.Rank(0), StepShape{});
  EXPECT_DOUBLE_EQ(d.Seconds(4.8e12, 989e12), d.Bytes() / 4.8e12);
  EXPECT_EQ(p.kv_bytes, 0.0 + 2 * 128 * 584.0 * 1 + 41 * 128 * 584.0);  // the window only
}

}  // namespace
}  // namespace flotilla
