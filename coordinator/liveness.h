// Worker liveness (design.md §1 failures): every worker streams its health to the coordinator
// (WorkerControl.Watch). A rank that sends nothing for `deadline` is late: health turns
// NOT_SERVING and admission refuses with UNAVAILABLE naming the rank, until it reports again. A
// rank whose stream ends is gone: the requests in flight fail with UNAVAILABLE naming the rank,
// at once, before the job ends.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"

namespace flotilla {

struct LivenessOptions {
  std::chrono::milliseconds deadline{5000};  // silence after which a rank is late
  std::chrono::milliseconds interval{250};   // how often each worker reports
};

struct WorkerEndpoint {
  int32_t world_rank = -1;
  std::string address;  // its WorkerControl endpoint
};

// When each rank last reported, and which ones are gone. Thread-safe; time is passed in.
class LivenessTable {
 public:
  using Clock = std::chrono::steady_clock;
  LivenessTable(std::vector<WorkerEndpoint> workers, std::chrono::milliseconds deadline,
                Clock::time_point now);

  void OnReport(int32_t world_rank, Clock::time_point now);
  void OnGone(int32_t world_rank, const absl::Status& why);
  // OK while every rank reported within the deadline. Otherwise UNAVAILABLE naming the lowest
  // gone rank, or else the lowest late rank, its endpoint and how long it has been silent.
  absl::Status Check(Clock::time_point now) const;
  // Every gone or late rank, for the message of a step that failed: "worker rank 3 (addr) is
  // gone: ...; worker rank 4 (addr) silent for 7.2 s", or "" when every rank is live.
  std::string Suspects(Clock::time_point now) const;
  bool AnyGone() const;

 private:
  struct Rank {
    std::string address;
    Clock::time_point last;
    absl::Status gone;  // non-OK once its stream ended
  };
  mutable std::mutex mu_;
  std::map<int32_t, Rank> ranks_;
  std::chrono::milliseconds deadline_;
};

// Watches every worker and reports each change of LivenessTable::Check from a thread of its own:
// `on_change(status)` with UNAVAILABLE when a rank becomes late or gone and OK when all are live
// again; `on_gone(status)` once, as soon as a rank is gone. Stop() before the workers are told to
// exit, or their ends read as deaths.
class LivenessMonitor {
 public:
  LivenessMonitor(std::vector<WorkerEndpoint> workers, const LivenessOptions& options,
                  std::function<void(const absl::Status&)> on_change,
                  std::function<void(const absl::Status&)> on_gone);
  ~LivenessMonitor();  // Stop()
  void Stop();         // idempotent
  std::string Suspects() const;  // LivenessTable::Suspects now

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace flotilla
