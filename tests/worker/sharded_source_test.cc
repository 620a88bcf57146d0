// A rank reads exactly its plan: the bytes it copies equal the plan's count, its slices hold the
// checkpoint's bytes at offsets computed here by hand, and other ranks' experts are absent.
#include <cstring>
#include <filesystem>

#include "common/synthetic.h"
#include "gtest/gtest.h"
#include "sharding/shard_plan.h"
#include "worker/sharded_source.h"

namespace flotilla {
namespace {

namespace fs = std::filesystem;

TEST(ShardedSource, EachRankReadsExactlyItsPlan) {
  const std::string dir = (fs::temp_directory_path() / "flotilla_sharded_source_test").string();
  auto config = PresetConfig("tiny");
  ASSERT_TRUE(config.ok());
  ASSERT_TRUE(WriteSyntheticCheckpoint(*config, SyntheticOptions{}, dir).ok());
  auto ckpt = CheckpointDir::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const ModelConfig& c = *config;

  for (int64_t tp : {1, 2, 4}) {
    Layout layout;
    layout.num_workers = 4;
    layout.tp = tp;
    auto plan = ShardPlan::Make(c, layout, ExpertFormat::kFp4);
    ASSERT_TRUE(plan.ok()) << plan.status();
    uint64_t total = 0;
    for (int64_t r = 0; r < 4; ++r) {
      const RankPlan rp = plan->Rank(r);
      auto src = ShardedSource::Read(**ckpt, rp);
      ASSERT_TRUE(src.ok()) << src.status();
      EXPECT_EQ((*src)->bytes_read(), rp.weight_bytes) << "tp " << tp << " rank " << r;
      total += (*src)->bytes_read();

      // Experts: 16 over 4 ranks, 4 each; only the owner holds them.
      for (int64_t e = 0; e < c.n_routed_experts; ++e) {
        const std::string name = "layers.3.ffn.experts." + std::to_string(e) + ".w2.weight";
        EXPECT_EQ((*src)->Has(name), e / 4 == r) << name << " on rank " << r;
      }
      // wq_b of layer 1: FP8 [heads * 128, 128]; this rank's heads are rows
      // [t * 4/tp * 128, (t + 1) * 4/tp * 128).
      const int64_t t = r % tp, rows = c.num_attention_heads / tp * c.head_dim;
      auto full = (*ckpt)->Get("layers.1.attn.wq_b.weight");
      auto local = (*src)->Get("layers.1.attn.wq_b.weight");
      ASSERT_TRUE(full.ok() && local.ok());
      EXPECT_EQ(local->shape(), (std::vector<int64_t>{rows, c.q_lora_rank}));
      EXPECT_EQ(std::memcmp(local->data, full->data + t * rows * c.q_lora_rank,
                            rows * c.q_lora_rank),
                0);
      // head.weight: bf16 [129280, 256], vocab rows split evenly.
      const int64_t vrows = c.vocab_size / tp;
      auto head = (*src)->Get("head.weight");
      ASSERT_TRUE(head.ok());
      EXPECT_EQ(head->shape()[0], vrows);
      auto full_head = (*ckpt)->Get("head.weight");
      EXPECT_EQ(std::memcmp(head->data, full_head->data + t * vrows * c.hidden_size * 2,
                            vrows * c.hidden_size * 2),
                0);
    }
    // Every byte of the checkpoint is read once per DP group, replicated ones by every rank.
    EXPECT_EQ(total, 4 * plan->ReplicatedBytes() + (4 / tp) * plan->SplitBytes() +
                         plan->ExpertBytes());
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace flotilla
