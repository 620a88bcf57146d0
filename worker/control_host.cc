#include "worker/control_host.h"

#include <unistd.h>

#include <cstdio>

namespace flotilla {

WorkerControlHost::WorkerControlHost(int32_t world_rank, int32_t dp_group, int32_t tp_rank)
    : world_rank_(world_rank), dp_group_(dp_group), tp_rank_(tp_rank) {}

void WorkerControlHost::SetLoad(uint64_t bytes_loaded, uint64_t bytes_total, int64_t tensors,
                                bool done, const std::string& error) {
  std::lock_guard<std::mutex> lock(mu_);
  load_.bytes_loaded = bytes_loaded;
  load_.bytes_total = bytes_total;
  load_.tensors_loaded = load_.tensors_total = tensors;
  load_.done = done;
  load_.error = error;
  weight_bytes_ = bytes_loaded;
}

void WorkerControlHost::SetState(WorkerState state, const std::string& message) {
  std::lock_guard<std::mutex> lock(mu_);
  state_ = state;
  message_ = message;
}

void WorkerControlHost::SetKvPool(int64_t pages_total, uint64_t pool_bytes) {
  kv_pages_total_ = pages_total;
  kv_pool_bytes_ = pool_bytes;
}

void WorkerControlHost::OnStep(int64_t tokens, int64_t sequences, int64_t kv_pages_used) {
  ++steps_;
  tokens_ += tokens;
  sequences_ = sequences;
  kv_pages_used_ = kv_pages_used;
}

uint32_t WorkerControlHost::TakeWishes() { return wishes_.exchange(0); }

WorkerHealth WorkerControlHost::Health() {
  std::lock_guard<std::mutex> lock(mu_);
  WorkerHealth h;
  h.state = state_;
  h.world_rank = world_rank_;
  h.message = message_;
  return h;
}

WorkerLoadProgress WorkerControlHost::LoadProgress() {
  std::lock_guard<std::mutex> lock(mu_);
  return load_;
}

WorkerStats WorkerControlHost::Stats() {
  WorkerStats s;
  s.world_rank = world_rank_;
  s.dp_group = dp_group_;
  s.tp_rank = tp_rank_;
  s.steps = steps_;
  s.tokens_processed = tokens_;
  s.sequences = sequences_;
  s.weight_bytes = weight_bytes_;
  s.kv_pages_total = kv_pages_total_;
  s.kv_pages_used = kv_pages_used_;
  s.kv_pool_bytes = kv_pool_bytes_;
  s.uptime_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  s.device = "cpu";
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) == 0) s.host = host;
  const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page_size > 0) s.host_memory_bytes = uint64_t(pages) * uint64_t(page_size);
  return s;
}

absl::Status WorkerControlHost::Drain() {
  wishes_ |= 1u;
  SetState(WorkerState::kDraining, "drain requested: the coordinator drains the job");
  return absl::OkStatus();
}

absl::Status WorkerControlHost::Shutdown(const std::string& reason) {
  std::fprintf(stderr, "worker (world rank %d): shutdown requested: %s\n", world_rank_,
               reason.c_str());
  wishes_ |= 2u;
  SetState(WorkerState::kStopping, "shutdown requested: " + reason);
  return absl::OkStatus();
}

}  // namespace flotilla
