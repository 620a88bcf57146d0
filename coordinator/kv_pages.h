// KV page arithmetic of admission (design.md §5; spec §8.2 packed layout): the pages of a
// worker's KV pool, counted with the workers' own arithmetic (sharding/kv_pool_layout.h), so that
// what admission reserves is what the workers hold. A request of T positions reserves
//   PagesFor(T) = KvPoolLayout::SequencePages(T).Total()
// pages: its window rings and compressor states (fixed) and the pages of compressed entries and
// indexer keys T positions fill, per layer and kind. A worker's sequence never holds more: it
// grows its page tables to the positions it has run, at most T. The coordinator only counts
// pages; the workers own the memory.
#pragma once

#include <cstdint>

#include "common/model_config.h"
#include "common/status.h"
#include "sharding/kv_pool_layout.h"

namespace flotilla {

struct KvPageGeometry {
  KvPoolLayout layout;
  uint64_t page_bytes = 0;
  int64_t fixed_pages = 0;  // per sequence: windows, MTP window, compressor state

  // INVALID_ARGUMENT naming what a page of `page_bytes` cannot hold (KvPoolLayout::Make).
  static absl::StatusOr<KvPageGeometry> Make(const ModelConfig& config, int64_t page_bytes);

  int64_t PagesFor(int64_t tokens) const { return layout.SequencePages(tokens).Total(); }
  uint64_t ReservationBytes(int64_t tokens) const {
    return uint64_t(PagesFor(tokens)) * page_bytes;
  }
  // Pages of a pool of `pool_bytes`, as a worker's KvPool makes them.
  int64_t PagesInPool(uint64_t pool_bytes) const { return layout.PagesInPool(pool_bytes); }
};

// The page count of one DP group's pool. Not thread-safe (the scheduler's lock guards it).
class KvPagePool {
 public:
  explicit KvPagePool(int64_t total_pages = 0) : total_(total_pages) {}

  // Takes `pages` when that many are free; false (and nothing taken) otherwise.
  bool TryReserve(int64_t pages);
  // Returns pages taken by TryReserve (programmer error to return more than are used).
  void Release(int64_t pages);

  int64_t total() const { return total_; }
  int64_t used() const { return used_; }
  int64_t free() const { return total_ - used_; }

 private:
  int64_t total_ = 0;
  int64_t used_ = 0;
};

}  // namespace flotilla
