// Step plan / step tokens wire format: round trips and malformed input.
#include "common/step_plan.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace flotilla {
namespace {

using ::testing::HasSubstr;

StepPlan SamplePlan() {
  StepPlan plan;
  plan.step = 1234567890123;
  plan.release = {7, 0xfedcba9876543210ull};
  StepSequence a;
  a.seq_id = 42;
  a.dp_group = 3;
  a.start_pos = 0;
  a.tokens = {0, 1, 129279, 5};
  a.sample = 0;
  a.sampling.greedy = 0;
  a.sampling.temperature = 0.7f;
  a.sampling.top_p = 0.95f;
  a.sampling.top_k = 40;
  a.sampling.seed = 0x0123456789abcdefull;
  StepSequence b;
  b.seq_id = 43;
  b.dp_group = 0;
  b.start_pos = 1048575;
  b.tokens = {99};
  b.sample = 1;
  plan.seqs = {a, b};
  return plan;
}

void ExpectSame(const StepPlan& x, const StepPlan& y) {
  EXPECT_EQ(x.step, y.step);
  EXPECT_EQ(x.shutdown, y.shutdown);
  EXPECT_EQ(x.release, y.release);
  ASSERT_EQ(x.seqs.size(), y.seqs.size());
  for (size_t i = 0; i < x.seqs.size(); ++i) {
    const StepSequence& a = x.seqs[i];
    const StepSequence& b = y.seqs[i];
    EXPECT_EQ(a.seq_id, b.seq_id);
    EXPECT_EQ(a.dp_group, b.dp_group);
    EXPECT_EQ(a.start_pos, b.start_pos);
    EXPECT_EQ(a.tokens, b.tokens);
    EXPECT_EQ(a.sample, b.sample);
    EXPECT_EQ(a.sampling.greedy, b.sampling.greedy);
    EXPECT_EQ(a.sampling.temperature, b.sampling.temperature);
    EXPECT_EQ(a.sampling.top_p, b.sampling.top_p);
    EXPECT_EQ(a.sampling.top_k, b.sampling.top_k);
    EXPECT_EQ(a.sampling.seed, b.sampling.seed);
  }
}

absl::Status ParseError(const std::string& bytes) { return ParseStepPlan(bytes).status(); }

TEST(StepPlan, RoundTrip) {
  const StepPlan plan = SamplePlan();
  const std::string bytes = SerializeStepPlan(plan);
  // magic 4 + step 8 + shutdown 1 + 2 releases (4 + 16) + num_seqs 4 + 2 x 53 fixed + 5 tokens.
  EXPECT_EQ(bytes.size(), 4u + 8 + 1 + 4 + 16 + 4 + 2 * 53 + 5 * 4);
  absl::StatusOr<StepPlan> back = ParseStepPlan(bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSame(plan, *back);

  StepPlan empty;
  empty.shutdown = 1;
  back = ParseStepPlan(SerializeStepPlan(empty));
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSame(empty, *back);
}

TEST(StepPlan, LittleEndianLayout) {
  StepPlan plan;
  plan.step = 0x0102;
  const std::string bytes = SerializeStepPlan(plan);
  ASSERT_EQ(bytes.size(), 4u + 8 + 1 + 4 + 4);
  EXPECT_EQ(bytes.substr(0, 4), "FSP2");
  EXPECT_EQ(bytes[4], '\x02');
  EXPECT_EQ(bytes[5], '\x01');
}

TEST(StepPlan, EveryTruncationIsRefused) {
  const std::string bytes = SerializeStepPlan(SamplePlan());
  for (size_t n = 0; n < bytes.size(); ++n) {
    const absl::Status st = ParseError(bytes.substr(0, n));
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << n;
  }
  EXPECT_THAT(std::string(ParseError(bytes.substr(0, 10)).message()),
              HasSubstr("step plan: truncated at byte 4 reading step"));
}

TEST(StepPlan, MalformedFieldsAreNamed) {
  const std::string good = SerializeStepPlan(SamplePlan());
  auto with = [&](size_t at, char value) {
    std::string b = good;
    b[at] = value;
    return std::string(ParseError(b).message());
  };
  EXPECT_THAT(with(0, 'X'), HasSubstr("bad magic"));
  EXPECT_THAT(with(12, 2), HasSubstr("shutdown is 2 (expected 0 or 1)"));
  // num_release (at 13) claims far more entries than there are bytes.
  EXPECT_THAT(with(16, 0x7f), HasSubstr("num_release is"));
  // seqs[0] starts at 4 + 8 + 1 + 4 + 16 + 4 = 37: seq_id 8, dp_group 4, start_pos 8, sample.
  EXPECT_THAT(with(37 + 12 - 1 + 0, char(0x80)), HasSubstr("seqs[0].dp_group is negative"));
  EXPECT_THAT(with(37 + 20, 7), HasSubstr("seqs[0].sample is 7"));
  EXPECT_THAT(with(37 + 21, 9), HasSubstr("seqs[0].sampling.greedy is 9"));
  std::string trailing = good + "x";
  EXPECT_THAT(std::string(ParseError(trailing).message()), HasSubstr("1 trailing bytes"));

  StepPlan dup = SamplePlan();
  dup.seqs[1].seq_id = dup.seqs[0].seq_id;
  EXPECT_THAT(std::string(ParseError(SerializeStepPlan(dup)).message()),
              HasSubstr("seqs[1]: seq_id 42 appears twice"));
  StepPlan no_tokens = SamplePlan();
  no_tokens.seqs[1].tokens.clear();
  EXPECT_THAT(std::string(ParseError(SerializeStepPlan(no_tokens)).message()),
              HasSubstr("seqs[1] has no tokens"));
  StepPlan negative = SamplePlan();
  negative.seqs[0].tokens[2] = -5;
  EXPECT_THAT(std::string(ParseError(SerializeStepPlan(negative)).message()),
              HasSubstr("seqs[0].tokens[2] is negative (-5)"));
  negative = SamplePlan();
  negative.seqs[0].start_pos = -1;
  EXPECT_THAT(std::string(ParseError(SerializeStepPlan(negative)).message()),
              HasSubstr("seqs[0].start_pos is negative"));
  negative = SamplePlan();
  negative.step = -1;
  EXPECT_THAT(std::string(ParseError(SerializeStepPlan(negative)).message()),
              HasSubstr("step is negative"));
}

TEST(StepTokens, RoundTripAndMalformed) {
  const std::vector<StepToken> tokens = {{1, 5}, {0xffffffffffffffffull, 129279}, {7, 0}};
  const std::string bytes = SerializeStepTokens(tokens);
  EXPECT_EQ(bytes.size(), 4u + 4 + 3 * 13);
  absl::StatusOr<std::vector<StepToken>> back = ParseStepTokens(bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ((*back)[i].seq_id, tokens[i].seq_id);
    EXPECT_EQ((*back)[i].token, tokens[i].token);
  }
  EXPECT_TRUE(ParseStepTokens(SerializeStepTokens({})).ok());
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_EQ(ParseStepTokens(bytes.substr(0, n)).status().code(),
              absl::StatusCode::kInvalidArgument)
        << n;
  }
  EXPECT_THAT(std::string(ParseStepTokens(SerializeStepPlan(StepPlan())).status().message()),
              HasSubstr("step tokens: bad magic"));
  EXPECT_THAT(std::string(ParseStepTokens(bytes + "zz").status().message()),
              HasSubstr("2 trailing bytes"));
  EXPECT_THAT(std::string(ParseStepTokens(SerializeStepTokens({{3, -2}})).status().message()),
              HasSubstr("token 0 (seq_id 3) is negative (-2)"));
}

TEST(StepTokens, LogprobsRoundTrip) {
  StepToken with;
  with.seq_id = 9;
  with.token = 17;
  with.has_logprob = true;
  with.logprob = -0.25f;
  with.top = {{17, -0.25f}, {4, -1.5f}};
  const std::vector<StepToken> tokens = {with, {10, 3}};
  const std::string bytes = SerializeStepTokens(tokens);
  // Record 1: 8 + 4 + 1 + 4 + 2 x 8; record 2: 13.
  EXPECT_EQ(bytes.size(), 4u + 4 + (13 + 4 + 16) + 13);
  auto back = ParseStepTokens(bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 2u);
  EXPECT_TRUE((*back)[0].has_logprob);
  EXPECT_EQ((*back)[0].logprob, -0.25f);
  EXPECT_EQ((*back)[0].top, with.top);
  EXPECT_FALSE((*back)[1].has_logprob);
  EXPECT_TRUE((*back)[1].top.empty());
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_EQ(ParseStepTokens(bytes.substr(0, n)).status().code(),
              absl::StatusCode::kInvalidArgument)
        << n;
  }
  std::string too_many = bytes;
  too_many[8 + 12] = 30;  // the first record's count: 29 alternatives
  EXPECT_THAT(std::string(ParseStepTokens(too_many).status().message()),
              HasSubstr("carries 29 alternatives (at most 20)"));
}

TEST(StepPlan, LogprobRequestsRoundTrip) {
  StepPlan plan = SamplePlan();
  plan.seqs[0].sampling.logprobs = 1;
  plan.seqs[0].sampling.top_logprobs = 20;
  plan.seqs[1].sampling.experts_per_token = 4;
  auto back = ParseStepPlan(SerializeStepPlan(plan));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->seqs[0].sampling.logprobs, 1);
  EXPECT_EQ(back->seqs[0].sampling.top_logprobs, 20);
  EXPECT_EQ(back->seqs[0].sampling.experts_per_token, 0);
  EXPECT_EQ(back->seqs[1].sampling.experts_per_token, 4);
  plan.seqs[0].sampling.top_logprobs = 21;
  EXPECT_THAT(std::string(ParseError(SerializeStepPlan(plan)).message()),
              HasSubstr("seqs[0].sampling.top_logprobs is 21 (at most 20)"));
}

}  // namespace
}  // namespace flotilla
