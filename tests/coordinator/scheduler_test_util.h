// Helpers for the scheduler tests: the tiny model config, a recording sink, a fake clock and a
// fake engine step.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <vector>

#include "common/synthetic.h"
#include "coordinator/scheduler.h"
#include "gtest/gtest.h"

namespace flotilla::testing {

// tiny (spec-shaped, real vocabulary) in 4,096-byte pages, the workers' page arithmetic
// (sharding/kv_pool_layout.h; hand-worked in tests/worker/kv_pool_test.cc): 200-byte main
// entries 20 to a page, 68-byte indexer keys 60 to a page; every sequence holds 28 pages of
// windows and compressor state. Layers 1 and 3 are CSA (ratio 4), layer 2 compresses by 8, so a
// request of T positions takes
//   28 + 2 ceil(floor(T/4) / 20) + 2 ceil(floor(T/4) / 60) + ceil(floor(T/8) / 20)
// pages: 28 below 4 positions, 32 for 4..7, 33 for 8..79.
constexpr uint64_t kPageBytes = 4096;
constexpr int64_t kFixedPages = 28;
constexpr int32_t kToken = 100;  // what the fake engine samples unless told otherwise

inline ModelConfig TinyConfig() {
  absl::StatusOr<ModelConfig> c = PresetConfig("tiny");
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

inline SchedulerOptions Options(int64_t pool_pages, int64_t num_groups = 1) {
  SchedulerOptions o;
  o.num_dp_groups = num_groups;
  o.kv_page_bytes = int64_t(kPageBytes);
  o.kv_pool_bytes_per_group = uint64_t(pool_pages) * kPageBytes;
  return o;
}

// Prompt ids 1000 + i (greedy, no stop strings).
inline GenerateRequest Request(uint64_t id, int64_t prompt_len, int64_t max_new,
                               int32_t priority = 0) {
  GenerateRequest r;
  r.id = id;
  for (int64_t i = 0; i < prompt_len; ++i) r.prompt.push_back(int32_t(1000 + i));
  r.sampling.greedy = true;
  r.sampling.max_new_tokens = max_new;
  r.priority = priority;
  return r;
}

// Records every request's events (thread-safe).
class EventLog {
 public:
  EventSink Sink(uint64_t id) {
    return [this, id](const RequestEvent& e) {
      std::lock_guard<std::mutex> lock(mu_);
      events_[id].push_back(e);
    };
  }
  std::vector<RequestEvent> Of(uint64_t id) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = events_.find(id);
    return it == events_.end() ? std::vector<RequestEvent>{} : it->second;
  }
  std::vector<RequestEvent> Of(uint64_t id, RequestEvent::Kind kind) const {
    std::vector<RequestEvent> out;
    for (const RequestEvent& e : Of(id)) {
      if (e.kind == kind) out.push_back(e);
    }
    return out;
  }
  // The last event, or a default (kAdmitted) one when there is none.
  RequestEvent Last(uint64_t id) const {
    std::vector<RequestEvent> all = Of(id);
    return all.empty() ? RequestEvent{} : all.back();
  }
  std::string Text(uint64_t id) const {
    std::string text;
    for (const RequestEvent& e : Of(id, RequestEvent::Kind::kToken)) text += e.text;
    return text;
  }

 private:
  mutable std::mutex mu_;
  std::map<uint64_t, std::vector<RequestEvent>> events_;
};

// A settable steady clock.
class FakeClock {
 public:
  void AdvanceMs(int64_t ms) { ns_ += ms * 1000000; }
  std::function<std::chrono::steady_clock::time_point()> Fn() {
    return [this] { return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(ns_)); };
  }

 private:
  std::atomic<int64_t> ns_{1000000000};
};

// One engine step: NextStep, then OnStepDone with `next(seq_id)` (default kToken) for every
// sequence the plan asked to sample. Returns the plan.
inline StepPlan Step(Scheduler& s, const std::function<int32_t(uint64_t)>& next = nullptr) {
  StepPlan plan = s.NextStep();
  std::vector<StepToken> tokens;
  for (const StepSequence& q : plan.seqs) {
    if (q.sample) tokens.push_back({q.seq_id, next ? next(q.seq_id) : kToken});
  }
  if (!plan.seqs.empty()) s.OnStepDone(tokens);
  return plan;
}

// Steps until Idle (at most `max_steps`); false when it never got there.
inline bool RunUntilIdle(Scheduler& s, int max_steps = 1000) {
  for (int i = 0; i < max_steps; ++i) {
    if (s.Idle()) return true;
    Step(s);
  }
  return s.Idle();
}

inline const StepSequence* Find(const StepPlan& plan, uint64_t id) {
  for (const StepSequence& q : plan.seqs) {
    if (q.seq_id == id) return &q;
  }
  return nullptr;
}

}  // namespace flotilla::testing
