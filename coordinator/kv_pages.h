// KV page arithmetic of admission (design.md §5; spec §8.2 packed layout; sharding/capacity.h).
//
// A page holds `page_tokens` tokens' worth of what grows with the context: the compressed main
// entries of every compressing layer and the indexer keys of every CSA layer (MTP layers
// included). Its size comes from the per-token rates, rounded up to a byte:
//   page_bytes = ceil(page_tokens x sum over layers of (main_entry / ratio [+ indexer_key / 4]))
// (V4-Flash, 256 tokens: 256 x 3,514.25 = 899,648 B). What does not grow — the sliding-window
// rings, the MTP window and the compressors' unfinished-block state — is reserved per sequence as
// whole pages too (`fixed_pages`). A request of T positions reserves
//   PagesFor(T) = fixed_pages + ceil(T / page_tokens)
// which is never less than SequenceKvBytesAt(T).Total(): floor(T / ratio) entries never exceed
// T / ratio of an entry. The coordinator only counts pages; the workers own the memory.
#pragma once

#include <cstdint>

#include "common/model_config.h"
#include "common/status.h"

namespace flotilla {

struct KvPageGeometry {
  int64_t page_tokens = 0;
  uint64_t page_bytes = 0;   // compressed entries + indexer keys of page_tokens tokens
  uint64_t fixed_bytes = 0;  // per sequence: windows + MTP window + compressor state
  int64_t fixed_pages = 0;   // ceil(fixed_bytes / page_bytes)

  // INVALID_ARGUMENT for page_tokens < 1 or a config in which nothing grows with the context
  // (no compressing layer: a page would be empty).
  static absl::StatusOr<KvPageGeometry> Make(const ModelConfig& config, int64_t page_tokens);

  int64_t PagesFor(int64_t tokens) const {
    return fixed_pages + (tokens + page_tokens - 1) / page_tokens;
  }
  uint64_t ReservationBytes(int64_t tokens) const {
    return uint64_t(PagesFor(tokens)) * page_bytes;
  }
  int64_t PagesInPool(uint64_t pool_bytes) const { return int64_t(pool_bytes / page_bytes); }
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
