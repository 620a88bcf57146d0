#include "coordinator/host_memory.h"

#include <algorithm>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "sharding/capacity.h"

namespace flotilla {

absl::Status CheckKvPoolFitsHosts(uint64_t pool_bytes_per_group,
                                  const std::vector<WorkerStats>& workers) {
  struct Host {
    int64_t ranks = 0;
    uint64_t weights = 0, memory = 0;
  };
  std::map<std::string, Host> hosts;
  for (const WorkerStats& w : workers) {
    if (w.host_memory_bytes == 0) continue;
    Host& h = hosts[w.host];
    h.ranks += 1;
    h.weights += w.weight_bytes;
    h.memory = w.host_memory_bytes;
  }
  const uint64_t share = pool_bytes_per_group;  // every rank of a group holds the whole pool
  const std::string* worst = nullptr;
  uint64_t fits = UINT64_MAX;  // the largest pool per group that fits every host
  for (const auto& [name, h] : hosts) {
    const uint64_t room = h.memory > h.weights ? h.memory - h.weights : 0;
    const uint64_t host_fits = room / uint64_t(h.ranks);
    fits = std::min(fits, host_fits);
    if (share > room / uint64_t(h.ranks) && worst == nullptr) worst = &name;
  }
  if (worst == nullptr) return absl::OkStatus();
  const Host& h = hosts[*worst];
  return absl::InvalidArgumentError(absl::StrCat(
      "--kv-pool ", FormatBytes(pool_bytes_per_group), " per DP group does not fit host '", *worst,
      "': its ", h.ranks, " worker rank(s) hold ", FormatBytes(h.weights), " of weights and at least ",
      FormatBytes(share), " of KV each (the whole pool), more than its ",
      FormatBytes(h.memory), " of memory; the largest pool that fits is ", FormatBytes(fits)));
}

absl::Status CheckWorkerKvPools(int64_t pages, uint64_t page_bytes,
                                const std::vector<WorkerStats>& workers) {
  for (const WorkerStats& w : workers) {
    if (w.kv_pages_total == 0) continue;
    const uint64_t their_page = w.kv_pool_bytes / uint64_t(w.kv_pages_total);
    if (w.kv_pages_total == pages && their_page == page_bytes) continue;
    return absl::InvalidArgumentError(absl::StrCat(
        "worker (world rank ", w.world_rank, ") holds a KV pool of ", w.kv_pages_total,
        " pages of ", their_page, " bytes; admission counts ", pages, " pages of ", page_bytes,
        " bytes (--kv-pool / --kv-page of the coordinator; launch/flotilla-serve passes them to "
        "the workers as --kv-memory / --kv-page)"));
  }
  return absl::OkStatus();
}

}  // namespace flotilla
