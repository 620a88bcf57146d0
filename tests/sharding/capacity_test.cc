#include "sharding/capacity.h"

#include <string>

#include "common/synthetic.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/sharding/test_util.h"

namespace flotilla {
namespace {

using ::flotilla::testing::ShippedConfig;
using ::testing::HasSubstr;

constexpr int64_t k1M = 1048576;

ModelConfig Tiny() {
  absl::StatusOr<ModelConfig> c = PresetConfig("tiny");
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

TEST(KvEntry, V4FlashPackedSizes) {
  const ModelConfig flash = ShippedConfig("DeepSeek-V4-Flash");
  EXPECT_EQ(MainKvEntryBytes(flash), 584);  // 448 + 128 + 7 + 1 pad
  EXPECT_EQ(IndexerKeyBytes(flash), 68);    // 64 + 4
  EXPECT_EQ(MainKvEntryBytes(ShippedConfig("DeepSeek-V4-Pro")), 584);
}

TEST(KvEntry, HandWorkedSmallShapes) {
  ModelConfig c = Tiny();  // head_dim 128, rope 64: 64 + 128 + 1 = 193 -> 200
  EXPECT_EQ(MainKvEntryBytes(c), 200);
  EXPECT_EQ(IndexerKeyBytes(c), 68);
  c.head_dim = 192;       // nope 128: 128 + 128 + 2 = 258 -> 264
  c.index_head_dim = 64;  // 32 + 2
  EXPECT_EQ(MainKvEntryBytes(c), 264);
  EXPECT_EQ(IndexerKeyBytes(c), 34);
  const ModelConfig mini = ShippedConfig("deepseek-v4-mini-1B");  // 32 + 64 + 1 = 97 -> 104
  EXPECT_EQ(MainKvEntryBytes(mini), 104);
}

TEST(KvBytesPerToken, Asymptotic) {
  // 21 x (584/4 + 68/4) + 20 x 584/128
  EXPECT_EQ(KvBytesPerTokenAsymptotic(ShippedConfig("DeepSeek-V4-Flash")), 3514.25);
  // Pro: 30 CSA, 31 HCA layers: 30 x 163 + 31 x 4.5625
  EXPECT_EQ(KvBytesPerTokenAsymptotic(ShippedConfig("DeepSeek-V4-Pro")), 5031.4375);
  // tiny: CSA layers 1 and 3, ratio-8 layer 2: 2 x (200/4 + 68/4) + 200/8
  EXPECT_EQ(KvBytesPerTokenAsymptotic(Tiny()), 159.0);
}

TEST(SequenceKvBytes, V4FlashAtOneMillionTokens) {
  const SequenceKvBytes b = SequenceKvBytesAt(ShippedConfig("DeepSeek-V4-Flash"), k1M);
  EXPECT_EQ(b.compressed, 21ull * 262144 * 584 + 20ull * 8192 * 584);
  EXPECT_EQ(b.indexer, 21ull * 262144 * 68);
  EXPECT_EQ(b.windows, 43ull * 128 * 584);
  EXPECT_EQ(b.Kv(), 3688172544ull);
  EXPECT_EQ(b.mtp_window, 128ull * 584);
  // Reference f32 compressor states (spec §8.2): 21 x (65,536 + 16,384) + 20 x 524,288.
  EXPECT_EQ(b.compressor_state, 12206080ull);
  EXPECT_EQ(b.Total(), 3688172544ull + 74752 + 12206080);
}

TEST(SequenceKvBytes, HandWorkedTinyAtTenTokens) {
  // ratios {0, 4, 8, 4 | MTP 0}, window 32, entry 200, key 68.
  const SequenceKvBytes b = SequenceKvBytesAt(Tiny(), 10);
  EXPECT_EQ(b.compressed, 2u * 200 + 1u * 200 + 2u * 200);  // floor(10/4), floor(10/8), floor(10/4)
  EXPECT_EQ(b.indexer, 2u * 2 * 68);
  EXPECT_EQ(b.windows, 4u * 32 * 200);
  EXPECT_EQ(b.mtp_window, 32u * 200);
  // CSA: 2 x [8, 256] f32 (main) + 2 x [8, 256] f32 (indexer); ratio 8: 2 x [8, 128] f32.
  EXPECT_EQ(b.compressor_state, 2u * (2 * 8 * 256 * 4 + 2 * 8 * 256 * 4) + 2 * 8 * 128 * 4);
  EXPECT_EQ(b.Total(), 107000u);
}

TEST(SequenceKvBytes, EmptySequenceHoldsWindowsAndState) {
  const SequenceKvBytes b = SequenceKvBytesAt(ShippedConfig("DeepSeek-V4-Flash"), 0);
  EXPECT_EQ(b.compressed + b.indexer, 0u);
  EXPECT_EQ(b.Total(), 43u * 128 * 584 + 128 * 584 + 12206080);
}

TEST(KvPool, SubtractsWeightsAndReserve) {
  const uint64_t gib = 1ull << 30;
  absl::StatusOr<uint64_t> pool = KvPoolBytes(80 * gib, 20 * gib, 8 * gib);
  ASSERT_TRUE(pool.ok());
  EXPECT_EQ(*pool, 52 * gib);
  EXPECT_EQ(*KvPoolBytes(80 * gib, 72 * gib, 8 * gib), 0u);
  const absl::Status s = KvPoolBytes(80 * gib, 75 * gib, 8 * gib).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("weights 75.00 GiB + reserve 8.00 GiB exceed GPU memory 80.00 GiB by "
                        "3.00 GiB"));
}

TEST(LongestContext, HandWorkedV4Flash) {
  const ModelConfig flash = ShippedConfig("DeepSeek-V4-Flash");
  const uint64_t empty = 15495168;  // windows 3,214,336 + MTP window 74,752 + state 12,206,080
  ASSERT_EQ(SequenceKvBytesAt(flash, 0).Total(), empty);

  EXPECT_FALSE(LongestContext(flash, empty - 1).fits);
  EXPECT_EQ(LongestContext(flash, empty - 1).tokens, 0);
  // Nothing grows before the 4th token completes the first CSA block.
  EXPECT_EQ(LongestContext(flash, empty).tokens, 3);
  // One CSA block in each of 21 layers: 21 x (584 + 68) B buys tokens 4..7.
  EXPECT_EQ(LongestContext(flash, empty + 21 * 652).tokens, 7);
  EXPECT_EQ(LongestContext(flash, empty + 21 * 652 - 1).tokens, 3);
  // Token 128 completes 32 CSA blocks and the first HCA block in each of 20 layers.
  const uint64_t at128 = empty + 21 * 652 * 32 + 20 * 584;
  EXPECT_EQ(LongestContext(flash, at128 - 1).tokens, 127);
  EXPECT_EQ(LongestContext(flash, at128).tokens, 131);
  EXPECT_EQ(LongestContext(flash, at128).bytes, at128);

  const uint64_t full = SequenceKvBytesAt(flash, k1M).Total();
  ContextFit fit = LongestContext(flash, full);
  EXPECT_EQ(fit.tokens, k1M);
  EXPECT_TRUE(fit.capped);
  EXPECT_EQ(fit.cap, k1M);
  fit = LongestContext(flash, full - 1);
  EXPECT_EQ(fit.tokens, k1M - 1);
  EXPECT_FALSE(fit.capped);
  fit = LongestContext(flash, 52ull << 30);
  EXPECT_EQ(fit.tokens, k1M);
  EXPECT_TRUE(fit.capped);
}

// Against a linear scan of the formula on a small model with a small position cap.
TEST(LongestContext, MatchesLinearScan) {
  ModelConfig c = Tiny();
  c.max_position_embeddings = 3000;
  const uint64_t empty = SequenceKvBytesAt(c, 0).Total();
  const uint64_t full = SequenceKvBytesAt(c, 3000).Total();
  for (uint64_t pool = empty - 3; pool <= full + 3; pool += 37) {
    int64_t best = -1;
    for (int64_t t = 0; t <= 3000 && SequenceKvBytesAt(c, t).Total() <= pool; ++t) best = t;
    const ContextFit fit = LongestContext(c, pool);
    EXPECT_EQ(fit.fits, best >= 0) << pool;
    EXPECT_EQ(fit.tokens, best < 0 ? 0 : best) << pool;
    EXPECT_EQ(fit.capped, best == 3000) << pool;
  }
}

TEST(SequencesThatFit, WholeSequences) {
  const ModelConfig flash = ShippedConfig("DeepSeek-V4-Flash");
  const uint64_t full = SequenceKvBytesAt(flash, k1M).Total();
  EXPECT_EQ(SequencesThatFit(flash, 3 * full + 5, k1M), 3);
  EXPECT_EQ(SequencesThatFit(flash, 3 * full - 1, k1M), 2);
  EXPECT_EQ(SequencesThatFit(flash, 52ull << 30, k1M), 15);  // 55,834,574,848 / 3,700,453,376
}

TEST(ByteSize, Parses) {
  EXPECT_EQ(*ParseByteSize("80GiB"), 80ull << 30);
  EXPECT_EQ(*ParseByteSize("80 GiB"), 80ull << 30);
  EXPECT_EQ(*ParseByteSize("80gib"), 80ull << 30);
  EXPECT_EQ(*ParseByteSize("80GB"), 80000000000ull);
  EXPECT_EQ(*ParseByteSize("512MiB"), 512ull << 20);
  EXPECT_EQ(*ParseByteSize("512MB"), 512000000ull);
  EXPECT_EQ(*ParseByteSize("4096B"), 4096u);
  EXPECT_EQ(*ParseByteSize("4096"), 4096u);
  EXPECT_EQ(*ParseByteSize("1.5GiB"), 3ull << 29);
  EXPECT_EQ(*ParseByteSize("0.5KiB"), 512u);
  EXPECT_EQ(*ParseByteSize("141GB"), 141000000000ull);
  EXPECT_EQ(*ParseByteSize("2TiB"), 2ull << 40);
  for (const char* bad : {"", "GiB", "80XB", "-1GiB", "80 G iB", "99999999999999999999",
                          "20000000000GiB", "1.2.3GiB"}) {
    const absl::StatusOr<uint64_t> v = ParseByteSize(bad);
    EXPECT_FALSE(v.ok()) << bad;
    if (!v.ok()) {
      EXPECT_THAT(std::string(v.status().message()), HasSubstr("80GiB")) << bad;
    }
  }
}

TEST(ByteSize, Formats) {
  EXPECT_EQ(FormatBytes(584), "584 B");
  EXPECT_EQ(FormatBytes(3688172544ull), "3.43 GiB");
  EXPECT_EQ(FormatBytes(512ull << 20), "512.00 MiB");
  EXPECT_EQ(FormatBytes(2ull << 40), "2.00 TiB");
}

}  // namespace
}  // namespace flotilla
