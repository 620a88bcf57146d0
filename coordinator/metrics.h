// Serving metrics in the Prometheus text exposition format (version 0.0.4): counters,
// histograms and gauges, all named flotilla_*. Thread-safe; recording is a short lock.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "coordinator/scheduler.h"

namespace flotilla {

// A histogram with fixed upper bounds (seconds or counts), rendered cumulatively.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value);
  // `name` without suffix; `labels` "" or `key="value",...`.
  void Render(const std::string& name, const std::string& labels, std::string* out) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, the last one +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

class ServingMetrics {
 public:
  ServingMetrics();

  // One finished HTTP (or gRPC) request: `endpoint` e.g. "chat_completions", `outcome` "ok",
  // "client_error", "rejected", "cancelled", "server_error".
  void CountRequest(const std::string& endpoint, const std::string& outcome);
  void AddTokens(int64_t prompt_tokens, int64_t generated_tokens);
  void ObserveTimeToFirstToken(double seconds);
  void ObserveInterTokenLatency(double seconds);
  void ObserveEndToEndLatency(double seconds);
  // One engine step with sequences: its wall time and tokens by kind.
  void ObserveStep(double seconds, int64_t prefill_tokens, int64_t decode_tokens);

  // The text for GET /metrics; `stats` gives the live gauges.
  std::string Render(const SchedulerStats& stats) const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, std::string>, uint64_t> requests_;
  uint64_t prompt_tokens_ = 0, generated_tokens_ = 0;
  Histogram ttft_, itl_, e2e_, step_time_, prefill_per_step_, decode_per_step_;
};

}  // namespace flotilla
