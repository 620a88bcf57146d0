#include "sharding/decode_graphs.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace flotilla {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(DecodeGraphBuckets, PowersOfTwoThenStride) {
  const absl::StatusOr<DecodeGraphBuckets> b = DecodeGraphBuckets::Make(64);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_THAT(b->sizes(), ElementsAre(1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64));
  // 256 rows: 1, 2, 4, then 8..256 in steps of 8 = 3 + 32 graphs.
  EXPECT_EQ(DecodeGraphBuckets::Make(256)->sizes().size(), 35u);
}

TEST(DecodeGraphBuckets, LargestBatchIsAlwaysABucket) {
  EXPECT_THAT(DecodeGraphBuckets::Make(20)->sizes(), ElementsAre(1, 2, 4, 8, 16, 20));
  EXPECT_THAT(DecodeGraphBuckets::Make(3)->sizes(), ElementsAre(1, 2, 3));
  EXPECT_THAT(DecodeGraphBuckets::Make(1)->sizes(), ElementsAre(1));
  EXPECT_THAT(DecodeGraphBuckets::Make(8)->sizes(), ElementsAre(1, 2, 4, 8));
  EXPECT_THAT(DecodeGraphBuckets::Make(10, 4)->sizes(), ElementsAre(1, 2, 4, 8, 10));
  EXPECT_THAT(DecodeGraphBuckets::Make(5, 1)->sizes(), ElementsAre(1, 2, 3, 4, 5));
}

TEST(DecodeGraphBuckets, SmallestBucketThatHoldsTheRows) {
  const DecodeGraphBuckets b = *DecodeGraphBuckets::Make(64);
  EXPECT_EQ(b.BucketFor(1), 1);
  EXPECT_EQ(b.BucketFor(3), 4);
  EXPECT_EQ(b.BucketFor(8), 8);
  EXPECT_EQ(b.BucketFor(9), 16);
  EXPECT_EQ(b.BucketFor(17), 24);
  EXPECT_EQ(b.BucketFor(64), 64);
  EXPECT_EQ(b.BucketFor(65), std::nullopt);
  EXPECT_EQ(b.BucketFor(0), std::nullopt);
}

TEST(DecodeGraphBuckets, RefusesEmptyRanges) {
  EXPECT_THAT(DecodeGraphBuckets::Make(0).status().message(), HasSubstr("largest batch 0"));
  EXPECT_THAT(DecodeGraphBuckets::Make(8, 0).status().message(), HasSubstr("stride 0"));
}

StepSequence Decode(uint64_t id, int32_t group, int64_t pos) {
  StepSequence s;
  s.seq_id = id;
  s.dp_group = group;
  s.start_pos = pos;
  s.tokens = {7};
  s.sample = 1;
  return s;
}

TEST(ChooseDecodeGraph, DecodeRowsOfTheGroupPickTheirBucket) {
  const DecodeGraphBuckets b = *DecodeGraphBuckets::Make(16);
  StepPlan plan;
  for (uint64_t i = 0; i < 5; ++i) plan.seqs.push_back(Decode(i, 0, 100 + int64_t(i)));
  plan.seqs.push_back(Decode(9, 1, 4));  // another group's sequence does not count
  std::string why = "stale";
  const std::optional<GraphChoice> g = ChooseDecodeGraph(plan, 0, b, &why);
  ASSERT_TRUE(g.has_value()) << why;
  EXPECT_EQ(g->bucket, 8);
  EXPECT_EQ(g->rows, 5);
  EXPECT_EQ(g->padding(), 3);
  EXPECT_EQ(why, "");
}

TEST(ChooseDecodeGraph, PrefillStartsAndOverflowRunEagerly) {
  const DecodeGraphBuckets b = *DecodeGraphBuckets::Make(4);
  std::string why;

  StepPlan prefill;
  prefill.seqs.push_back(Decode(1, 0, 10));
  prefill.seqs.push_back(Decode(2, 0, 512));
  prefill.seqs[1].tokens.assign(512, 3);
  EXPECT_FALSE(ChooseDecodeGraph(prefill, 0, b, &why));
  EXPECT_EQ(why, "sequence 2 prefills 512 tokens");
  // The other group's part still replays.
  prefill.seqs[1].dp_group = 1;
  EXPECT_TRUE(ChooseDecodeGraph(prefill, 0, b, &why));

  StepPlan start;
  start.seqs.push_back(Decode(3, 0, 0));
  EXPECT_FALSE(ChooseDecodeGraph(start, 0, b, &why));
  EXPECT_EQ(why, "sequence 3 starts");

  StepPlan chunk_end;  // the last chunk of a prompt that does not sample yet
  chunk_end.seqs.push_back(Decode(4, 0, 10));
  chunk_end.seqs[0].sample = 0;
  EXPECT_FALSE(ChooseDecodeGraph(chunk_end, 0, b, &why));
  EXPECT_EQ(why, "sequence 4 does not sample");

  StepPlan wide;
  for (uint64_t i = 0; i < 5; ++i) wide.seqs.push_back(Decode(i, 0, 50));
  EXPECT_FALSE(ChooseDecodeGraph(wide, 0, b, &why));
  EXPECT_EQ(why, "batch 5 is beyond the largest graph, 4");

  EXPECT_FALSE(ChooseDecodeGraph(StepPlan{}, 0, b, &why));
  EXPECT_EQ(why, "no sequence of this group");
}

}  // namespace
}  // namespace flotilla
