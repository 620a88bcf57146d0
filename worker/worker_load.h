// Loading one worker rank's shard under MPI: the shard plan, exactly its bytes, the model, and
// the agreement step in which every rank learns whether all ranks loaded the same checkpoint.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "comm/comm.h"
#include "comm/load_report.h"
#include "worker/model.h"

namespace flotilla {

struct WorkerLoadOptions {
  std::string model_dir;
  int64_t tp = 1;
  int64_t experts_per_token = 0;
  uint64_t kv_memory_bytes = 0;  // the KV pool (0: ModelOptions' default)
  int64_t kv_page_bytes = 64 << 10;
  // The step workspace's limits (0: ModelOptions' defaults).
  int64_t tokens_per_step = 0;
  int64_t sequences_per_step = 0;
  int64_t exchange_rows = 0;  // rows per expert-exchange round (0: ModelOptions' default)
};

struct LoadedWorker {
  ModelConfig config;
  std::unique_ptr<Model> model;
  uint64_t fingerprint = 0;
  uint64_t bytes_read = 0, planned_bytes = 0;
  int64_t dp_group = 0, tp_rank = 0;
};

// `workers`: every worker rank (the EP group); `tp_comm`: this rank's TP group.
absl::StatusOr<LoadedWorker> LoadWorker(const WorkerLoadOptions& options, Comm& workers,
                                        Comm* tp_comm);


}  // namespace flotilla
