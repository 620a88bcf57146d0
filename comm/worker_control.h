// The worker control plane (design.md §1): health, load progress, stats, drain and shutdown.
// A worker implements WorkerControlLogic (plain structs, no gRPC) and hosts it with
// WorkerControlServer; the coordinator asks it through WorkerControlClient. Both are thin
// adapters over flotilla.v1.WorkerControl; every client call has a deadline.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/status.h"

namespace flotilla {

enum class WorkerState { kStarting, kLoading, kReady, kDraining, kStopping, kFailed };
const char* WorkerStateName(WorkerState state);  // "starting", "loading", ...

struct WorkerHealth {
  WorkerState state = WorkerState::kStarting;
  int32_t world_rank = -1;
  std::string message;  // why it failed, or what it is doing
};

struct WorkerLoadProgress {
  uint64_t bytes_loaded = 0, bytes_total = 0;
  int64_t tensors_loaded = 0, tensors_total = 0;
  bool done = false;
  std::string error;  // non-empty when loading failed
};

struct WorkerStats {
  int32_t world_rank = -1;
  int32_t dp_group = 0;
  int32_t tp_rank = 0;
  int64_t steps = 0;
  int64_t tokens_processed = 0;
  int64_t sequences = 0;
  int64_t kv_pages_total = 0, kv_pages_used = 0;
  uint64_t kv_pool_bytes = 0;
  uint64_t weight_bytes = 0;
  double uptime_s = 0;
  std::string device;  // "cpu", or the GPU's name
  std::string host;    // host name
  uint64_t host_memory_bytes = 0;  // physical memory of the host
};

// One worker as the coordinator sees it (GetClusterStatus).
struct WorkerReport {
  int32_t world_rank = -1;
  std::string address;  // its WorkerControl endpoint
  WorkerHealth health;
  WorkerLoadProgress load;
  WorkerStats stats;
  std::string error;  // non-empty when the worker could not be asked
};

// Implemented by the worker. Called from gRPC handler threads, possibly concurrently: methods
// must be thread-safe and return quickly (Shutdown only records the wish; the worker's main
// loop acts on it).
class WorkerControlLogic {
 public:
  virtual ~WorkerControlLogic() = default;
  virtual WorkerHealth Health() = 0;
  virtual WorkerLoadProgress LoadProgress() = 0;
  virtual WorkerStats Stats() = 0;
  virtual absl::Status Drain() = 0;
  virtual absl::Status Shutdown(const std::string& reason) = 0;
};

struct WorkerControlServerOptions {
  std::string address = "127.0.0.1";  // "0.0.0.0" to accept other hosts
  int port = 0;                       // 0: pick a free port
};

class WorkerControlServer {
 public:
  // `logic` must outlive the server. Errors: UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<WorkerControlServer>> Start(
      const WorkerControlServerOptions& options, WorkerControlLogic* logic);
  ~WorkerControlServer();  // Shutdown(now)

  int port() const;
  std::string endpoint() const;  // "address:port"
  // Idempotent. Calls in progress get until `deadline`, then are cancelled.
  absl::Status Shutdown(std::chrono::system_clock::time_point deadline);

 private:
  struct Impl;
  explicit WorkerControlServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class WorkerControlClient {
 public:
  // `target`: "host:port". Connects lazily; nothing is sent here.
  explicit WorkerControlClient(const std::string& target);
  ~WorkerControlClient();

  // Each call fails with DEADLINE_EXCEEDED after `timeout`, UNAVAILABLE when the worker cannot
  // be reached; other codes are the worker's own.
  absl::StatusOr<WorkerHealth> Health(std::chrono::milliseconds timeout) const;
  absl::StatusOr<WorkerLoadProgress> LoadProgress(std::chrono::milliseconds timeout) const;
  absl::StatusOr<WorkerStats> Stats(std::chrono::milliseconds timeout) const;
  absl::Status Drain(std::chrono::milliseconds timeout) const;
  absl::Status Shutdown(const std::string& reason, std::chrono::milliseconds timeout) const;
  // Health, load progress and stats; the first failure goes into `error` (prefixed with the
  // target). `timeout` bounds each call.
  WorkerReport Report(int32_t world_rank, std::chrono::milliseconds timeout) const;

  const std::string& target() const { return target_; }

 private:
  struct Impl;
  std::string target_;
  std::unique_ptr<Impl> impl_;
};

// A stream of one worker's health reports (WorkerControl.Watch), read on a thread of its own.
// `on_report` is called for each report, `on_end` once when the stream ends: UNAVAILABLE when
// the worker went away (at once when its process died), CANCELLED after Stop().
class WorkerWatch {
 public:
  static std::unique_ptr<WorkerWatch> Start(const std::string& target,
                                            std::chrono::milliseconds interval,
                                            std::function<void(const WorkerHealth&)> on_report,
                                            std::function<void(const absl::Status&)> on_end);
  ~WorkerWatch();  // Stop()
  // Idempotent: cancels the stream and waits for the reader (on_end has been called).
  void Stop();

 private:
  WorkerWatch() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace flotilla
