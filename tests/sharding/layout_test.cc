#include "sharding/layout.h"

#include <string>
#include <utility>
#include <vector>

#include "common/synthetic.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sharding/shard_plan.h"
#include "tests/sharding/test_util.h"

namespace flotilla {
namespace {

using ::flotilla::testing::ShippedConfig;
using ::flotilla::testing::TilesExactly;
using ::testing::HasSubstr;
using ::testing::Not;

const std::vector<int64_t> kWorkerCounts = {1, 2, 3, 4, 8, 16, 256, 384};
const std::vector<int64_t> kTpDegrees = {1, 2, 4, 8};

Layout MakeLayout(int64_t num_workers, int64_t tp) {
  Layout l;
  l.num_workers = num_workers;
  l.tp = tp;
  return l;
}

std::string ErrorOf(const Layout& layout, const ModelConfig& config) {
  const absl::Status s = layout.Validate(config);
  EXPECT_FALSE(s.ok()) << layout.ToString();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  return std::string(s.message());
}

TEST(SplitEvenly, HandWorked) {
  EXPECT_EQ(SplitEvenly(10, 4, 0), (IndexRange{0, 3}));
  EXPECT_EQ(SplitEvenly(10, 4, 1), (IndexRange{3, 6}));
  EXPECT_EQ(SplitEvenly(10, 4, 2), (IndexRange{6, 8}));
  EXPECT_EQ(SplitEvenly(10, 4, 3), (IndexRange{8, 10}));
  EXPECT_EQ(SplitEvenly(129280, 8, 3), (IndexRange{48480, 64640}));
  EXPECT_EQ(SplitEvenly(129281, 2, 0), (IndexRange{0, 64641}));
  EXPECT_EQ(SplitEvenly(129281, 2, 1), (IndexRange{64641, 129281}));
  EXPECT_EQ(SplitEvenly(2, 3, 2), (IndexRange{2, 2}));
}

TEST(SplitEvenly, TilesAndDiffersByAtMostOne) {
  for (int64_t total : {0, 1, 7, 64, 129280, 129281}) {
    for (int64_t parts : {1, 2, 3, 5, 8, 384}) {
      std::vector<std::pair<uint64_t, uint64_t>> spans;
      int64_t smallest = total, largest = 0;
      for (int64_t p = 0; p < parts; ++p) {
        const IndexRange r = SplitEvenly(total, parts, p);
        spans.push_back({uint64_t(r.begin), uint64_t(r.end)});
        smallest = std::min(smallest, r.size());
        largest = std::max(largest, r.size());
        if (p > 0) {
          EXPECT_GE(SplitEvenly(total, parts, p - 1).size(), r.size());
        }
      }
      EXPECT_TRUE(TilesExactly(spans, uint64_t(total))) << total << " / " << parts;
      EXPECT_LE(largest - smallest, 1);
    }
  }
}

TEST(LayoutValidate, AcceptsTheDesignLayoutsOfV4Flash) {
  const ModelConfig flash = ShippedConfig("DeepSeek-V4-Flash");
  for (int64_t tp : kTpDegrees) {
    for (int64_t w : kWorkerCounts) {
      const Layout l = MakeLayout(w, tp);
      EXPECT_EQ(l.Validate(flash).ok(), w % tp == 0) << l.ToString();
    }
  }
  EXPECT_TRUE(Layout::ForCluster(4, 8, 8).Validate(flash).ok());
  EXPECT_TRUE(Layout::ForCluster(2, 8, 4).Validate(ShippedConfig("DeepSeek-V4-Pro")).ok());
  // Pro has 128 heads and 16 output groups: tp 16 is possible there, not on Flash (8 groups).
  EXPECT_TRUE(MakeLayout(32, 16).Validate(ShippedConfig("DeepSeek-V4-Pro")).ok());
}

TEST(LayoutValidate, RefusesTpNotDividingHeads) {
  const ModelConfig flash = ShippedConfig("DeepSeek-V4-Flash");
  const std::string msg = ErrorOf(MakeLayout(6, 3), flash);
  EXPECT_THAT(msg, HasSubstr("tp 3 does not divide num_attention_heads (64)"));
  EXPECT_THAT(msg, HasSubstr("o_groups (8)"));
  EXPECT_THAT(msg, HasSubstr("index_n_heads (64)"));
  EXPECT_THAT(msg, HasSubstr("valid tp for this model: {1, 2, 4, 8}"));
}

TEST(LayoutValidate, RefusesTpNotDividingOutputGroups) {
  const std::string msg = ErrorOf(MakeLayout(16, 16), ShippedConfig("DeepSeek-V4-Flash"));
  EXPECT_THAT(msg, HasSubstr("tp 16 does not divide o_groups (8)"));
  EXPECT_THAT(msg, Not(HasSubstr("num_attention_heads")));
}

TEST(LayoutValidate, RefusesTpNotDividingIndexerHeads) {
  ModelConfig c = ShippedConfig("DeepSeek-V4-Flash");
  c.index_n_heads = 4;
  const std::string msg = ErrorOf(MakeLayout(8, 8), c);
  EXPECT_THAT(msg, HasSubstr("tp 8 does not divide index_n_heads (4)"));
  EXPECT_THAT(msg, HasSubstr("valid tp for this model: {1, 2, 4}"));
}

TEST(LayoutValidate, RefusesWorkersNotAMultipleOfTp) {
  const std::string msg = ErrorOf(MakeLayout(12, 8), ShippedConfig("DeepSeek-V4-Flash"));
  EXPECT_THAT(msg, HasSubstr("num_workers 12 is not a multiple of tp 8"));
}

TEST(LayoutValidate, RefusesNonPositiveCounts) {
  const ModelConfig flash = ShippedConfig("DeepSeek-V4-Flash");
  EXPECT_THAT(ErrorOf(MakeLayout(8, 0), flash), HasSubstr("tp is 0; expected >= 1"));
  EXPECT_THAT(ErrorOf(MakeLayout(8, -2), flash), HasSubstr("tp is -2; expected >= 1"));
  EXPECT_THAT(ErrorOf(MakeLayout(0, 1), flash), HasSubstr("num_workers is 0; expected >= 1"));
}

TEST(LayoutValidate, RefusesWorkersOtherThanNodesTimesGpus) {
  const ModelConfig flash = ShippedConfig("DeepSeek-V4-Flash");
  Layout l = Layout::ForCluster(4, 8, 8);
  l.num_workers = 16;
  EXPECT_THAT(ErrorOf(l, flash),
              HasSubstr("num_workers is 16; expected nodes x gpus_per_node = 4 x 8 = 32"));
  Layout half = MakeLayout(8, 8);
  half.nodes = 1;
  EXPECT_THAT(ErrorOf(half, flash), HasSubstr("expected both > 0, or both 0"));
}

TEST(LayoutValidate, RefusesTpAboveVocabulary) {
  ModelConfig c = ShippedConfig("DeepSeek-V4-Flash");
  c.vocab_size = 4;
  c.bos_token_id = 0;
  c.eos_token_id = 1;
  EXPECT_THAT(ErrorOf(MakeLayout(8, 8), c), HasSubstr("tp 8 exceeds vocab_size (4)"));
}

// A split that is legal for heads but cuts an FP8 128x128 scale block is refused, naming the
// tensor; the same split of an all-BF16 model is fine.
TEST(LayoutValidate, RefusesSplitsInsideFp8ScaleBlocks) {
  absl::StatusOr<ModelConfig> small = PresetConfig("small");
  ASSERT_TRUE(small.ok()) << small.status();
  ModelConfig c = *small;  // 16 heads x 64, 8 indexer heads x 64, FP8
  c.o_groups = 8;
  ASSERT_TRUE(c.Validate().ok()) << c.Validate();
  const std::string msg = ErrorOf(MakeLayout(8, 8), c);
  EXPECT_THAT(msg, HasSubstr("tensor layers.L.attn.indexer.wq_b.weight: tp 8 gives each rank 1 "
                             "indexer heads = 64 rows, not a multiple of 128"));
  EXPECT_THAT(msg, HasSubstr("attn.indexer.wq_b.scale"));
  EXPECT_THAT(msg, Not(HasSubstr("attn.wq_b.weight")));  // 2 heads x 64 = 128 rows: fine
  EXPECT_THAT(msg, HasSubstr("valid tp for this model: {1, 2, 4}"));

  // Output groups of 192 rows: legal groups, but a 192-row wo_a part straddles a 128 block. (A query-head split never can once the config is valid: wo_a's
  // input dim, heads per group x head_dim, is already a multiple of 128.)
  c = *small;
  c.o_lora_rank = 192;
  ASSERT_TRUE(c.Validate().ok()) << c.Validate();
  const std::string groups = ErrorOf(MakeLayout(4, 4), c);
  EXPECT_THAT(groups, HasSubstr("tensor layers.L.attn.wo_a.weight: tp 4 gives each rank 1 "
                                "output groups = 192 rows"));
  EXPECT_THAT(groups, HasSubstr("valid tp for this model: {1, 2}"));

  ModelConfig bf16 = c;
  bf16.quantization_config.present = false;
  bf16.expert_dtype = "";
  EXPECT_TRUE(MakeLayout(4, 4).Validate(bf16).ok());
}

TEST(Layout, RankArithmetic) {
  const Layout l = Layout::ForCluster(4, 8, 4);
  EXPECT_EQ(l.num_workers, 32);
  EXPECT_EQ(l.dp(), 8);
  EXPECT_EQ(l.ep(), 32);
  EXPECT_EQ(l.DpGroupOf(13), 3);
  EXPECT_EQ(l.TpRankOf(13), 1);
  EXPECT_EQ(l.RankOf(3, 1), 13);
  EXPECT_EQ(l.NodeOf(13), 1);
  EXPECT_EQ(MakeLayout(8, 2).NodeOf(5), -1);
  EXPECT_EQ(l.ToString(), "W=32 (dp 8 x tp 4), 4 nodes x 8 GPUs");
}

// Inside every DP group the TP ranks' heads, output groups, indexer heads and vocabulary rows
// tile the whole range once; over all W ranks the experts tile [0, E) once.
void CheckRangesTile(const ModelConfig& config) {
  for (int64_t tp : kTpDegrees) {
    for (int64_t w : kWorkerCounts) {
      if (w % tp != 0) continue;
      const Layout layout = MakeLayout(w, tp);
      absl::StatusOr<ShardPlan> plan = ShardPlan::Make(config, layout, ExpertFormatOf(config));
      ASSERT_TRUE(plan.ok()) << plan.status();
      std::vector<std::pair<uint64_t, uint64_t>> experts;
      for (int64_t g = 0; g < layout.dp(); ++g) {
        std::vector<std::pair<uint64_t, uint64_t>> heads, groups, index_heads, vocab;
        for (int64_t t = 0; t < tp; ++t) {
          const RankPlan r = plan->Rank(layout.RankOf(g, t), /*with_tensors=*/false);
          EXPECT_EQ(r.dp_group, g);
          EXPECT_EQ(r.tp_rank, t);
          heads.push_back({r.heads.begin, r.heads.end});
          groups.push_back({r.o_groups.begin, r.o_groups.end});
          index_heads.push_back({r.index_heads.begin, r.index_heads.end});
          vocab.push_back({r.vocab.begin, r.vocab.end});
          EXPECT_EQ(r.heads.size(), config.num_attention_heads / tp);
          // The heads of a rank are exactly the heads of its output groups.
          EXPECT_EQ(r.heads.begin, r.o_groups.begin * config.HeadsPerGroup());
          EXPECT_EQ(r.heads.end, r.o_groups.end * config.HeadsPerGroup());
        }
        const std::string where = layout.ToString() + " dp group " + std::to_string(g);
        EXPECT_TRUE(TilesExactly(heads, config.num_attention_heads)) << where;
        EXPECT_TRUE(TilesExactly(groups, config.o_groups)) << where;
        EXPECT_TRUE(TilesExactly(index_heads, config.index_n_heads)) << where;
        EXPECT_TRUE(TilesExactly(vocab, config.vocab_size)) << where;
      }
      for (int64_t r = 0; r < w; ++r) {
        const IndexRange e = plan->Rank(r, false).experts;
        experts.push_back({e.begin, e.end});
      }
      EXPECT_TRUE(TilesExactly(experts, config.n_routed_experts)) << layout.ToString();
    }
  }
}

TEST(RankRanges, TileEverythingOnceV4Flash) { CheckRangesTile(ShippedConfig("DeepSeek-V4-Flash")); }
TEST(RankRanges, TileEverythingOnceV4Pro) { CheckRangesTile(ShippedConfig("DeepSeek-V4-Pro")); }

TEST(RankRanges, UnevenVocabularyGoesToTheFirstRanks) {
  ModelConfig c = ShippedConfig("DeepSeek-V4-Flash");
  c.vocab_size = 129283;  // 129283 = 8 x 16160 + 3
  absl::StatusOr<ShardPlan> plan = ShardPlan::Make(c, MakeLayout(16, 8), ExpertFormat::kFp4);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->Rank(0, false).vocab, (IndexRange{0, 16161}));
  EXPECT_EQ(plan->Rank(2, false).vocab, (IndexRange{32322, 48483}));
  EXPECT_EQ(plan->Rank(3, false).vocab, (IndexRange{48483, 64643}));
  EXPECT_EQ(plan->Rank(15, false).vocab, (IndexRange{113123, 129283}));
}

TEST(ExpertPlacement, HandWorkedUnevenSplit) {
  const ExpertPlacement p(10, 4);  // 3, 3, 2, 2
  EXPECT_EQ(p.ExpertsOf(0), (IndexRange{0, 3}));
  EXPECT_EQ(p.ExpertsOf(1), (IndexRange{3, 6}));
  EXPECT_EQ(p.ExpertsOf(2), (IndexRange{6, 8}));
  EXPECT_EQ(p.ExpertsOf(3), (IndexRange{8, 10}));
  EXPECT_EQ(p.Locate(5), (ExpertSlot{1, 2}));
  EXPECT_EQ(p.Locate(6), (ExpertSlot{2, 0}));
  EXPECT_EQ(p.Locate(9), (ExpertSlot{3, 1}));
  EXPECT_EQ(p.GlobalExpertIdx(2, 1), 7);

  const ExpertPlacement flash(256, 384);  // 256 ranks with one expert, 128 with none
  EXPECT_EQ(flash.ExpertsOf(255), (IndexRange{255, 256}));
  EXPECT_TRUE(flash.ExpertsOf(256).empty());
  EXPECT_EQ(flash.Locate(200), (ExpertSlot{200, 0}));

  const ExpertPlacement pro(384, 256);  // first 128 ranks own 2, the rest 1
  EXPECT_EQ(pro.ExpertsOf(127), (IndexRange{254, 256}));
  EXPECT_EQ(pro.ExpertsOf(128), (IndexRange{256, 257}));
  EXPECT_EQ(pro.Locate(383), (ExpertSlot{255, 0}));
}

TEST(ExpertPlacement, GlobalLocalRoundTrips) {
  for (int64_t e : {1, 6, 16, 256, 384}) {
    for (int64_t w : {1, 2, 3, 4, 5, 7, 8, 16, 32, 48, 256, 384}) {
      const ExpertPlacement p(e, w);
      int64_t owned = 0;
      for (int64_t r = 0; r < w; ++r) {
        const IndexRange mine = p.ExpertsOf(r);
        EXPECT_EQ(mine.size(), e / w + (r < e % w ? 1 : 0)) << e << " experts, rank " << r;
        for (int64_t l = 0; l < mine.size(); ++l) {
          const int64_t g = p.GlobalExpertIdx(r, l);
          EXPECT_EQ(g, owned);  // contiguous, in rank order
          EXPECT_EQ(p.Locate(g), (ExpertSlot{r, l}));
          ++owned;
        }
      }
      EXPECT_EQ(owned, e);
      for (int64_t g = 0; g < e; ++g) {
        const ExpertSlot s = p.Locate(g);
        ASSERT_LT(s.rank, w);
        EXPECT_EQ(p.GlobalExpertIdx(s.rank, s.local_expert_idx), g);
      }
    }
  }
}

}  // namespace
}  // namespace flotilla
