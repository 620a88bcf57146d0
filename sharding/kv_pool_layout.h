// Page arithmetic of a worker's paged KV pool (spec §8.2 packed layout; docs/capacity.md).
//
// One pool of fixed-size pages, sized when the worker starts. Every page holds units of one
// kind, never straddling a page:
//   main     compressed main entries of one compressing layer (MainKvEntryBytes: V4-Flash 584 B)
//   indexer  indexer keys of one CSA layer (IndexerKeyBytes: V4-Flash 68 B)
//   window   one layer's sliding-window ring, `sliding_window` packed main entries
//   state    one compressor's unfinished-block state, f32 kv and score rows
// A sequence holds, per layer, one page table per kind it uses. After T tokens a layer of ratio
// m holds floor(T / m) main entries (and floor(T / 4) indexer keys when it is CSA), so
//   pages(T) = Σ_layers ceil(entries / per_page) + the fixed pages (rings and states, T = 0).
// MTP layers are counted like the others. The coordinator's admission, the workers' pools and
// `flotilla plan` all count pages with this one struct.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/model_config.h"
#include "common/status.h"

namespace flotilla {

struct KvPoolLayout {
  int64_t page_bytes = 0;
  int64_t main_entry_bytes = 0, index_key_bytes = 0;
  int64_t main_per_page = 0;  // floor(page_bytes / main_entry_bytes)
  int64_t keys_per_page = 0;  // floor(page_bytes / index_key_bytes)
  int64_t window_pages = 0;   // one layer's ring: ceil(sliding_window / main_per_page)
  // Pages of one compressor's state: f32 kv and score rows, whole rows per page. CSA (m = 4,
  // overlapping): 2 x 2m rows of 2 x head_dim, its indexer's 2 x 2m rows of 2 x index_head_dim;
  // other ratios m: 2 x m rows of head_dim.
  int64_t csa_state_pages = 0, indexer_state_pages = 0;

  // INVALID_ARGUMENT when a page cannot hold one main entry, one indexer key or one state row
  // (the error names which and its size).
  static absl::StatusOr<KvPoolLayout> Make(const ModelConfig& config, int64_t page_bytes);

  // Pages one sequence holds after `tokens` tokens, by kind.
  struct Pages {
    int64_t main = 0, indexer = 0, window = 0, state = 0;
    int64_t Growing() const { return main + indexer; }
    int64_t Fixed() const { return window + state; }
    int64_t Total() const { return Growing() + Fixed(); }
  };
  Pages SequencePages(int64_t tokens) const;
  // The same for one layer (hidden layers 0.., then the MTP layers); the sum over layers is
  // SequencePages.
  Pages LayerPages(int64_t layer, int64_t tokens) const;
  int64_t num_layers() const { return int64_t(ratios_.size()); }

  // Pages of a pool of `pool_bytes`; page ids are int32, so at most INT32_MAX.
  int64_t PagesInPool(uint64_t pool_bytes) const {
    return int64_t(std::min<uint64_t>(pool_bytes / uint64_t(page_bytes), INT32_MAX));
  }

  // The longest context one sequence reaches in `pages` pages: the largest T <= cap with
  // SequencePages(T).Total() <= pages; -1 when not even an empty sequence fits.
  int64_t LongestContext(int64_t pages, int64_t cap) const;

  // Pool bytes per token once the fixed pages are amortised (page overhead included), to set
  // against KvBytesPerTokenAsymptotic.
  double BytesPerTokenAsymptotic() const;

 private:
  // Per layer (hidden and MTP): its ratio (0: window only) and its compressors' state pages.
  std::vector<int64_t> ratios_, state_pages_;
};

}  // namespace flotilla
