// A scheduler-like RequestSink for serving tests: admits synchronously (Admitted inside Submit,
// as the Scheduler does), then an engine thread of its own emits Progress, one Token event per
// id and Finished(kLength). The tokens echo the prompt: token i is prompt[i % prompt.size()].
// Knobs: refuse Submit with a status, hold requests (no tokens until cancelled), fail admitted
// requests with an error event, or script the output (fixed token ids, one Token event each,
// then Finished with a given reason). Every Submit and Cancel is recorded.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "coordinator/request_sink.h"
#include "tokenizer/tokenizer.h"

namespace flotilla::testing {

class FakeBackend : public RequestSink {
 public:
  explicit FakeBackend(const Tokenizer* tokenizer);
  ~FakeBackend() override;

  absl::Status Submit(GenerateRequest request, EventSink sink) override;
  void Cancel(uint64_t id, bool notify) override;

  // The next Submit calls return `status` (OK: admit again).
  void set_submit_status(absl::Status status);
  // Admitted requests wait, producing nothing, until cancelled.
  void set_hold(bool hold);
  // Admitted requests end with an error event carrying `status` (OK: run normally).
  void set_run_error(absl::Status status);
  // Progress comes every `tokens` prompt tokens (0: one event for the whole prompt).
  void set_prefill_chunk(int64_t tokens) {
    std::lock_guard<std::mutex> lock(mu_);
    prefill_chunk_ = tokens;
  }
  // Every request then gets exactly `tokens` (one Token event per id, text detokenized with
  // special tokens kept) and Finished(`reason`). Empty: echo the prompt again.
  void set_script(std::vector<int32_t> tokens, FinishReason reason);
  // Tokens come `interval` apart, and a cancel stops them (a request still generating).
  void set_token_interval(std::chrono::microseconds interval) {
    std::lock_guard<std::mutex> lock(mu_);
    token_interval_ = interval;
  }

  std::vector<GenerateRequest> submitted() const;
  std::vector<std::pair<uint64_t, bool>> cancels() const;  // (id, notify)
  // Waits until `n` requests were submitted / a cancel of `id` was recorded.
  bool WaitForSubmitted(size_t n, std::chrono::milliseconds timeout) const;
  bool WaitForCancel(uint64_t id, std::chrono::milliseconds timeout) const;

  // The tokens a request gets: min(max_new_tokens, 8) echoes of its prompt.
  static std::vector<int32_t> ExpectedTokens(const GenerateRequest& request);

 private:
  struct Job {
    GenerateRequest request;
    EventSink sink;
    bool cancelled = false;
    bool notify = true;
  };
  void EngineLoop();
  void Run(Job& job);

  const Tokenizer* tokenizer_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::deque<Job> queue_;         // admitted, waiting for the engine
  std::map<uint64_t, Job> held_;  // admitted while holding
  std::vector<GenerateRequest> submitted_;
  std::vector<std::pair<uint64_t, bool>> cancels_;
  absl::Status submit_status_;
  absl::Status run_error_;
  std::vector<int32_t> script_;
  FinishReason script_reason_ = FinishReason::kStop;
  bool hold_ = false;
  int64_t prefill_chunk_ = 0;
  std::chrono::microseconds token_interval_{0};
  bool stop_ = false;
  std::thread engine_;
};

}  // namespace flotilla::testing
