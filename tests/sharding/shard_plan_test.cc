#include "sharding/shard_plan.h"

#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/safetensors.h"
#include "common/synthetic.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/sharding/test_util.h"

namespace flotilla {
namespace {

using ::flotilla::testing::ScopedTempDir;
using ::flotilla::testing::ShippedConfig;
using ::flotilla::testing::TilesExactly;
using ::testing::HasSubstr;

Layout MakeLayout(int64_t num_workers, int64_t tp) {
  Layout l;
  l.num_workers = num_workers;
  l.tp = tp;
  return l;
}

ShardPlan MustPlan(const ModelConfig& config, const Layout& layout) {
  absl::StatusOr<ShardPlan> plan = ShardPlan::Make(config, layout, ExpertFormatOf(config));
  EXPECT_TRUE(plan.ok()) << plan.status();
  return std::move(plan).value();
}

ModelConfig Tiny() {
  absl::StatusOr<ModelConfig> c = PresetConfig("tiny");
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

uint64_t WholeBytes(const TensorSpec& spec) {
  uint64_t n = DTypeSize(spec.dtype);
  for (int64_t d : spec.shape) n *= uint64_t(d);
  return n;
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The split the spec prescribes for a tensor name (tp > 1).
SplitKind ExpectedSplit(const std::string& name) {
  if (name == "embed.weight" || name == "head.weight") return SplitKind::kRows;
  if (name.find(".ffn.experts.") != std::string::npos) return SplitKind::kExpert;
  for (const char* rows : {".attn.wq_b.weight", ".attn.wq_b.scale", ".attn.attn_sink",
                           ".attn.wo_a.weight", ".attn.wo_a.scale", ".attn.indexer.wq_b.weight",
                           ".attn.indexer.wq_b.scale", ".attn.indexer.weights_proj.weight"}) {
    if (EndsWith(name, rows)) return SplitKind::kRows;
  }
  return SplitKind::kReplicated;
}

// Every rank's byte runs lie inside their tensor and agree with the local shape; inside each DP
// group the runs of a split tensor tile it exactly once; replicated tensors are whole on every
// rank; each expert tensor is whole on exactly the rank owning the expert; weight bytes add up.
void CheckByteRuns(const ModelConfig& config, const Layout& layout) {
  SCOPED_TRACE(layout.ToString());
  const ShardPlan plan = MustPlan(config, layout);
  std::map<std::string, const TensorSpec*> specs;
  for (const TensorSpec& s : plan.inventory()) specs[s.name] = &s;

  // name -> dp group -> byte spans read by that group's ranks.
  std::map<std::string, std::map<int64_t, std::vector<std::pair<uint64_t, uint64_t>>>> spans;
  std::map<std::string, int64_t> holders;  // ranks reading each tensor
  uint64_t all_ranks = 0;
  for (int64_t r = 0; r < layout.num_workers; ++r) {
    const RankPlan rank = plan.Rank(r);
    uint64_t sum = 0;
    for (const TensorSlice& s : rank.tensors) {
      ASSERT_TRUE(specs.count(s.name)) << s.name;
      const TensorSpec& spec = *specs[s.name];
      const uint64_t whole = WholeBytes(spec);
      EXPECT_EQ(s.shape, spec.shape) << s.name;
      EXPECT_EQ(s.dtype, spec.dtype) << s.name;
      EXPECT_EQ(s.split, layout.tp == 1 && ExpectedSplit(s.name) != SplitKind::kExpert
                             ? SplitKind::kReplicated
                             : ExpectedSplit(s.name))
          << s.name;
      EXPECT_GT(s.run.count, 0u) << s.name;
      EXPECT_GE(s.run.stride, s.run.length) << s.name;
      EXPECT_LE(s.run.end(), whole) << s.name << ": " << ByteRunString(s.run);
      uint64_t local = DTypeSize(s.dtype);
      for (int64_t d : s.local_shape) local *= uint64_t(d);
      EXPECT_EQ(s.bytes(), local) << s.name;
      EXPECT_GT(s.bytes(), 0u) << s.name;
      sum += s.bytes();
      ++holders[s.name];
      if (s.split != SplitKind::kReplicated) {  // replicated: checked whole below
        auto& mine = spans[s.name][s.split == SplitKind::kExpert ? 0 : rank.dp_group];
        for (uint64_t i = 0; i < s.run.count; ++i) {
          mine.push_back(
              {s.run.offset + i * s.run.stride, s.run.offset + i * s.run.stride + s.run.length});
        }
      }
      switch (s.split) {
        case SplitKind::kReplicated:
          EXPECT_EQ(s.run, (ByteRun{0, whole, whole, 1})) << s.name;
          break;
        case SplitKind::kExpert:
          EXPECT_EQ(s.run, (ByteRun{0, whole, whole, 1})) << s.name;
          EXPECT_TRUE(rank.experts.Contains(s.global_expert_idx)) << s.name;
          EXPECT_EQ(plan.placement().Locate(s.global_expert_idx).rank, r) << s.name;
          break;
        case SplitKind::kRows:
          EXPECT_EQ(s.run.count, 1u) << s.name;
          break;
        case SplitKind::kColumns:
          EXPECT_EQ(s.run.count, uint64_t(spec.shape[0])) << s.name;
          break;
      }
    }
    EXPECT_EQ(sum, rank.weight_bytes) << "rank " << r;
    EXPECT_EQ(plan.WeightBytes(r), rank.weight_bytes) << "rank " << r;
    all_ranks += rank.weight_bytes;
  }

  const int64_t w = layout.num_workers, dp = layout.dp();
  uint64_t checkpoint = 0;
  for (const TensorSpec& spec : plan.inventory()) {
    checkpoint += WholeBytes(spec);
    const SplitKind kind = layout.tp == 1 && ExpectedSplit(spec.name) != SplitKind::kExpert
                               ? SplitKind::kReplicated
                               : ExpectedSplit(spec.name);
    const auto& groups = spans[spec.name];
    switch (kind) {
      case SplitKind::kReplicated:
        EXPECT_EQ(holders[spec.name], w) << spec.name;
        break;
      case SplitKind::kExpert:
        EXPECT_EQ(holders[spec.name], 1) << spec.name;
        break;
      case SplitKind::kRows:
      case SplitKind::kColumns:
        EXPECT_EQ(holders[spec.name], w) << spec.name;
        EXPECT_EQ(int64_t(groups.size()), dp) << spec.name;
        break;
    }
    for (const auto& [group, list] : groups) {
      EXPECT_TRUE(TilesExactly(list, WholeBytes(spec))) << spec.name << " dp group " << group;
    }
  }
  EXPECT_EQ(plan.CheckpointBytes(), checkpoint);
  EXPECT_EQ(all_ranks, uint64_t(w) * plan.ReplicatedBytes() + uint64_t(dp) * plan.SplitBytes() +
                           plan.ExpertBytes());
  if (dp == 1) {
    EXPECT_GE(all_ranks, checkpoint);  // one TP group holds the whole model
  }
  // Every TP group holds every dense tensor: replicated ones tp times, split ones once.
  for (int64_t g = 0; g < dp; ++g) {
    uint64_t group = 0;
    for (int64_t t = 0; t < layout.tp; ++t) group += plan.WeightBytes(layout.RankOf(g, t));
    EXPECT_GE(group, uint64_t(layout.tp) * plan.ReplicatedBytes() + plan.SplitBytes());
  }
}

TEST(ShardPlanByteRuns, V4FlashTp2) {
  CheckByteRuns(ShippedConfig("DeepSeek-V4-Flash"), MakeLayout(4, 2));
}
TEST(ShardPlanByteRuns, V4FlashTp4) {
  CheckByteRuns(ShippedConfig("DeepSeek-V4-Flash"), MakeLayout(4, 4));
}
TEST(ShardPlanByteRuns, V4FlashTp4Dp3) {
  CheckByteRuns(ShippedConfig("DeepSeek-V4-Flash"), MakeLayout(12, 4));  // 256 = 12 x 21 + 4
}
TEST(ShardPlanByteRuns, V4FlashTp1) {
  CheckByteRuns(ShippedConfig("DeepSeek-V4-Flash"), MakeLayout(3, 1));
}
TEST(ShardPlanByteRuns, TinyTp2) { CheckByteRuns(Tiny(), MakeLayout(2, 2)); }
TEST(ShardPlanByteRuns, TinyTp2Dp3) { CheckByteRuns(Tiny(), MakeLayout(6, 2)); }
TEST(ShardPlanByteRuns, TinyMoreRanksThanExperts) { CheckByteRuns(Tiny(), MakeLayout(20, 2)); }
TEST(ShardPlanByteRuns, SmallTp4) {
  absl::StatusOr<ModelConfig> small = PresetConfig("small");
  ASSERT_TRUE(small.ok());
  CheckByteRuns(*small, MakeLayout(8, 4));
}
TEST(ShardPlanByteRuns, Mini1bBf16Tp4) {
  CheckByteRuns(ShippedConfig("deepseek-v4-mini-1B"), MakeLayout(4, 4));
}

// Reads every rank's byte runs out of a real (synthetic) checkpoint: names, dtypes and shapes
// are the checkpoint's, and the bytes read, taken in order, are the rank's part as a row-major
// tensor of local_shape: element (i, j) of the part is element (i, j) of the tensor offset by
// the range along the split dimension.
void CheckAgainstCheckpoint(const ModelConfig& config, const Layout& layout) {
  SCOPED_TRACE(layout.ToString());
  ScopedTempDir dir;
  ASSERT_TRUE(WriteSyntheticCheckpoint(config, SyntheticOptions(), dir.path()).ok());
  absl::StatusOr<std::unique_ptr<CheckpointDir>> ckpt = CheckpointDir::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const ShardPlan plan = MustPlan(config, layout);
  ASSERT_EQ(plan.inventory().size(), (*ckpt)->Names().size());
  for (int64_t r = 0; r < layout.num_workers; ++r) {
    for (const TensorSlice& s : plan.Rank(r).tensors) {
      absl::StatusOr<TensorView> view = (*ckpt)->GetChecked(s.name, s.dtype, s.shape);
      ASSERT_TRUE(view.ok()) << view.status();
      ASSERT_LE(s.run.end(), view->info->NumBytes()) << s.name;
      std::string part;
      for (uint64_t i = 0; i < s.run.count; ++i) {
        part.append(reinterpret_cast<const char*>(view->data) + s.run.offset + i * s.run.stride,
                    s.run.length);
      }
      const size_t elem = DTypeSize(s.dtype);
      const int64_t rows = s.local_shape.empty() ? 1 : s.local_shape[0];
      const int64_t cols = s.local_shape.size() < 2 ? 1 : int64_t(part.size() / elem) / rows;
      const int64_t full_cols = s.shape.size() < 2 ? 1 : view->info->NumElements() / s.shape[0];
      const int64_t row0 = s.split == SplitKind::kRows ? s.range.begin : 0;
      const int64_t col0 = s.split == SplitKind::kColumns ? s.range.begin : 0;
      for (int64_t i = 0; i < rows; ++i) {
        const char* want = reinterpret_cast<const char*>(view->data) +
                           (uint64_t((row0 + i) * full_cols + col0)) * elem;
        ASSERT_EQ(std::memcmp(part.data() + uint64_t(i * cols) * elem, want, size_t(cols) * elem),
                  0)
            << s.name << " row " << i;
      }
    }
  }
}

TEST(ShardPlanCheckpoint, TinyTp2) { CheckAgainstCheckpoint(Tiny(), MakeLayout(4, 2)); }
TEST(ShardPlanCheckpoint, TinyTp1) { CheckAgainstCheckpoint(Tiny(), MakeLayout(3, 1)); }

TEST(ShardPlanByteRuns, TinyTp4) { CheckByteRuns(Tiny(), MakeLayout(4, 4)); }
TEST(ShardPlanCheckpoint, TinyTp4) { CheckAgainstCheckpoint(Tiny(), MakeLayout(4, 4)); }

TEST(ShardPlan, TinyRefusesTp8) {
  // tiny has 4 query heads, 4 output groups and 4 indexer heads.
  absl::StatusOr<ShardPlan> plan = ShardPlan::Make(Tiny(), MakeLayout(8, 8), ExpertFormat::kFp4);
  ASSERT_FALSE(plan.ok());
  EXPECT_THAT(std::string(plan.status().message()),
              HasSubstr("tp 8 does not divide num_attention_heads (4)"));
}

TEST(ShardPlan, RefusesAnInvalidConfig) {
  ModelConfig c = Tiny();
  c.o_groups = 3;
  absl::StatusOr<ShardPlan> plan = ShardPlan::Make(c, MakeLayout(2, 1), ExpertFormat::kFp4);
  ASSERT_FALSE(plan.ok());
  EXPECT_THAT(std::string(plan.status().message()), HasSubstr("o_groups"));
}

const TensorSlice& Find(const RankPlan& rank, const std::string& name) {
  for (const TensorSlice& s : rank.tensors) {
    if (s.name == name) return s;
  }
  ADD_FAILURE() << name << " not in rank " << rank.rank;
  static const TensorSlice kNone;
  return kNone;
}

// Hand-worked slices of V4-Flash at tp 8, rank 11 = DP group 1, TP rank 3.
TEST(ShardPlan, V4FlashTp8HandWorkedSlices) {
  const ShardPlan plan = MustPlan(ShippedConfig("DeepSeek-V4-Flash"), Layout::ForCluster(4, 8, 8));
  const RankPlan r = plan.Rank(11);
  EXPECT_EQ(r.dp_group, 1);
  EXPECT_EQ(r.tp_rank, 3);
  EXPECT_EQ(r.node, 1);
  EXPECT_EQ(r.heads, (IndexRange{24, 32}));
  EXPECT_EQ(r.o_groups, (IndexRange{3, 4}));
  EXPECT_EQ(r.index_heads, (IndexRange{24, 32}));
  EXPECT_EQ(r.vocab, (IndexRange{48480, 64640}));
  EXPECT_EQ(r.experts, (IndexRange{88, 96}));

  // embed: bf16 [129280, 4096], rows 48480..64640 of 8192 B.
  const TensorSlice& embed = Find(r, "embed.weight");
  EXPECT_EQ(embed.run, (ByteRun{48480ull * 8192, 16160ull * 8192, 16160ull * 8192, 1}));
  EXPECT_EQ(embed.local_shape, (std::vector<int64_t>{16160, 4096}));
  // wq_b: e4m3 [32768, 1024]; heads 24..32 = rows 12288..16384; scale [256, 8] rows 96..128.
  const TensorSlice& wq_b = Find(r, "layers.7.attn.wq_b.weight");
  EXPECT_EQ(wq_b.range, (IndexRange{12288, 16384}));
  EXPECT_EQ(wq_b.run, (ByteRun{12288ull * 1024, 4096ull * 1024, 4096ull * 1024, 1}));
  const TensorSlice& wq_b_scale = Find(r, "layers.7.attn.wq_b.scale");
  EXPECT_EQ(wq_b_scale.range, (IndexRange{96, 128}));
  EXPECT_EQ(wq_b_scale.run, (ByteRun{96 * 8, 32 * 8, 32 * 8, 1}));
  // attn_sink: f32 [64], heads 24..32.
  EXPECT_EQ(Find(r, "mtp.0.attn.attn_sink").run, (ByteRun{96, 32, 32, 1}));
  // wo_a: e4m3 [8192, 4096], group 3 = rows 3072..4096; scale [64, 32] rows 24..32.
  EXPECT_EQ(Find(r, "layers.0.attn.wo_a.weight").run,
            (ByteRun{3072ull * 4096, 1024ull * 4096, 1024ull * 4096, 1}));
  EXPECT_EQ(Find(r, "layers.0.attn.wo_a.scale").run, (ByteRun{24 * 32, 8 * 32, 8 * 32, 1}));
  // wo_b: e4m3 [4096, 8192], whole on every rank (the TP group gathers wo_a's outputs).
  const TensorSlice& wo_b = Find(r, "layers.0.attn.wo_b.weight");
  EXPECT_EQ(wo_b.split, SplitKind::kReplicated);
  EXPECT_EQ(wo_b.local_shape, (std::vector<int64_t>{4096, 8192}));
  EXPECT_EQ(wo_b.run, (ByteRun{0, 4096ull * 8192, 4096ull * 8192, 1}));
  EXPECT_EQ(Find(r, "layers.0.attn.wo_b.scale").run, (ByteRun{0, 32 * 64, 32 * 64, 1}));
  // indexer (CSA layer 2): wq_b e4m3 [8192, 1024] rows 3072..4096; weights_proj bf16 [64, 4096].
  EXPECT_EQ(Find(r, "layers.2.attn.indexer.wq_b.weight").run,
            (ByteRun{3072ull * 1024, 1024ull * 1024, 1024ull * 1024, 1}));
  EXPECT_EQ(Find(r, "layers.2.attn.indexer.wq_b.scale").run, (ByteRun{24 * 8, 8 * 8, 8 * 8, 1}));
  EXPECT_EQ(Find(r, "layers.2.attn.indexer.weights_proj.weight").run,
            (ByteRun{24 * 8192, 8 * 8192, 8 * 8192, 1}));
  // Replicated and expert tensors are whole.
  EXPECT_EQ(Find(r, "layers.2.attn.wq_a.weight").split, SplitKind::kReplicated);
  EXPECT_EQ(Find(r, "layers.2.ffn.experts.88.w2.weight").split, SplitKind::kExpert);
  EXPECT_EQ(Find(r, "layers.2.ffn.experts.88.w2.weight").run,
            (ByteRun{0, 4096ull * 1024, 4096ull * 1024, 1}));

  // Per layer and expert (FP4, int8-packed + UE8M0 per 32): w1 and w3 [2048, 2048] + [2048, 128];
  // w2 [4096, 1024] + [4096, 64].
  const uint64_t expert = 2 * (2048 * 2048 + 2048 * 128) + (4096 * 1024 + 4096 * 64);
  EXPECT_EQ(plan.ExpertBytes(), expert * 256 * 44);
  // 8 experts in each of 43 + 1 layers on every rank.
  EXPECT_EQ(plan.WeightBytes(11) - plan.WeightBytes(3), 0u);
  EXPECT_EQ(plan.WeightBytes(11), plan.ReplicatedBytes() + plan.SplitBytes() / 8 + expert * 8 * 44);
}

// The official checkpoint (spec §1.4): 69,187 tensors, 158,069,433,298 stored elements,
// 46 files totalling "148.66 GB" (GiB: the data plus the JSON headers).
TEST(ShardPlan, V4FlashCheckpointTotals) {
  const ShardPlan plan = MustPlan(ShippedConfig("DeepSeek-V4-Flash"), MakeLayout(8, 8));
  EXPECT_EQ(plan.inventory().size(), 69187u);
  int64_t elements = 0;
  for (const TensorSpec& s : plan.inventory()) {
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    elements += n;
  }
  EXPECT_EQ(elements, 158069433298);
  EXPECT_NEAR(double(plan.CheckpointBytes()) / double(1ull << 30), 148.66, 0.02);
}

TEST(ShardPlan, MoreRanksThanExpertsLeavesSomeWithNone) {
  const ShardPlan plan = MustPlan(ShippedConfig("DeepSeek-V4-Flash"), MakeLayout(384, 8));
  const RankPlan r = plan.Rank(300);
  EXPECT_TRUE(r.experts.empty());
  for (const TensorSlice& s : r.tensors) EXPECT_NE(s.split, SplitKind::kExpert) << s.name;
  EXPECT_EQ(plan.WeightBytes(300), plan.ReplicatedBytes() + plan.SplitBytes() / 8);
  EXPECT_GT(plan.WeightBytes(255), plan.WeightBytes(256));
}

TEST(ShardPlan, UnevenExpertsGiveTheFirstRanksMoreBytes) {
  const ShardPlan plan = MustPlan(ShippedConfig("DeepSeek-V4-Flash"), MakeLayout(12, 4));
  EXPECT_EQ(plan.Rank(3, false).experts.size(), 22);
  EXPECT_EQ(plan.Rank(4, false).experts.size(), 21);
  EXPECT_GT(plan.WeightBytes(3), plan.WeightBytes(4));
}

TEST(ByteRun, Describes) {
  EXPECT_EQ(ByteRunString(ByteRun{3072, 1024, 8192, 4096}),
            "offset 3072, 4096 x 1024 B every 8192 B");
  EXPECT_EQ(ByteRunString(ByteRun{0, 64, 64, 1}), "offset 0, 64 B");
  EXPECT_EQ((ByteRun{3072, 1024, 8192, 4096}).end(), 3072u + 4095u * 8192u + 1024u);
}

}  // namespace
}  // namespace flotilla
