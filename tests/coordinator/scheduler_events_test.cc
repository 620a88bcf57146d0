// Scheduler events: order and usage, EOS / length / stop strings on the real tokenizer,
// cancellation, FailAll, Drain, pages back at the end, and a concurrency smoke test.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "coordinator/scheduler.h"
#include "tokenizer/utf8.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/coordinator/scheduler_test_util.h"
#include "tests/tokenizer/test_data.h"

namespace flotilla {
namespace {

using ::flotilla::testing::EventLog;
using ::flotilla::testing::FakeClock;
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

constexpr int32_t kEos = 1;  // tiny's eos_token_id: <｜end▁of▁sentence｜>

std::vector<int32_t> Encode(const std::string& text) {
  absl::StatusOr<std::vector<int32_t>> ids = ProjectTokenizer().Encode(text);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

// Each sequence samples its script in order (then kToken).
class Script {
 public:
  void Set(uint64_t id, std::vector<int32_t> tokens) { tokens_[id] = std::move(tokens); }
  std::function<int32_t(uint64_t)> Fn() {
    return [this](uint64_t id) {
      std::vector<int32_t>& t = tokens_[id];
      size_t& at = at_[id];
      return at < t.size() ? t[at++] : testing::kToken;
    };
  }

 private:
  std::map<uint64_t, std::vector<int32_t>> tokens_;
  std::map<uint64_t, size_t> at_;
};

std::vector<Kind> Kinds(const std::vector<RequestEvent>& events) {
  std::vector<Kind> kinds;
  for (const RequestEvent& e : events) kinds.push_back(e.kind);
  return kinds;
}

TEST(SchedulerEvents, InOrderWithUsageFromTheClock) {
  FakeClock clock;
  SchedulerOptions o = Options(1000);
  o.step_token_budget = 4;
  o.clock = clock.Fn();
  Scheduler s(TinyConfig(), o, &ProjectTokenizer());
  EventLog log;
  ASSERT_TRUE(s.Submit(Request(1, 10, 3), log.Sink(1)).ok());
  ASSERT_EQ(log.Of(1).size(), 1u);  // Admitted is delivered before Submit returns
  for (int i = 0; i < 5; ++i) {
    clock.AdvanceMs(100);
    Step(s);
  }
  const std::vector<RequestEvent> events = log.Of(1);
  EXPECT_THAT(Kinds(events),
              ElementsAre(Kind::kAdmitted, Kind::kProgress, Kind::kProgress, Kind::kProgress,
                          Kind::kToken, Kind::kToken, Kind::kToken, Kind::kFinished));
  EXPECT_EQ(events[0].queue_position, 0);
  EXPECT_EQ(events[0].kv_bytes_reserved, 33u * testing::kPageBytes);  // 13 positions
  EXPECT_EQ(events[1].prefill_done, 4);
  EXPECT_EQ(events[2].prefill_done, 8);
  EXPECT_EQ(events[3].prefill_done, 10);
  EXPECT_EQ(events[3].prefill_total, 10);
  EXPECT_THAT(events[4].token_ids, ElementsAre(testing::kToken));
  const RequestEvent& done = events.back();
  EXPECT_EQ(done.reason, FinishReason::kLength);
  EXPECT_STREQ(FinishReasonName(done.reason), "length");
  EXPECT_EQ(done.usage.prompt_tokens, 10);
  EXPECT_EQ(done.usage.completion_tokens, 3);
  EXPECT_DOUBLE_EQ(done.usage.time_to_first_token_s, 0.3);  // third step
  EXPECT_DOUBLE_EQ(done.usage.time_per_output_token_s, 0.1);
}

TEST(SchedulerEvents, FinishReasonNames) {
  EXPECT_STREQ(FinishReasonName(FinishReason::kStop), "stop");
  EXPECT_STREQ(FinishReasonName(FinishReason::kStopString), "stop_string");
  EXPECT_STREQ(FinishReasonName(FinishReason::kCancelled), "cancelled");
  EXPECT_STREQ(FinishReasonName(FinishReason::kError), "error");
}

TEST(SchedulerEvents, EosStopsAndIsReportedWithoutText) {
  Scheduler s(TinyConfig(), Options(1000), &ProjectTokenizer());
  EventLog log;
  const std::vector<int32_t> hello = Encode("Hello");
  ASSERT_EQ(hello.size(), 1u);
  Script script;
  script.Set(1, {hello[0], kEos});
  ASSERT_TRUE(s.Submit(Request(1, 3, 10), log.Sink(1)).ok());
  GenerateRequest r = Request(2, 3, 3);
  r.sampling.ignore_eos = true;
  script.Set(2, {kEos, kEos, kEos});
  ASSERT_TRUE(s.Submit(r, log.Sink(2)).ok());
  for (int i = 0; i < 10 && !s.Idle(); ++i) Step(s, script.Fn());
  ASSERT_TRUE(s.Idle());

  const std::vector<RequestEvent> tokens = log.Of(1, Kind::kToken);
  ASSERT_EQ(tokens.size(), 2u);
  EXPECT_THAT(tokens[0].token_ids, ElementsAre(hello[0]));
  EXPECT_EQ(tokens[0].text, "Hello");
  EXPECT_THAT(tokens[1].token_ids, ElementsAre(kEos));
  EXPECT_EQ(tokens[1].text, "");
  EXPECT_EQ(log.Last(1).reason, FinishReason::kStop);
  EXPECT_EQ(log.Last(1).usage.completion_tokens, 2);

  EXPECT_EQ(log.Last(2).reason, FinishReason::kLength);
  const std::string eos_text =
      "<\xEF\xBD\x9C"
      "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
  EXPECT_EQ(log.Text(2), eos_text + eos_text + eos_text);
}

TEST(SchedulerEvents, StopStringSplitAcrossTokens) {
  Scheduler s(TinyConfig(), Options(1000), &ProjectTokenizer());
  EventLog log;
  const std::vector<int32_t> ids = Encode("The quick brown fox jumps over the lazy dog");
  const std::vector<int32_t> upto_fox = Encode("The quick brown fox");
  Script script;
  script.Set(1, ids);
  GenerateRequest r = Request(1, 2, 50);
  r.sampling.stop = {"never", "own fox"};
  ASSERT_TRUE(s.Submit(r, log.Sink(1)).ok());
  StepPlan plan;
  for (int i = 0; i < 60 && log.Last(1).kind != Kind::kFinished; ++i) plan = Step(s, script.Fn());
  EXPECT_EQ(log.Last(1).reason, FinishReason::kStopString);
  EXPECT_EQ(log.Text(1), "The quick br");
  EXPECT_EQ(log.Last(1).usage.completion_tokens, int64_t(upto_fox.size()));
  EXPECT_EQ(log.Of(1, Kind::kToken).size(), upto_fox.size());
  EXPECT_THAT(Step(s).release, ElementsAre(1u));
  EXPECT_TRUE(s.Idle());
}

TEST(SchedulerEvents, MultiByteCharacterSplitAcrossTokens) {
  Scheduler s(TinyConfig(), Options(1000), &ProjectTokenizer());
  EventLog log;
  const std::string text = "a\xF0\x9D\x84\x9E\xE4\xB8\xAD b";  // a, U+1D11E, U+4E2D, " b"
  const std::vector<int32_t> ids = Encode(text);
  ASSERT_GT(ids.size(), 4u);
  Script script;
  script.Set(1, ids);
  ASSERT_TRUE(s.Submit(Request(1, 2, int64_t(ids.size())), log.Sink(1)).ok());
  for (int i = 0; i < 50 && !s.Idle(); ++i) Step(s, script.Fn());
  ASSERT_TRUE(s.Idle());
  EXPECT_EQ(log.Last(1).reason, FinishReason::kLength);
  EXPECT_EQ(log.Text(1), text);
  int empty = 0;
  for (const RequestEvent& e : log.Of(1, Kind::kToken)) {
    EXPECT_TRUE(utf8::IsValid(e.text));
    empty += e.text.empty();
  }
  EXPECT_GT(empty, 0);  // byte tokens of an unfinished character release nothing
}

TEST(SchedulerEvents, CancelQueuedRequest) {
  Scheduler s(TinyConfig(), Options(50), &ProjectTokenizer());
  EventLog log;
  ASSERT_TRUE(s.Submit(Request(1, 4, 8), log.Sink(1)).ok());
  ASSERT_TRUE(s.Submit(Request(2, 4, 8), log.Sink(2)).ok());
  Step(s);
  s.Cancel(2);
  s.Cancel(77);                    // unknown: ignored
  EXPECT_EQ(s.Stats().queued, 1);  // takes effect at the next step boundary
  const StepPlan p = Step(s);
  EXPECT_TRUE(p.release.empty());  // the workers never saw it
  EXPECT_EQ(Find(p, 2), nullptr);
  EXPECT_THAT(Kinds(log.Of(2)), ElementsAre(Kind::kAdmitted, Kind::kFinished));
  EXPECT_EQ(log.Last(2).reason, FinishReason::kCancelled);
  EXPECT_EQ(log.Last(2).usage.completion_tokens, 0);
  EXPECT_EQ(s.Stats().queued, 0);
  EXPECT_EQ(s.Stats().groups[0].pages_used, 33);  // 12 positions
  EXPECT_TRUE(RunUntilIdle(s));
  EXPECT_EQ(log.Last(1).reason, FinishReason::kLength);
}

TEST(SchedulerEvents, CancelRunningRequestReleasesItOnce) {
  Scheduler s(TinyConfig(), Options(100), &ProjectTokenizer());
  EventLog log;
  ASSERT_TRUE(s.Submit(Request(1, 4, 10), log.Sink(1)).ok());
  ASSERT_TRUE(s.Submit(Request(2, 4, 10), log.Sink(2)).ok());
  Step(s);
  Step(s);
  s.Cancel(1);
  StepPlan p = Step(s);
  EXPECT_THAT(p.release, ElementsAre(1u));
  EXPECT_EQ(Find(p, 1), nullptr);
  EXPECT_EQ(log.Last(1).kind, Kind::kFinished);
  EXPECT_EQ(log.Last(1).reason, FinishReason::kCancelled);
  EXPECT_EQ(log.Last(1).usage.completion_tokens, 2);
  s.Cancel(1);  // already gone: ignored
  EXPECT_TRUE(Step(s).release.empty());
  EXPECT_EQ(log.Of(1, Kind::kFinished).size(), 1u);
  EXPECT_TRUE(RunUntilIdle(s));
  EXPECT_EQ(s.Stats().groups[0].pages_used, 0);
}

TEST(SchedulerEvents, CancelWithoutNotifySendsNothing) {
  Scheduler s(TinyConfig(), Options(100), &ProjectTokenizer());
  EventLog log;
  ASSERT_TRUE(s.Submit(Request(1, 4, 10), log.Sink(1)).ok());
  Step(s);
  const size_t before = log.Of(1).size();
  s.Cancel(1, /*notify=*/false);
  EXPECT_THAT(Step(s).release, ElementsAre(1u));
  EXPECT_EQ(log.Of(1).size(), before);
  EXPECT_TRUE(s.Idle());
  EXPECT_EQ(s.Stats().groups[0].pages_used, 0);
}

TEST(SchedulerEvents, CancelWhileAStepIsInFlightDropsItsToken) {
  Scheduler s(TinyConfig(), Options(100), &ProjectTokenizer());
  EventLog log;
  ASSERT_TRUE(s.Submit(Request(1, 4, 10), log.Sink(1)).ok());
  StepPlan p = s.NextStep();
  ASSERT_EQ(p.seqs.size(), 1u);
  s.Cancel(1);
  s.OnStepDone({{1, testing::kToken}});
  EXPECT_TRUE(log.Of(1, Kind::kToken).empty());
  EXPECT_EQ(log.Last(1).reason, FinishReason::kCancelled);
  EXPECT_EQ(s.Stats().groups[0].pages_used, 0);
  p = s.NextStep();
  EXPECT_THAT(p.release, ElementsAre(1u));
  EXPECT_TRUE(p.seqs.empty());
  EXPECT_TRUE(s.Idle());
}

TEST(SchedulerEvents, FailAllEndsEverythingWithTheStatus) {
  Scheduler s(TinyConfig(), Options(50), &ProjectTokenizer());
  EventLog log;
  ASSERT_TRUE(s.Submit(Request(1, 4, 10), log.Sink(1)).ok());
  ASSERT_TRUE(s.Submit(Request(2, 4, 10), log.Sink(2)).ok());  // queued
  Step(s);
  s.NextStep();  // outstanding when the failure comes
  s.FailAll(absl::UnavailableError("worker rank 3 stopped answering at step 1"));
  for (uint64_t id : {1u, 2u}) {
    const RequestEvent last = log.Last(id);
    EXPECT_EQ(last.kind, Kind::kError);
    EXPECT_EQ(last.error.code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(std::string(last.error.message()), HasSubstr("worker rank 3"));
    EXPECT_TRUE(log.Of(id, Kind::kFinished).empty());
  }
  s.OnStepDone({{1, testing::kToken}});  // the abandoned plan's answer: ignored
  EXPECT_EQ(log.Of(1, Kind::kToken).size(), 1u);
  const SchedulerStats st = s.Stats();
  EXPECT_EQ(st.running + st.queued, 0);
  EXPECT_EQ(st.groups[0].pages_used, 0);
  const StepPlan p = s.NextStep();  // allowed: FailAll abandoned the outstanding plan
  EXPECT_THAT(p.release, ElementsAre(1u));
  EXPECT_TRUE(s.Idle());
}

TEST(SchedulerEvents, DrainRefusesNewRequestsAndFinishesTheRest) {
  Scheduler s(TinyConfig(), Options(50), &ProjectTokenizer());
  EventLog log;
  ASSERT_TRUE(s.Submit(Request(1, 4, 3), log.Sink(1)).ok());
  ASSERT_TRUE(s.Submit(Request(2, 4, 3), log.Sink(2)).ok());  // queued
  Step(s);
  s.Drain();
  const absl::Status st = s.Submit(Request(3, 4, 3), log.Sink(3));
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(st.message()), HasSubstr("draining"));
  EXPECT_TRUE(log.Of(3).empty());
  EXPECT_TRUE(RunUntilIdle(s));
  EXPECT_EQ(log.Last(1).reason, FinishReason::kLength);
  EXPECT_EQ(log.Last(2).reason, FinishReason::kLength);
}

// Issue 13, item 4: while a worker misses its liveness deadline, admission refuses naming it;
// what was submitted before runs on.
TEST(SchedulerEvents, UnavailableRefusesNewRequestsUntilCleared) {
  Scheduler s(TinyConfig(), Options(50), &ProjectTokenizer());
  EventLog log;
  ASSERT_TRUE(s.Submit(Request(1, 4, 3), log.Sink(1)).ok());
  s.SetUnavailable(absl::UnavailableError("worker rank 2 (h:1) has not answered for 5.0 s"));
  const absl::Status st = s.Submit(Request(2, 4, 3), log.Sink(2));
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(st.message(), "request 2 refused: worker rank 2 (h:1) has not answered for 5.0 s");
  EXPECT_TRUE(log.Of(2).empty());
  s.SetUnavailable(absl::OkStatus());
  ASSERT_TRUE(s.Submit(Request(3, 4, 3), log.Sink(3)).ok());
  EXPECT_TRUE(RunUntilIdle(s));
  EXPECT_EQ(log.Last(1).reason, FinishReason::kLength);
  EXPECT_EQ(log.Last(3).reason, FinishReason::kLength);
}

TEST(SchedulerEvents, BadWorkerAnswerFailsOnlyThatSequence) {
  Scheduler s(TinyConfig(), Options(1000), &ProjectTokenizer());
  EventLog log;
  for (uint64_t id = 1; id <= 3; ++id) ASSERT_TRUE(s.Submit(Request(id, 4, 3), log.Sink(id)).ok());
  ASSERT_EQ(s.NextStep().seqs.size(), 3u);
  s.OnStepDone({{1, testing::kToken}, {3, 129280}, {42, 5}});  // 2 missing, 3 out of range
  EXPECT_EQ(log.Last(2).kind, Kind::kError);
  EXPECT_EQ(log.Last(2).error.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(log.Last(2).error.message()),
              HasSubstr("step 0: the workers returned no token for sequence 2"));
  EXPECT_THAT(std::string(log.Last(3).error.message()),
              HasSubstr("token 129280 for sequence 3, outside [0, vocab_size 129280)"));
  EXPECT_THAT(Step(s).release, ElementsAre(2u, 3u));
  EXPECT_TRUE(RunUntilIdle(s));
  EXPECT_EQ(log.Last(1).reason, FinishReason::kLength);
}

TEST(SchedulerEvents, SinkMayCallBackIntoTheScheduler) {
  Scheduler s(TinyConfig(), Options(1000), &ProjectTokenizer());
  EventLog log;
  EventSink inner = log.Sink(1);
  ASSERT_TRUE(s.Submit(Request(1, 4, 10), [&](const RequestEvent& e) {
                 inner(e);
                 if (e.kind == Kind::kToken) {
                   EXPECT_EQ(s.Stats().running, 1);
                   s.Cancel(1);
                 }
               }).ok());
  Step(s);
  EXPECT_THAT(Step(s).release, ElementsAre(1u));
  EXPECT_EQ(log.Last(1).reason, FinishReason::kCancelled);
  EXPECT_EQ(log.Of(1, Kind::kToken).size(), 1u);
}

TEST(SchedulerEvents, EverythingEndsAndThePoolIsEmptyAgain) {
  SchedulerOptions o = Options(300, /*num_groups=*/2);
  o.step_token_budget = 16;
  o.max_running_per_group = 3;
  Scheduler s(TinyConfig(), o, &ProjectTokenizer());
  EventLog log;
  const std::vector<int32_t> text = Encode("one two three four five six seven");
  Script script;
  for (uint64_t id = 1; id <= 24; ++id) {
    GenerateRequest r = Request(id, int64_t(1 + id * 5 % 37), int64_t(1 + id % 9), int32_t(id % 3));
    if (id % 4 == 0) r.sampling.stop = {"four"};
    script.Set(id, id % 5 == 0 ? std::vector<int32_t>{text[0], kEos} : text);
    ASSERT_TRUE(s.Submit(r, log.Sink(id)).ok()) << id;
  }
  std::set<uint64_t> seen;
  std::multiset<uint64_t> released;
  for (int i = 0; i < 500 && !s.Idle(); ++i) {
    if (i == 3) s.Cancel(7);
    if (i == 5) s.Cancel(20, /*notify=*/false);
    const StepPlan p = Step(s, script.Fn());
    for (const StepSequence& q : p.seqs) seen.insert(q.seq_id);
    released.insert(p.release.begin(), p.release.end());
  }
  ASSERT_TRUE(s.Idle());
  EXPECT_EQ(std::set<uint64_t>(released.begin(), released.end()), seen);
  EXPECT_EQ(released.size(), seen.size());  // each exactly once
  for (uint64_t id = 1; id <= 24; ++id) {
    if (id == 20) continue;
    const RequestEvent last = log.Last(id);
    EXPECT_EQ(last.kind, Kind::kFinished) << id;
    EXPECT_EQ(log.Of(id, Kind::kFinished).size(), 1u) << id;
    if (id == 7) {
      EXPECT_EQ(last.reason, FinishReason::kCancelled);
    } else if (id % 5 == 0) {  // "one" then EOS, within max_new_tokens
      EXPECT_EQ(last.reason, FinishReason::kStop) << id;
    }
  }
  const SchedulerStats st = s.Stats();
  EXPECT_EQ(st.running + st.queued, 0);
  for (const SchedulerStats::Group& g : st.groups) {
    EXPECT_EQ(g.pages_used, 0);
    EXPECT_EQ(g.sequences, 0);
  }
}

TEST(SchedulerEvents, ConcurrentSubmitAndCancelWhileTheEngineSteps) {
  SchedulerOptions o = Options(400, /*num_groups=*/2);
  o.step_token_budget = 32;
  o.max_queued = 16;
  Scheduler s(TinyConfig(), o, &ProjectTokenizer());
  EventLog log;
  std::atomic<bool> submitters_done{false};
  std::atomic<int> engine_steps{0};

  std::thread engine([&] {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      const bool last = submitters_done.load();
      const StepPlan p = Step(s, [](uint64_t id) { return id % 11 == 0 ? kEos : testing::kToken; });
      ++engine_steps;
      if (last && s.Idle()) return;
      if (p.seqs.empty()) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    ADD_FAILURE() << "engine did not become idle within 60 s";
  });

  constexpr int kPerThread = 60;
  std::vector<std::vector<uint64_t>> accepted(2);
  std::vector<std::thread> front;
  for (int t = 0; t < 2; ++t) {
    front.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const uint64_t id = uint64_t(1000 * (t + 1) + i);
        if (s.Submit(Request(id, 1 + i % 20, 1 + i % 7, i % 3), log.Sink(id)).ok()) {
          accepted[size_t(t)].push_back(id);
        }
        if (i % 4 == 1) s.Cancel(id - 1, /*notify=*/i % 8 != 1);
        if (i % 10 == 0) s.Stats();
        std::this_thread::yield();
      }
    });
  }
  for (std::thread& f : front) f.join();
  submitters_done = true;
  engine.join();

  EXPECT_TRUE(s.Idle());
  int finished = 0;
  for (const std::vector<uint64_t>& ids : accepted) {
    for (uint64_t id : ids) {
      const std::vector<RequestEvent> events = log.Of(id);
      ASSERT_FALSE(events.empty()) << id;
      EXPECT_EQ(events.front().kind, Kind::kAdmitted) << id;
      int terminal = 0;
      for (const RequestEvent& e : events) terminal += e.kind == Kind::kFinished;
      const bool silent_cancel = (id % 1000) % 8 == 0 && events.back().kind != Kind::kFinished;
      EXPECT_TRUE(terminal == 1 || (silent_cancel && terminal == 0)) << id;
      finished += terminal;
    }
  }
  EXPECT_GT(finished, 0);
  EXPECT_GT(engine_steps.load(), 0);
  const SchedulerStats st = s.Stats();
  EXPECT_EQ(st.running + st.queued, 0);
  for (const SchedulerStats::Group& g : st.groups) EXPECT_EQ(g.pages_used, 0);
}

}  // namespace
}  // namespace flotilla
