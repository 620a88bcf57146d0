#include "sharding/kv_pool_layout.h"

#include "common/synthetic.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sharding/capacity.h"
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

// V4-Flash in 64 KiB pages, worked by hand from spec §8.2: 584 B main entries, 68 B indexer
// keys; 21 CSA, 20 HCA (ratio 128) and 3 window-only layers (MTP included); window 128.
TEST(KvPoolLayout, V4FlashIn64KiBPages) {
  const absl::StatusOr<KvPoolLayout> l =
      KvPoolLayout::Make(ShippedConfig("DeepSeek-V4-Flash"), 65536);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->main_entry_bytes, 584);
  EXPECT_EQ(l->index_key_bytes, 68);
  EXPECT_EQ(l->main_per_page, 112);      // 112 x 584 = 65,408 <= 65,536 < 113 x 584
  EXPECT_EQ(l->keys_per_page, 963);      // 963 x 68 = 65,484 <= 65,536 < 964 x 68
  EXPECT_EQ(l->window_pages, 2);         // 128 entries over 112 per page
  EXPECT_EQ(l->csa_state_pages, 1);      // 16 rows of 4,096 B
  EXPECT_EQ(l->indexer_state_pages, 1);  // 16 rows of 1,024 B

  const KvPoolLayout::Pages empty = l->SequencePages(0);
  EXPECT_EQ(empty.window, 44 * 2);
  EXPECT_EQ(empty.state, 21 * (1 + 1) + 20 * 8);  // HCA: 256 rows of 2,048 B, 32 per page
  EXPECT_EQ(empty.Growing(), 0);

  // 1M tokens: CSA 262,144 entries -> 2,341 pages (2,340 hold 262,080), indexer 262,144 keys ->
  // 273 pages, HCA 8,192 entries -> 74 pages.
  const KvPoolLayout::Pages at_1m = l->SequencePages(k1M);
  EXPECT_EQ(at_1m.main, 21 * 2341 + 20 * 74);
  EXPECT_EQ(at_1m.indexer, 21 * 273);
  EXPECT_EQ(at_1m.Total(), 56374 + 290);
  // Within 0.4% of what the sequence holds unpaged (spec §8.2 + MTP window + f32 states).
  const uint64_t unpaged = SequenceKvBytesAt(ShippedConfig("DeepSeek-V4-Flash"), k1M).Total();
  EXPECT_EQ(unpaged, 3688172544ull + 128 * 584 + 12206080ull);
  const double paged = double(at_1m.Total()) * 65536;
  EXPECT_GE(paged, double(unpaged));
  EXPECT_LT(paged / double(unpaged), 1.004);

  // 21 x 65,536/112/4 + 21 x 65,536/963/4 + 20 x 65,536/112/128 against 3,514.25.
  EXPECT_NEAR(l->BytesPerTokenAsymptotic(),
              21 * 65536.0 / 112 / 4 + 21 * 65536.0 / 963 / 4 + 20 * 65536.0 / 112 / 128, 1e-9);
  EXPECT_LT(
      l->BytesPerTokenAsymptotic() / KvBytesPerTokenAsymptotic(ShippedConfig("DeepSeek-V4-Flash")),
      1.002);
}

// tiny in 4 KiB pages: entries of 200 B (20 per page), keys of 68 B (60 per page), window 32;
// layers {0, 4, 8, 4} + an MTP layer of ratio 0.
TEST(KvPoolLayout, TinyHandWorked) {
  const absl::StatusOr<KvPoolLayout> l = KvPoolLayout::Make(Tiny(), 4096);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->main_per_page, 20);
  EXPECT_EQ(l->keys_per_page, 60);
  EXPECT_EQ(l->window_pages, 2);
  // CSA: 16 rows of 1,024 B, 4 per page -> 4 pages; its indexer the same; ratio 8: 16 rows of
  // 512 B, 8 per page -> 2 pages.
  EXPECT_EQ(l->csa_state_pages, 4);
  EXPECT_EQ(l->indexer_state_pages, 4);
  const KvPoolLayout::Pages empty = l->SequencePages(0);
  EXPECT_EQ(empty.window, 10);
  EXPECT_EQ(empty.state, 2 * (4 + 4) + 2);
  EXPECT_EQ(empty.Total(), 28);

  // 1,000 tokens: CSA 250 entries -> 13 pages each, 250 keys -> 5 pages each, ratio 8: 125
  // entries -> 7 pages.
  const KvPoolLayout::Pages p = l->SequencePages(1000);
  EXPECT_EQ(p.main, 2 * 13 + 7);
  EXPECT_EQ(p.indexer, 2 * 5);
  EXPECT_EQ(p.Total(), 71);

  // The next page is taken at T = 1,044 (the CSA layers' 261st entry, both layers at once).
  EXPECT_EQ(l->SequencePages(1043).Total(), 71);
  EXPECT_EQ(l->SequencePages(1044).Total(), 73);
  EXPECT_EQ(l->LongestContext(71, 1 << 20), 1043);
  EXPECT_EQ(l->LongestContext(72, 1 << 20), 1043);
  // The CSA layers take their 15th main page at T = 1,124 (entry 281), the ratio-8 layer its
  // 8th at T = 1,128 (entry 141).
  EXPECT_EQ(l->LongestContext(73, 1 << 20), 1123);
  EXPECT_EQ(l->SequencePages(1124).Total(), 75);
  EXPECT_EQ(l->SequencePages(1128).Total(), 76);
  EXPECT_EQ(l->LongestContext(28, 1 << 20), 3);  // the first entries need pages from T = 4 on
  EXPECT_EQ(l->LongestContext(27, 1 << 20), -1);
  EXPECT_EQ(l->LongestContext(1 << 30, 5000), 5000);  // capped
}

TEST(KvPoolLayout, PagesTooSmallAreRejectedByName) {
  const ModelConfig flash = ShippedConfig("DeepSeek-V4-Flash");
  absl::StatusOr<KvPoolLayout> l = KvPoolLayout::Make(flash, 500);
  ASSERT_FALSE(l.ok());
  EXPECT_THAT(l.status().message(), HasSubstr("cannot hold one main KV entry of 584 bytes"));
  l = KvPoolLayout::Make(flash, 2048);  // CSA state rows are 2 x 512 f32 = 4,096 B
  ASSERT_FALSE(l.ok());
  EXPECT_THAT(l.status().message(), HasSubstr("CSA compressor state row of 4096 bytes"));
  EXPECT_TRUE(KvPoolLayout::Make(flash, 4096).ok());
}

}  // namespace
}  // namespace flotilla
