#include "coordinator/metrics.h"

#include <cinttypes>
#include <cmath>
#include <cstdio>

#include "absl/strings/str_cat.h"

namespace flotilla {
namespace {

std::string Num(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

void Header(std::string* out, const std::string& name, const char* type, const char* help) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

std::vector<double> LatencyBounds() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
}

std::vector<double> TokenBounds() {
  return {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384};
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double value) {
  size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += value;
  ++count_;
}

void Histogram::Render(const std::string& name, const std::string& labels, std::string* out) const {
  const std::string sep = labels.empty() ? "" : ",";
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i];
    const double le = i < bounds_.size() ? bounds_[i] : INFINITY;
    absl::StrAppend(out, name, "_bucket{", labels, sep, "le=\"", Num(le), "\"} ", cumulative, "\n");
  }
  const std::string braces = labels.empty() ? "" : absl::StrCat("{", labels, "}");
  absl::StrAppend(out, name, "_sum", braces, " ", Num(sum_), "\n");
  absl::StrAppend(out, name, "_count", braces, " ", count_, "\n");
}

ServingMetrics::ServingMetrics()
    : ttft_(LatencyBounds()),
      itl_(LatencyBounds()),
      e2e_(LatencyBounds()),
      step_time_(LatencyBounds()),
      prefill_per_step_(TokenBounds()),
      decode_per_step_(TokenBounds()) {}

void ServingMetrics::CountRequest(const std::string& endpoint, const std::string& outcome) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{endpoint, outcome}];
}

void ServingMetrics::AddTokens(int64_t prompt_tokens, int64_t generated_tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  prompt_tokens_ += static_cast<uint64_t>(prompt_tokens);
  generated_tokens_ += static_cast<uint64_t>(generated_tokens);
}

void ServingMetrics::ObserveTimeToFirstToken(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  ttft_.Observe(seconds);
}

void ServingMetrics::ObserveInterTokenLatency(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  itl_.Observe(seconds);
}

void ServingMetrics::ObserveEndToEndLatency(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  e2e_.Observe(seconds);
}

void ServingMetrics::ObserveStep(double seconds, int64_t prefill_tokens, int64_t decode_tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  step_time_.Observe(seconds);
  prefill_per_step_.Observe(static_cast<double>(prefill_tokens));
  decode_per_step_.Observe(static_cast<double>(decode_tokens));
}

std::string ServingMetrics::Render(const SchedulerStats& stats) const {
  std::string out;
  std::lock_guard<std::mutex> lock(mu_);
  Header(&out, "flotilla_requests_total", "counter",
         "Finished API requests by endpoint and outcome.");
  for (const auto& [key, n] : requests_) {
    absl::StrAppend(&out, "flotilla_requests_total{endpoint=\"", key.first, "\",outcome=\"",
                    key.second, "\"} ", n, "\n");
  }
  Header(&out, "flotilla_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.");
  absl::StrAppend(&out, "flotilla_prompt_tokens_total ", prompt_tokens_, "\n");
  Header(&out, "flotilla_generated_tokens_total", "counter", "Tokens generated for clients.");
  absl::StrAppend(&out, "flotilla_generated_tokens_total ", generated_tokens_, "\n");

  Header(&out, "flotilla_time_to_first_token_seconds", "histogram",
         "Time from admission to the first generated token.");
  ttft_.Render("flotilla_time_to_first_token_seconds", "", &out);
  Header(&out, "flotilla_inter_token_latency_seconds", "histogram",
         "Time between consecutive tokens of a request.");
  itl_.Render("flotilla_inter_token_latency_seconds", "", &out);
  Header(&out, "flotilla_request_latency_seconds", "histogram",
         "Time from a request's arrival to its last token.");
  e2e_.Render("flotilla_request_latency_seconds", "", &out);
  Header(&out, "flotilla_step_seconds", "histogram", "Wall time of engine steps with sequences.");
  step_time_.Render("flotilla_step_seconds", "", &out);
  Header(&out, "flotilla_step_prefill_tokens", "histogram", "Prompt tokens per engine step.");
  prefill_per_step_.Render("flotilla_step_prefill_tokens", "", &out);
  Header(&out, "flotilla_step_decode_tokens", "histogram", "Decode tokens per engine step.");
  decode_per_step_.Render("flotilla_step_decode_tokens", "", &out);

  Header(&out, "flotilla_queue_depth", "gauge", "Requests waiting for admission.");
  absl::StrAppend(&out, "flotilla_queue_depth ", stats.queued, "\n");
  Header(&out, "flotilla_running_sequences", "gauge", "Sequences admitted and running.");
  absl::StrAppend(&out, "flotilla_running_sequences ", stats.running, "\n");
  Header(&out, "flotilla_kv_pages_used", "gauge", "KV pages reserved, per DP group.");
  for (size_t g = 0; g < stats.groups.size(); ++g) {
    absl::StrAppend(&out, "flotilla_kv_pages_used{dp_group=\"", g, "\"} ",
                    stats.groups[g].pages_used, "\n");
  }
  Header(&out, "flotilla_kv_pages_free", "gauge", "KV pages free, per DP group.");
  for (size_t g = 0; g < stats.groups.size(); ++g) {
    absl::StrAppend(&out, "flotilla_kv_pages_free{dp_group=\"", g, "\"} ",
                    stats.groups[g].pages_total - stats.groups[g].pages_used, "\n");
  }
  Header(&out, "flotilla_engine_steps_total", "counter", "Engine steps with sequences.");
  absl::StrAppend(&out, "flotilla_engine_steps_total ", stats.steps, "\n");
  return out;
}

}  // namespace flotilla
