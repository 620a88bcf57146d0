// A GPU worker's memory, fixed at start (docs/gpu-model.md): what the device has free when the
// worker starts, less a reserve, holds the rank's weights, the step workspace, the expert
// exchange buffers and the paged KV pool, in that order of claim. The pool takes what is left
// (or --kv-memory, which must then fit), in whole pages. Pure; unit-tested on the CPU.
//
// The reserve is what no plan counts: the CUDA context's own growth, cuBLASLt and NCCL
// internals, CUDA graph executables and allocator rounding. Default max(1 GiB, total / 32)
// (H200, 141 GiB: 4.4 GiB).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "common/status.h"
#include "sharding/kv_pool_layout.h"

namespace flotilla {

struct DeviceMemoryRequest {
  uint64_t total = 0;  // the device's memory (cudaMemGetInfo total)
  uint64_t free = 0;   // free when the worker starts, after its context exists
  std::optional<uint64_t> reserve;    // --gpu-reserve; default DefaultGpuReserve(total)
  std::optional<uint64_t> kv_memory;  // --kv-memory; default: everything left
  uint64_t weights = 0;    // this rank's weights as uploaded (ShardPlan RankPlan::weight_bytes
                           // plus what load-time conversion adds)
  uint64_t workspace = 0;  // the step workspace
  uint64_t exchange = 0;   // ExchangeLayout::TotalBytes()
  int sharing = 1;         // workers on this device (tests): each gets free / sharing
};

struct DeviceMemoryBudget {
  uint64_t available = 0;  // free / sharing
  uint64_t reserve = 0, weights = 0, workspace = 0, exchange = 0;
  uint64_t kv_pool = 0;  // whole pages
  int64_t pages = 0;
  uint64_t unused = 0;  // available - everything above (< one page unless --kv-memory)
  int64_t longest_context = 0;  // one sequence alone in the pool (tokens)

  // "weights 12.30 GiB + workspace 2.00 GiB + exchange 72.29 MiB + KV pool 118.41 GiB
  //  (1,940,090 pages of 64.00 KiB) + reserve 4.41 GiB of 137.50 GiB free"
  std::string Describe(const KvPoolLayout& layout) const;
};

uint64_t DefaultGpuReserve(uint64_t total);

// RESOURCE_EXHAUSTED naming each claim and the shortfall when the fixed claims exceed what is
// free, when --kv-memory does not fit beside them, or when the pool cannot hold one empty
// sequence (its sliding-window rings and compressor states).
absl::StatusOr<DeviceMemoryBudget> PlanDeviceMemory(const DeviceMemoryRequest& request,
                                                    const KvPoolLayout& layout,
                                                    int64_t max_context);

}  // namespace flotilla
