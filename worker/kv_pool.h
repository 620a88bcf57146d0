// A worker's paged KV pool (issue item 3): one backend arena of fixed-size pages, sized when the
// worker starts, and the page tables of each sequence per layer and kind. The page arithmetic is
// sharding/kv_pool_layout.h, shared with admission and `flotilla plan`; what a page holds is the
// packed layout of spec §8.2 (kernels PackKvEntries / PackIndexerKeys).
//
// Not thread-safe: the worker's step loop owns it.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "common/status.h"
#include "kernels/backend.h"
#include "sharding/kv_pool_layout.h"

namespace flotilla {

// The pages one sequence holds: per layer (hidden, then MTP), one table per kind. Pages are
// whole page ids of the pool; a table's i-th page holds its i-th run of units.
struct SequencePageTables {
  struct Layer {
    std::vector<int32_t> main, indexer, window, state;
  };
  std::vector<Layer> layers;
  int64_t tokens = 0;  // the tables cover this many tokens
  int64_t NumPages() const;
};

class KvPool {
 public:
  // A pool of PagesInPool(pool_bytes) pages on `backend`. Errors: no page fits, or the backend
  // cannot reserve the arena.
  static absl::StatusOr<std::unique_ptr<KvPool>> Create(kernels::Backend& backend,
                                                        const KvPoolLayout& layout,
                                                        uint64_t pool_bytes);

  const KvPoolLayout& layout() const { return layout_; }
  int64_t num_pages() const { return num_pages_; }
  int64_t pages_used() const { return num_pages_ - int64_t(free_.size()); }
  int64_t pages_free() const { return int64_t(free_.size()); }

  // Grows `seq`'s tables to cover `tokens` tokens (never shrinks them): all the pages it needs
  // or none. RESOURCE_EXHAUSTED names how many pages were needed and how many are free.
  absl::Status Reserve(int64_t tokens, SequencePageTables* seq);
  // Returns every page of `seq` to the pool and empties its tables.
  void Release(SequencePageTables* seq);
  // Gives an empty sequence's tables the capacity of `tokens` tokens (host memory only: no page
  // is taken), so that growing them later allocates nothing.
  void ReserveTables(int64_t tokens, SequencePageTables* seq) const;

  // The bytes of one page (backend memory).
  kernels::DeviceSpan<uint8_t> Page(int32_t page_id) const;
  // Every page: page p at byte p * layout().page_bytes.
  kernels::DeviceSpan<uint8_t> Pages() const { return pages_; }

 private:
  KvPool(const KvPoolLayout& layout, std::unique_ptr<kernels::Arena> arena,
         kernels::DeviceSpan<uint8_t> pages, int64_t num_pages);
  // Appends `count` free page ids to `table`.
  void Take(int64_t count, std::vector<int32_t>* table);

  KvPoolLayout layout_;
  std::unique_ptr<kernels::Arena> arena_;
  kernels::DeviceSpan<uint8_t> pages_;
  int64_t num_pages_ = 0;
  std::vector<int32_t> free_;  // a stack: the most recently freed page is taken first
};

}  // namespace flotilla
