// Whether a KV pool can live where the workers run: the check behind refusing `--kv-pool 1TiB`
// on a 24 GiB machine at start-up instead of admitting requests the workers cannot hold.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "comm/worker_control.h"

namespace flotilla {

// Every worker holds its weights and its DP group's whole pool (one KV head: tensor parallelism
// does not split the KV). Summed over the workers of each host (WorkerStats::host), that must
// fit the host's physical memory. INVALID_ARGUMENT names the host, the sums and the largest pool
// that fits everywhere; workers that report no memory size are not counted.
absl::Status CheckKvPoolFitsHosts(uint64_t pool_bytes_per_group,
                                  const std::vector<WorkerStats>& workers);

// Every worker's KV pool holds `pages` pages of `page_bytes` (what admission counts: the pool
// bytes the coordinator was given, in its page size). INVALID_ARGUMENT names the first worker
// whose pool differs, with both figures; workers that report no pool are not counted.
absl::Status CheckWorkerKvPools(int64_t pages, uint64_t page_bytes,
                                const std::vector<WorkerStats>& workers);

}  // namespace flotilla
