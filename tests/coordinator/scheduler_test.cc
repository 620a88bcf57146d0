// Scheduler: validation, continuous batching, priority, DP placement, KV admission and the queue.
// Event streams, cancellation, stop conditions and threads: scheduler_events_test.cc.
#include "coordinator/scheduler.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/coordinator/scheduler_test_util.h"
#include "tests/tokenizer/test_data.h"

namespace flotilla {
namespace {

using ::flotilla::testing::EventLog;
using ::flotilla::testing::Find;
using ::flotilla::testing::Options;
using ::flotilla::testing::ProjectTokenizer;
using ::flotilla::testing::Request;
using ::flotilla::testing::RunUntilIdle;
using ::flotilla::testing::Step;
using ::flotilla::testing::TinyConfig;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Kind = RequestEvent::Kind;

std::vector<int32_t> Range(int32_t begin, int32_t end) {
  std::vector<int32_t> v;
  for (int32_t i = begin; i < end; ++i) v.push_back(i);
  return v;
}

std::vector<uint64_t> Ids(const StepPlan& plan) {
  std::vector<uint64_t> ids;
  for (const StepSequence& q : plan.seqs) ids.push_back(q.seq_id);
  return ids;
}

void ExpectInvalid(Scheduler& s, EventLog& log, GenerateRequest r, const std::string& what) {
  const uint64_t id = r.id;
  const absl::Status st = s.Submit(std::move(r), log.Sink(id));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr(what));
  EXPECT_TRUE(log.Of(id).empty());
}

TEST(Scheduler, ValidatesRequestsNamingTheField) {
  ModelConfig config = TinyConfig();
  config.max_position_embeddings = 64;
  Scheduler s(config, Options(1000), &ProjectTokenizer());
  EventLog log;

  ExpectInvalid(s, log, Request(1, 0, 4), "prompt is empty");
  GenerateRequest r = Request(2, 3, 4);
  r.prompt[1] = 129280;
  ExpectInvalid(s, log, r, "prompt[1] = 129280 is outside [0, vocab_size 129280)");
  r.prompt[1] = -1;
  ExpectInvalid(s, log, r, "prompt[1] = -1");
  ExpectInvalid(s, log, Request(3, 3, 0), "sampling.max_new_tokens = 0");
  r = Request(4, 3, 4);
  r.sampling.greedy = false;
  r.sampling.temperature = 0;
  ExpectInvalid(s, log, r, "sampling.temperature = 0");
  r = Request(5, 3, 4);
  r.sampling.top_p = 0;
  ExpectInvalid(s, log, r, "sampling.top_p = 0");
  r.sampling.top_p = 1.5f;
  ExpectInvalid(s, log, r, "sampling.top_p = 1.5");
  r = Request(6, 3, 4);
  r.sampling.top_k = -1;
  ExpectInvalid(s, log, r, "sampling.top_k = -1");
  r = Request(7, 3, 4);
  r.sampling.stop = {"ok", ""};
  ExpectInvalid(s, log, r, "sampling.stop[1] is empty");
  r.sampling.stop = {"\xff"};
  ExpectInvalid(s, log, r, "sampling.stop[0] is not valid UTF-8");
  ExpectInvalid(s, log, Request(8, 60, 5),
                "prompt (60 tokens) + sampling.max_new_tokens (5) exceeds "
                "max_position_embeddings 64");

  // Greedy ignores the temperature; 60 + 4 positions fit exactly.
  r = Request(9, 60, 4);
  r.sampling.temperature = 0;
  EXPECT_TRUE(s.Submit(r, log.Sink(9)).ok());
  const absl::Status dup = s.Submit(Request(9, 3, 4), log.Sink(99));
  EXPECT_EQ(dup.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(log.Of(99).empty());
  EXPECT_EQ(s.Stats().running, 1);
  EXPECT_EQ(s.Stats().queued, 0);
}

TEST(Scheduler, OptionsValidate) {
  const ModelConfig config = TinyConfig();
  EXPECT_TRUE(SchedulerOptions().Validate(config).ok());
  auto expect_bad = [&](SchedulerOptions o, const std::string& what) {
    const absl::Status st = o.Validate(config);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(st.message()), HasSubstr(what));
  };
  SchedulerOptions o;
  o.num_dp_groups = 0;
  expect_bad(o, "num_dp_groups is 0");
  o = SchedulerOptions();
  o.kv_page_bytes = 100;
  expect_bad(o, "--kv-page: KV page of 100 bytes cannot hold one main KV entry of 200 bytes");
  o = SchedulerOptions();
  o.step_token_budget = 0;
  expect_bad(o, "step_token_budget is 0");
  o = SchedulerOptions();
  o.max_running_per_group = 0;
  expect_bad(o, "max_running_per_group is 0");
  o = SchedulerOptions();
  o.max_queued = -1;
  expect_bad(o, "max_queued is -1");
  o = SchedulerOptions();
  o.max_head_bypass = -1;
  expect_bad(o, "max_head_bypass is -1");

  // Issue 13, item 9: a pool that cannot hold the smallest request refused every request. Tiny
  // in 64 KiB pages: one page per layer's window ring (5 layers, MTP included), one per CSA
  // compressor state and one per its indexer's (2 CSA layers), one for the ratio-8 compressor:
  // 10 pages before any entry, which 2 positions do not make.
  o = SchedulerOptions();
  o.kv_pool_bytes_per_group = 1024;
  expect_bad(o, "KV pool per DP group (--kv-pool) is 1024 bytes (0 pages of 65536 bytes); one "
                "sequence of 2 tokens needs 10 pages: give at least 655360 bytes");
  o.kv_pool_bytes_per_group = 655359;
  expect_bad(o, "(9 pages of 65536 bytes)");
  o.kv_pool_bytes_per_group = 655360;
  EXPECT_TRUE(o.Validate(config).ok()) << o.Validate(config);
}

TEST(Scheduler, DecodesFirstThenPromptChunksWithinTheBudget) {
  SchedulerOptions o = Options(1000);
  o.step_token_budget = 8;
  Scheduler s(TinyConfig(), o, &ProjectTokenizer());
  EventLog log;
  ASSERT_TRUE(s.Submit(Request(1, 5, 3), log.Sink(1)).ok());
  ASSERT_TRUE(s.Submit(Request(2, 10, 2), log.Sink(2)).ok());
  ASSERT_TRUE(s.Submit(Request(3, 3, 2), log.Sink(3)).ok());
  auto token_of = [](uint64_t id) { return int32_t(500 + id); };

  // Step 0: request 1's whole prompt (it samples), the first 3 tokens of request 2 (no sample).
  StepPlan p = Step(s, token_of);
  EXPECT_EQ(p.step, 0);
  ASSERT_THAT(Ids(p), ElementsAre(1u, 2u));
  EXPECT_EQ(p.seqs[0].start_pos, 0);
  EXPECT_EQ(p.seqs[0].tokens, Range(1000, 1005));
  EXPECT_EQ(p.seqs[0].sample, 1);
  EXPECT_EQ(p.seqs[0].dp_group, 0);
  EXPECT_EQ(p.seqs[0].sampling.greedy, 1);
  EXPECT_EQ(p.seqs[1].start_pos, 0);
  EXPECT_EQ(p.seqs[1].tokens, Range(1000, 1003));
  EXPECT_EQ(p.seqs[1].sample, 0);

  // Step 1: request 1 decodes its sampled token first; request 2's last 7 prompt tokens.
  p = Step(s, token_of);
  ASSERT_THAT(Ids(p), ElementsAre(1u, 2u));
  EXPECT_EQ(p.seqs[0].start_pos, 5);
  EXPECT_EQ(p.seqs[0].tokens, std::vector<int32_t>{501});
  EXPECT_EQ(p.seqs[0].sample, 1);
  EXPECT_EQ(p.seqs[1].start_pos, 3);
  EXPECT_EQ(p.seqs[1].tokens, Range(1003, 1010));
  EXPECT_EQ(p.seqs[1].sample, 1);

  // Step 2: two decodes, then request 3's prompt.
  p = Step(s, token_of);
  ASSERT_THAT(Ids(p), ElementsAre(1u, 2u, 3u));
  EXPECT_EQ(p.seqs[0].start_pos, 6);
  EXPECT_EQ(p.seqs[1].start_pos, 10);
  EXPECT_EQ(p.seqs[1].tokens, std::vector<int32_t>{502});
  EXPECT_EQ(p.seqs[2].start_pos, 0);
  EXPECT_EQ(p.seqs[2].tokens, Range(1000, 1003));
  EXPECT_EQ(p.seqs[2].sample, 1);
  EXPECT_TRUE(p.release.empty());

  // Requests 1 (3 tokens) and 2 (2 tokens) are done: released once, in the order they ended.
  p = Step(s, token_of);
  EXPECT_THAT(p.release, ElementsAre(1u, 2u));
  ASSERT_THAT(Ids(p), ElementsAre(3u));
  EXPECT_EQ(p.seqs[0].start_pos, 3);
  p = Step(s, token_of);
  EXPECT_THAT(p.release, ElementsAre(3u));
  EXPECT_TRUE(p.seqs.empty());
  EXPECT_TRUE(s.Idle());
  p = Step(s, token_of);
  EXPECT_TRUE(p.release.empty());
  EXPECT_TRUE(p.seqs.empty());

  std::vector<std::pair<int64_t, int64_t>> progress;
  for (const RequestEvent& e : log.Of(2, Kind::kProgress)) {
    progress.emplace_back(e.prefill_done, e.prefill_total);
  }
  EXPECT_THAT(progress,
              ElementsAre(std::pair<int64_t, int64_t>(3, 10), std::pair<int64_t, int64_t>(10, 10)));
  EXPECT_EQ(log.Of(1, Kind::kToken).size(), 3u);
  EXPECT_EQ(log.Last(1).kind, Kind::kFinished);
  EXPECT_EQ(log.Last(1).reason, FinishReason::kLength);
  EXPECT_EQ(s.Stats().steps, 5);
  EXPECT_EQ(s.Stats().tokens_generated, 7);
}

TEST(Scheduler, LongPromptSpansSeveralStepsAndDecodesNeverExceedTheBudget) {
  SchedulerOptions o = Options(1000);
  o.step_token_budget = 3;
  Scheduler s(TinyConfig(), o, &ProjectTokenizer());
  EventLog log;
  for (uint64_t id = 1; id <= 4; ++id) ASSERT_TRUE(s.Submit(Request(id, 2, 4), log.Sink(id)).ok());
  for (int i = 0; i < 40 && !s.Idle(); ++i) {
    const StepPlan p = Step(s);
    int64_t tokens = 0;
    std::vector<uint64_t> ids = Ids(p);
    for (const StepSequence& q : p.seqs) tokens += int64_t(q.tokens.size());
    EXPECT_LE(tokens, 3) << "step " << p.step;
    std::sort(ids.begin(), ids.end());
    EXPECT_EQ(std::unique(ids.begin(), ids.end()), ids.end()) << "a sequence twice in a plan";
  }
  EXPECT_TRUE(s.Idle());
  for (uint64_t id = 1; id <= 4; ++id) {
    EXPECT_EQ(log.Last(id).reason, FinishReason::kLength);
    EXPECT_EQ(log.Last(id).usage.completion_tokens, 4);
  }
}

TEST(Scheduler, PriorityThenFirstComeFirstServed) {
  SchedulerOptions o = Options(1000);
  o.step_token_budget = 4;  // one prompt per step
  Scheduler s(TinyConfig(), o, &ProjectTokenizer());
  EventLog log;
  ASSERT_TRUE(s.Submit(Request(1, 4, 1, /*priority=*/0), log.Sink(1)).ok());
  ASSERT_TRUE(s.Submit(Request(2, 4, 1, /*priority=*/5), log.Sink(2)).ok());
  ASSERT_TRUE(s.Submit(Request(3, 4, 1, /*priority=*/0), log.Sink(3)).ok());
  ASSERT_TRUE(s.Submit(Request(4, 4, 1, /*priority=*/5), log.Sink(4)).ok());
  ASSERT_TRUE(s.Submit(Request(5, 4, 1, /*priority=*/-3), log.Sink(5)).ok());
  std::vector<uint64_t> order;
  for (int i = 0; i < 100 && !s.Idle(); ++i) {
    for (uint64_t id : Ids(Step(s))) order.push_back(id);
  }
  EXPECT_THAT(order, ElementsAre(2u, 4u, 1u, 3u, 5u));
}

TEST(Scheduler, TwoDpGroupsMostFreePagesFirst) {
  // 98 pages per group; 16 and 32 positions take 33 pages each.
  Scheduler s(TinyConfig(), Options(98, /*num_groups=*/2), &ProjectTokenizer());
  EventLog log;
  ASSERT_TRUE(s.Submit(Request(1, 10, 6), log.Sink(1)).ok());   // tie -> group 0
  ASSERT_TRUE(s.Submit(Request(2, 10, 6), log.Sink(2)).ok());   // 98 free vs 65 -> group 1
  ASSERT_TRUE(s.Submit(Request(3, 20, 12), log.Sink(3)).ok());  // 65 vs 65 -> group 0
  ASSERT_TRUE(s.Submit(Request(4, 10, 6), log.Sink(4)).ok());   // 32 vs 65 -> group 1
  ASSERT_TRUE(s.Submit(Request(5, 10, 6), log.Sink(5)).ok());   // 32 vs 32: waits
  EXPECT_EQ(log.Of(5, Kind::kAdmitted)[0].queue_position, 1);
  SchedulerStats st = s.Stats();
  ASSERT_EQ(st.groups.size(), 2u);
  EXPECT_EQ(st.groups[0].pages_used, 66);
  EXPECT_EQ(st.groups[1].pages_used, 66);
  EXPECT_EQ(st.groups[0].sequences, 2);
  EXPECT_EQ(st.groups[1].sequences, 2);
  EXPECT_EQ(st.groups[0].page_bytes, 4096u);
  EXPECT_EQ(st.running, 4);
  EXPECT_EQ(st.queued, 1);

  const StepPlan p = Step(s);
  EXPECT_EQ(Find(p, 1)->dp_group, 0);
  EXPECT_EQ(Find(p, 2)->dp_group, 1);
  EXPECT_EQ(Find(p, 3)->dp_group, 0);
  EXPECT_EQ(Find(p, 4)->dp_group, 1);
  EXPECT_EQ(Find(p, 5), nullptr);
  EXPECT_TRUE(RunUntilIdle(s));
  EXPECT_EQ(log.Last(5).reason, FinishReason::kLength);
}

TEST(Scheduler, MaxRunningPerGroupBoundsConcurrency) {
  SchedulerOptions o = Options(1000);
  o.max_running_per_group = 2;
  Scheduler s(TinyConfig(), o, &ProjectTokenizer());
  EventLog log;
  for (uint64_t id = 1; id <= 3; ++id) ASSERT_TRUE(s.Submit(Request(id, 2, 2), log.Sink(id)).ok());
  EXPECT_EQ(log.Of(3, Kind::kAdmitted)[0].queue_position, 1);
  EXPECT_THAT(Ids(Step(s)), ElementsAre(1u, 2u));
  EXPECT_THAT(Ids(Step(s)), ElementsAre(1u, 2u));
  const StepPlan p = Step(s);
  EXPECT_THAT(p.release, ElementsAre(1u, 2u));
  EXPECT_THAT(Ids(p), ElementsAre(3u));
}

TEST(Scheduler, OverCapacityRefusedWithTheNumbersWhileOthersContinue) {
  Scheduler s(TinyConfig(), Options(51), &ProjectTokenizer());
  EXPECT_EQ(s.ReservationBytes(16), 33u * 4096);
  // 220 positions: 55 CSA entries (3 pages) and keys (1 page) in each of 2 layers, 27 ratio-8
  // entries (2 pages): 28 + 6 + 2 + 2.
  EXPECT_EQ(s.ReservationBytes(220), 38u * 4096);
  EventLog log;
  ASSERT_TRUE(s.Submit(Request(1, 4, 4), log.Sink(1)).ok());
  Step(s);
  // 480 + 20 positions: 125 CSA entries (7 pages) and keys (3 pages) per CSA layer, 62 ratio-8
  // entries (4 pages): 28 + 14 + 6 + 4 = 52 > 51.
  const absl::Status st = s.Submit(Request(2, 480, 20), log.Sink(2));
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(st.message()),
              HasSubstr("request 2 needs 208.00 KiB of KV (212992 B = 52 pages of 4096 B for 480 "
                        "prompt + 20 new tokens), more than a DP group's whole pool of 204.00 KiB "
                        "(208896 B = 51 pages)"));
  EXPECT_TRUE(log.Of(2).empty());
  EXPECT_EQ(s.Stats().groups[0].pages_used, 33);
  // 51 pages exactly fit (484 positions: 121 entries, 7 + 3 pages per CSA layer, 60 ratio-8
  // entries, 3 pages): queued behind request 1.
  ASSERT_TRUE(s.Submit(Request(3, 464, 20), log.Sink(3)).ok());
  EXPECT_EQ(log.Of(3, Kind::kAdmitted)[0].queue_position, 1);
  EXPECT_EQ(log.Of(3, Kind::kAdmitted)[0].kv_bytes_reserved, 51u * 4096);
  EXPECT_TRUE(RunUntilIdle(s));
  EXPECT_EQ(log.Last(1).reason, FinishReason::kLength);
  EXPECT_EQ(log.Last(1).usage.completion_tokens, 4);
  EXPECT_EQ(log.Last(3).reason, FinishReason::kLength);
  EXPECT_EQ(s.Stats().groups[0].pages_used, 0);
}

TEST(Scheduler, QueuesWhenFullAndAdmitsAfterAFinish) {
  // 5, 9, 6 and 6 positions: 32, 33, 32 and 32 pages; the first two fit together, not three.
  Scheduler s(TinyConfig(), Options(90), &ProjectTokenizer());
  EventLog log;
  ASSERT_TRUE(s.Submit(Request(1, 4, 1), log.Sink(1)).ok());
  ASSERT_TRUE(s.Submit(Request(2, 4, 5), log.Sink(2)).ok());
  ASSERT_TRUE(s.Submit(Request(3, 4, 2), log.Sink(3)).ok());
  ASSERT_TRUE(s.Submit(Request(4, 4, 2), log.Sink(4)).ok());
  for (uint64_t id = 1; id <= 4; ++id) {
    const std::vector<RequestEvent> admitted = log.Of(id, Kind::kAdmitted);
    ASSERT_EQ(admitted.size(), 1u);
    EXPECT_EQ(admitted[0].kv_bytes_reserved, (id == 2 ? 33u : 32u) * 4096);
    EXPECT_EQ(admitted[0].queue_position, id <= 2 ? 0 : int64_t(id) - 2);
  }
  EXPECT_EQ(s.Stats().running, 2);
  EXPECT_EQ(s.Stats().queued, 2);
  EXPECT_EQ(s.Stats().groups[0].pages_used, 65);

  EXPECT_THAT(Ids(Step(s)), ElementsAre(1u, 2u));  // request 1 ends after one token
  EXPECT_EQ(s.Stats().queued, 1);                  // its pages went to request 3
  const StepPlan p = Step(s);
  EXPECT_THAT(p.release, ElementsAre(1u));
  ASSERT_THAT(Ids(p), ElementsAre(2u, 3u));
  EXPECT_EQ(p.seqs[1].start_pos, 0);
  EXPECT_EQ(s.Stats().groups[0].pages_used, 65);
  EXPECT_TRUE(RunUntilIdle(s));
  for (uint64_t id = 1; id <= 4; ++id) EXPECT_EQ(log.Last(id).kind, Kind::kFinished);
  EXPECT_EQ(s.Stats().groups[0].pages_used, 0);
}

TEST(Scheduler, FullQueueRefuses) {
  SchedulerOptions o = Options(50);
  o.max_queued = 1;
  Scheduler s(TinyConfig(), o, &ProjectTokenizer());
  EventLog log;
  ASSERT_TRUE(s.Submit(Request(1, 4, 4), log.Sink(1)).ok());
  ASSERT_TRUE(s.Submit(Request(2, 4, 4), log.Sink(2)).ok());
  const absl::Status st = s.Submit(Request(3, 4, 4), log.Sink(3));
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(st.message()), HasSubstr("queue is full (1 requests waiting"));
  EXPECT_TRUE(log.Of(3).empty());
  EXPECT_EQ(s.Stats().queued, 1);
  EXPECT_TRUE(RunUntilIdle(s));
  // The id was never taken: it can be submitted again.
  EXPECT_TRUE(s.Submit(Request(3, 4, 4), log.Sink(3)).ok());
}

TEST(Scheduler, BlockedQueueHeadIsPassedAtMostMaxHeadBypassTimes) {
  SchedulerOptions o = Options(105);
  o.max_head_bypass = 1;
  Scheduler s(TinyConfig(), o, &ProjectTokenizer());
  EventLog log;
  ASSERT_TRUE(s.Submit(Request(1, 4, 4), log.Sink(1)).ok());      // 33 pages, 72 free
  // 1,050 positions: 262 CSA entries (14 pages) and keys (5 pages) per CSA layer, 131 ratio-8
  // entries (7 pages): 28 + 28 + 10 + 7 = 73: waits.
  ASSERT_TRUE(s.Submit(Request(2, 1040, 10), log.Sink(2)).ok());
  ASSERT_TRUE(s.Submit(Request(3, 4, 4), log.Sink(3)).ok());      // passes it (1st time)
  ASSERT_TRUE(s.Submit(Request(4, 4, 4), log.Sink(4)).ok());      // would fit, but waits
  EXPECT_EQ(log.Of(2, Kind::kAdmitted)[0].queue_position, 1);
  EXPECT_EQ(log.Of(3, Kind::kAdmitted)[0].queue_position, 0);
  EXPECT_EQ(log.Of(4, Kind::kAdmitted)[0].queue_position, 2);
  EXPECT_EQ(s.Stats().groups[0].pages_used, 66);

  std::vector<uint64_t> first_seen;
  for (int i = 0; i < 1000 && !s.Idle(); ++i) {
    for (uint64_t id : Ids(Step(s))) {
      if (std::find(first_seen.begin(), first_seen.end(), id) == first_seen.end()) {
        first_seen.push_back(id);
      }
    }
  }
  EXPECT_THAT(first_seen, ElementsAre(1u, 3u, 2u, 4u));  // the big one before request 4
  for (uint64_t id = 1; id <= 4; ++id) EXPECT_EQ(log.Last(id).reason, FinishReason::kLength);
}

TEST(Scheduler, StrictOrderWithoutBypass) {
  SchedulerOptions o = Options(105);
  o.max_head_bypass = 0;
  Scheduler s(TinyConfig(), o, &ProjectTokenizer());
  EventLog log;
  ASSERT_TRUE(s.Submit(Request(1, 4, 4), log.Sink(1)).ok());
  ASSERT_TRUE(s.Submit(Request(2, 1040, 10), log.Sink(2)).ok());
  ASSERT_TRUE(s.Submit(Request(3, 4, 4), log.Sink(3)).ok());
  EXPECT_EQ(log.Of(3, Kind::kAdmitted)[0].queue_position, 2);
}

TEST(Scheduler, SameCallsSamePlans) {
  auto run = [] {
    SchedulerOptions o = Options(200, 2);
    o.step_token_budget = 7;
    Scheduler s(TinyConfig(), o, &ProjectTokenizer());
    EventLog log;
    std::vector<std::string> plans;
    for (uint64_t id = 1; id <= 6; ++id) {
      EXPECT_TRUE(s.Submit(Request(id, int64_t(3 * id), 3, int32_t(id % 2)), log.Sink(id)).ok());
      plans.push_back(SerializeStepPlan(Step(s, [](uint64_t q) { return int32_t(q * 7); })));
    }
    s.Cancel(4);
    for (int i = 0; i < 20; ++i) plans.push_back(SerializeStepPlan(Step(s)));
    return plans;
  };
  EXPECT_EQ(run(), run());
}

}  // namespace
}  // namespace flotilla
