#include "tests/coordinator/fake_backend.h"

#include <algorithm>

namespace flotilla::testing {

FakeBackend::FakeBackend(const Tokenizer* tokenizer)
    : tokenizer_(tokenizer), engine_([this] { EngineLoop(); }) {}

FakeBackend::~FakeBackend() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  engine_.join();
}

std::vector<int32_t> FakeBackend::ExpectedTokens(const GenerateRequest& request) {
  std::vector<int32_t> out;
  const int64_t n = std::min<int64_t>(request.sampling.max_new_tokens, 8);
  for (int64_t i = 0; i < n; ++i) out.push_back(request.prompt[i % request.prompt.size()]);
  return out;
}

absl::Status FakeBackend::Submit(GenerateRequest request, EventSink sink) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!submit_status_.ok()) return submit_status_;
  submitted_.push_back(request);
  RequestEvent admitted;
  admitted.kind = RequestEvent::Kind::kAdmitted;
  admitted.kv_bytes_reserved = 1000 * request.prompt.size();
  admitted.queue_position = static_cast<int64_t>(queue_.size());
  const uint64_t id = request.id;
  Job job{std::move(request), std::move(sink)};
  // Admitted before Submit returns, as the Scheduler does (outside our lock, like a sink call
  // made by the scheduler would be inside its own).
  lock.unlock();
  job.sink(admitted);
  lock.lock();
  if (hold_) {
    held_.emplace(id, std::move(job));
  } else {
    queue_.push_back(std::move(job));
  }
  cv_.notify_all();
  return absl::OkStatus();
}

void FakeBackend::Cancel(uint64_t id, bool notify) {
  std::lock_guard<std::mutex> lock(mu_);
  cancels_.emplace_back(id, notify);
  auto it = held_.find(id);
  if (it != held_.end()) {
    it->second.cancelled = true;
    it->second.notify = notify;
    queue_.push_back(std::move(it->second));  // the engine sends Finished(kCancelled)
    held_.erase(it);
  }
  for (Job& job : queue_) {
    if (job.request.id == id) {
      job.cancelled = true;
      job.notify = notify;
    }
  }
  cv_.notify_all();
}

void FakeBackend::set_submit_status(absl::Status status) {
  std::lock_guard<std::mutex> lock(mu_);
  submit_status_ = std::move(status);
}

void FakeBackend::set_hold(bool hold) {
  std::lock_guard<std::mutex> lock(mu_);
  hold_ = hold;
}

void FakeBackend::set_run_error(absl::Status status) {
  std::lock_guard<std::mutex> lock(mu_);
  run_error_ = std::move(status);
}

void FakeBackend::set_script(std::vector<int32_t> tokens, FinishReason reason) {
  std::lock_guard<std::mutex> lock(mu_);
  script_ = std::move(tokens);
  script_reason_ = reason;
}

std::vector<GenerateRequest> FakeBackend::submitted() const {
  std::lock_guard<std::mutex> lock(mu_);
  return submitted_;
}

std::vector<std::pair<uint64_t, bool>> FakeBackend::cancels() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancels_;
}

bool FakeBackend::WaitForSubmitted(size_t n, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return submitted_.size() >= n; });
}

bool FakeBackend::WaitForCancel(uint64_t id, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout, [&] {
    return std::any_of(cancels_.begin(), cancels_.end(),
                       [&](const auto& c) { return c.first == id; });
  });
}

void FakeBackend::EngineLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    Job job = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    Run(job);
    lock.lock();
  }
}

void FakeBackend::Run(Job& job) {
  RequestEvent e;
  if (job.cancelled) {
    if (job.notify) {
      e.kind = RequestEvent::Kind::kFinished;
      e.reason = FinishReason::kCancelled;
      e.usage.prompt_tokens = static_cast<int64_t>(job.request.prompt.size());
      job.sink(e);
    }
    return;
  }
  absl::Status run_error;
  std::vector<int32_t> script;
  FinishReason script_reason;
  {
    std::lock_guard<std::mutex> lock(mu_);
    run_error = run_error_;
    script = script_;
    script_reason = script_reason_;
  }
  if (!run_error.ok()) {
    e.kind = RequestEvent::Kind::kError;
    e.error = run_error;
    job.sink(e);
    return;
  }
  const int64_t num_prompt = static_cast<int64_t>(job.request.prompt.size());
  int64_t chunk = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    chunk = prefill_chunk_;
  }
  e.kind = RequestEvent::Kind::kProgress;
  e.prefill_total = num_prompt;
  for (int64_t done = chunk > 0 ? std::min(chunk, num_prompt) : num_prompt;;
       done = std::min(done + chunk, num_prompt)) {
    e.prefill_done = done;
    job.sink(e);
    if (done == num_prompt) break;
  }
  StreamingDetokenizer detok(tokenizer_);
  const std::vector<int32_t> tokens = script.empty() ? ExpectedTokens(job.request) : script;
  std::chrono::microseconds interval{0};
  {
    std::lock_guard<std::mutex> lock(mu_);
    interval = token_interval_;
  }
  for (int32_t id : tokens) {
    if (interval.count() > 0) {
      std::this_thread::sleep_for(interval);
      std::lock_guard<std::mutex> lock(mu_);
      bool cancelled = stop_;
      for (const auto& c : cancels_) cancelled = cancelled || c.first == job.request.id;
      if (cancelled) return;  // without notification, as a gone client's request
    }
    RequestEvent t;
    t.kind = RequestEvent::Kind::kToken;
    t.token_ids = {id};
    detok.Push(id, &t.text).IgnoreError();
    job.sink(t);
  }
  RequestEvent f;
  f.kind = RequestEvent::Kind::kFinished;
  f.reason = script.empty() ? FinishReason::kLength : script_reason;
  f.usage.prompt_tokens = num_prompt;
  f.usage.completion_tokens = static_cast<int64_t>(tokens.size());
  f.usage.time_to_first_token_s = 0.001;
  f.usage.time_per_output_token_s = 0.0005;
  job.sink(f);
}

}  // namespace flotilla::testing
