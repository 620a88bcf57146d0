// The worker's side of the flotilla.v1.WorkerControl service: health, load progress and stats
// read from counters the serve loop updates, and drain / shutdown wishes that the serve loop
// passes to the coordinator with its next step results. Every worker holds part of every MoE
// layer, so a wish concerns the whole job: the coordinator drains it (in-flight requests finish)
// and then stops every rank.
#pragma once

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>

#include "comm/worker_control.h"

namespace flotilla {

class WorkerControlHost : public WorkerControlLogic {
 public:
  WorkerControlHost(int32_t world_rank, int32_t dp_group, int32_t tp_rank);

  // Serve-loop side (one thread).
  void SetLoad(uint64_t bytes_loaded, uint64_t bytes_total, int64_t tensors, bool done,
               const std::string& error);
  void SetState(WorkerState state, const std::string& message = "");
  // The KV pool's size, once it exists.
  void SetKvPool(int64_t pages_total, uint64_t pool_bytes);
  // After each step: tokens run, sequences held, KV pages they hold.
  void OnStep(int64_t tokens, int64_t sequences, int64_t kv_pages_used);
  // Drain / shutdown wishes not yet passed on (bit 0 drain, bit 1 shutdown); clears them.
  uint32_t TakeWishes();

  // WorkerControlLogic (gRPC threads).
  WorkerHealth Health() override;
  WorkerLoadProgress LoadProgress() override;
  WorkerStats Stats() override;
  absl::Status Drain() override;
  absl::Status Shutdown(const std::string& reason) override;

 private:
  const int32_t world_rank_, dp_group_, tp_rank_;
  const std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::mutex mu_;  // guards the non-atomic fields
  WorkerState state_ = WorkerState::kStarting;
  std::string message_;
  WorkerLoadProgress load_;
  std::atomic<int64_t> steps_{0}, tokens_{0}, sequences_{0};
  std::atomic<uint64_t> weight_bytes_{0}, kv_pool_bytes_{0};
  std::atomic<int64_t> kv_pages_total_{0}, kv_pages_used_{0};
  std::atomic<uint32_t> wishes_{0};
};

}  // namespace flotilla
