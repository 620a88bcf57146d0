#include "sharding/exchange_layout.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/sharding/test_util.h"

namespace flotilla {
namespace {

using ::flotilla::testing::ShippedConfig;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// V4-Flash, EP 8 (32 experts a rank), 6 experts per token, 64 rows a round: worked by hand.
TEST(ExchangeLayout, V4FlashEp8Decode) {
  const ModelConfig c = ShippedConfig("DeepSeek-V4-Flash");
  const absl::StatusOr<ExchangeLayout> l = ExchangeLayout::Make(c, ExpertPlacement(256, 8), 3, 64, 6);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->payload_bytes, 4096 + 32);
  EXPECT_EQ(l->record_bytes, 4144);  // 16 + 4,128, already a multiple of 16
  EXPECT_EQ(l->reply_bytes, 8192);
  EXPECT_THAT(l->peer_capacity, ElementsAre(384, 384, 384, 384, 384, 384, 384, 384));
  EXPECT_EQ(l->send_offset[1], 384u * 4144u);
  EXPECT_EQ(l->send_offset[7], 7u * 384u * 4144u);
  EXPECT_EQ(l->reply_offset[2], 2u * 384u * 8192u);
  EXPECT_EQ(l->recv_capacity_per_source, 384);
  EXPECT_EQ(l->dispatch_send_bytes, 12'730'368u);  // 8 x 384 x 4,144
  EXPECT_EQ(l->dispatch_recv_bytes, 12'730'368u);
  EXPECT_EQ(l->reply_send_bytes, 25'165'824u);     // 8 x 384 x 8,192
  EXPECT_EQ(l->reply_recv_bytes, 25'165'824u);
  EXPECT_EQ(l->index_bytes, 13'888u);              // 4 x (384 + 3,072 + 16)
  EXPECT_EQ(l->TotalBytes(), 75'806'272u);
  EXPECT_EQ(l->FixedSendBytes(), 12'730'368u + 25'165'824u);
}

// EP 64: 4 experts a rank, so a token sends at most 4 of its 6 copies to one rank.
TEST(ExchangeLayout, BlocksHoldAtMostTheExpertsARankOwns) {
  const ModelConfig c = ShippedConfig("DeepSeek-V4-Flash");
  const ExchangeLayout l = *ExchangeLayout::Make(c, ExpertPlacement(256, 64), 0, 10, 6);
  EXPECT_EQ(l.peer_capacity[0], 40);
  EXPECT_EQ(l.recv_capacity_per_source, 40);
  EXPECT_EQ(l.dispatch_send_bytes, 64u * 40u * 4144u);

  // Uneven ownership: 10 experts over 4 ranks own 3, 3, 2, 2.
  const ExchangeLayout u = *ExchangeLayout::Make(c, ExpertPlacement(10, 4), 3, 5, 3);
  EXPECT_THAT(u.peer_capacity, ElementsAre(15, 15, 10, 10));
  EXPECT_THAT(u.send_offset, ElementsAre(0u, 15u * 4144u, 30u * 4144u, 40u * 4144u));
  EXPECT_EQ(u.recv_capacity_per_source, 10);
  EXPECT_EQ(u.dispatch_recv_bytes, 4u * 10u * 4144u);
  EXPECT_EQ(u.reply_recv_bytes, 50u * 8192u);
}

TEST(ExchangeLayout, Bf16PayloadAndPadding) {
  ModelConfig c = ShippedConfig("DeepSeek-V4-Flash");
  c.quantization_config.present = false;
  c.hidden_size = 1000;
  const ExchangeLayout b = *ExchangeLayout::Make(c, ExpertPlacement(256, 8), 0, 1, 6);
  EXPECT_EQ(b.payload_bytes, 2000);
  EXPECT_EQ(b.record_bytes, 2016);  // 16 + 2,000
  c.quantization_config.present = true;
  c.hidden_size = 128;
  const ExchangeLayout q = *ExchangeLayout::Make(c, ExpertPlacement(256, 8), 0, 1, 6);
  EXPECT_EQ(q.payload_bytes, 129);
  EXPECT_EQ(q.record_bytes, 160);  // 16 + 129 = 145, padded to 16
}

TEST(ExchangeLayout, CountedBytesMoveOnlyTheUsedRecords) {
  const ModelConfig c = ShippedConfig("DeepSeek-V4-Flash");
  const ExchangeLayout l = *ExchangeLayout::Make(c, ExpertPlacement(256, 4), 0, 8, 6);
  EXPECT_EQ(l.CountedSendBytes({10, 0, 5, 1}, {3, 4, 0, 0}), 16u * 4144u + 7u * 8192u);
  EXPECT_LT(l.CountedSendBytes({12, 12, 12, 12}, {12, 12, 12, 12}), l.FixedSendBytes());
}

TEST(ExchangeLayout, RefusesBadShapes) {
  const ModelConfig c = ShippedConfig("DeepSeek-V4-Flash");
  const ExpertPlacement p(256, 8);
  EXPECT_THAT(ExchangeLayout::Make(c, p, 0, 0, 6).status().message(),
              HasSubstr("0 rows per round"));
  EXPECT_THAT(ExchangeLayout::Make(c, p, 0, 8, 0).status().message(),
              HasSubstr("0 experts per token; expected 1..256"));
  EXPECT_THAT(ExchangeLayout::Make(c, p, 8, 8, 6).status().message(),
              HasSubstr("rank 8 of an expert-parallel group of 8"));
  ModelConfig odd = c;
  odd.hidden_size = 4000;
  EXPECT_THAT(ExchangeLayout::Make(odd, p, 0, 8, 6).status().message(),
              HasSubstr("hidden_size 4000 is not a multiple of 128"));
}

TEST(ExchangeRounds, EveryRankRunsTheBusiestRanksRounds) {
  EXPECT_EQ(ExchangeRounds({100, 7, 0}, 64), 2);
  EXPECT_EQ(ExchangeRounds({64, 64}, 64), 1);
  EXPECT_EQ(ExchangeRounds({65}, 64), 2);
  EXPECT_EQ(ExchangeRounds({0, 0}, 64), 0);
  EXPECT_EQ(ExchangeRounds({}, 64), 0);
}

}  // namespace
}  // namespace flotilla
