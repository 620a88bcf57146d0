// Continuous batching with KV admission (design.md §3, §5). Thread-safe: front-door threads
// Submit() and Cancel(); the engine thread calls NextStep() / OnStepDone() in turn.
//
// Each step: every running sequence that is decoding gets its one token first, then prompt
// chunks are added in priority/FCFS order until the step's token budget is spent (chunked
// prefill). Admission reserves KV pages for prompt + max_new_tokens up front in one DP group's
// pool, so an admitted request never runs out mid-flight; a request that can never fit is
// refused with RESOURCE_EXHAUSTED and the numbers; one that fits but not now waits in the queue
// (bounded: a full queue refuses with RESOURCE_EXHAUSTED). Finish, cancel and disconnect return
// the pages.
//
// Events: sinks are called one at a time, in order per request, never while the scheduler's
// state lock is held, from the thread whose call produced them (Admitted from Submit; Progress,
// Token and Finished from NextStep / OnStepDone; kError from FailAll). A sink may call Cancel,
// Stats or Idle; events it causes are delivered after it returns.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "common/model_config.h"
#include "common/step_plan.h"
#include "coordinator/request.h"
#include "coordinator/request_sink.h"
#include "tokenizer/tokenizer.h"

namespace flotilla {

struct SchedulerOptions {
  int64_t num_dp_groups = 1;
  // The KV pool of every worker rank of a DP group (each holds the group's whole KV) and its
  // page size: admission counts the pages such a pool holds (coordinator/kv_pages.h).
  uint64_t kv_pool_bytes_per_group = 1ull << 30;
  int64_t kv_page_bytes = 64 << 10;
  int64_t step_token_budget = 2048;  // tokens per step over all sequences (a decode counts 1)
  int64_t max_queued = 256;          // waiting requests beyond this are refused
  int64_t max_running_per_group = 64;
  // Starvation bound: while the queue's first request that does not fit waits, later requests
  // that fit may be admitted past it at most this many times; after that nothing more is
  // admitted until it fits (pages free up as running requests finish). 0 = strict order.
  int64_t max_head_bypass = 8;
  // Time source of the usage timings; empty = std::chrono::steady_clock::now (tests inject one).
  std::function<std::chrono::steady_clock::time_point()> clock;

  // Every count >= 1 (max_queued, max_head_bypass >= 0) and a config whose KV can be paged
  // (coordinator/kv_pages.h). The Scheduler constructor requires this to pass.
  absl::Status Validate(const ModelConfig& config) const;
};

struct SchedulerStats {
  int64_t running = 0, queued = 0;
  struct Group {
    int64_t pages_total = 0, pages_used = 0;
    uint64_t page_bytes = 0;
    int64_t sequences = 0;
  };
  std::vector<Group> groups;
  int64_t steps = 0;
  int64_t tokens_generated = 0;
};

class Scheduler : public RequestSink {
 public:
  // `tokenizer` detokenizes the streamed tokens and matches stop strings; must outlive this.
  // `options` must pass options.Validate(config) (checked: a programmer error otherwise).
  Scheduler(const ModelConfig& config, const SchedulerOptions& options, const Tokenizer* tokenizer);
  ~Scheduler() override;
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Admission. OK: queued, and `sink` has received Admitted (queue position, KV reserved or to
  // be reserved; delivered before Submit returns unless Submit is called from inside a sink).
  // Errors (nothing queued, sink not called): RESOURCE_EXHAUSTED (can never fit: message with
  // the request's KV bytes and the group pool; queue full), UNAVAILABLE (draining),
  // INVALID_ARGUMENT naming the field (bad sampling values, empty or empty/invalid-UTF-8 stop
  // string, empty prompt, token id outside the vocabulary, prompt + max_new_tokens beyond
  // max_position_embeddings), ALREADY_EXISTS (the id is queued, running or not yet released).
  absl::Status Submit(GenerateRequest request, EventSink sink) override;

  // Cancels a queued or running request (unknown ids are ignored). Its pages are returned and
  // its sink gets Finished(kCancelled) at the next step boundary, unless `notify` is false
  // (client gone).
  void Cancel(uint64_t id, bool notify = true) override;

  // Stops admitting (Submit returns UNAVAILABLE); requests in flight run to completion.
  void Drain();
  // While `status` is not OK, Submit returns it (a worker missing its liveness deadline);
  // requests already submitted are not affected. OK admits again.
  void SetUnavailable(const absl::Status& status);
  // Every queued and running request ends with `status` (kError event); pages are returned.
  // An outstanding plan is abandoned (its OnStepDone is ignored; NextStep may come first).
  void FailAll(const absl::Status& status);

  // Engine thread: the next step (release list + sequences); no sequences when idle. Workers
  // apply the release list before running the sequences (a released group's pages may already
  // hold a new sequence of the same plan). A plan with sequences must be answered by
  // OnStepDone before the next NextStep (checked), unless FailAll abandoned it.
  StepPlan NextStep();
  // Engine thread: the tokens sampled for the sequences of the last plan that asked for one.
  // Emits Progress / Token / Finished events. A sequence whose token is missing or outside the
  // vocabulary fails (kError, INTERNAL); tokens of other ids, or with no plan outstanding, are
  // ignored.
  void OnStepDone(const std::vector<StepToken>& tokens);

  bool Idle() const;  // nothing queued or running, nothing left to release
  SchedulerStats Stats() const;
  // KV bytes a request of `tokens` total positions reserves (whole pages + per-sequence state).
  uint64_t ReservationBytes(int64_t tokens) const;

 private:
  // (implementation detail: see scheduler.cc)
  struct Sequence;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace flotilla
