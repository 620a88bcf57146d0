#include "sharding/kv_pool_layout.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "sharding/capacity.h"

namespace flotilla {
namespace {

constexpr int64_t kCsaRatio = 4;  // ratio 4 = CSA (overlapping compressor + indexer keys)
constexpr int64_t kF32 = 4;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Pages of `rows` rows of `row_bytes`, whole rows per page; -1 when a row exceeds a page.
int64_t RowPages(int64_t rows, int64_t row_bytes, int64_t page_bytes) {
  if (row_bytes > page_bytes) return -1;
  return CeilDiv(rows, page_bytes / row_bytes);
}

}  // namespace

absl::StatusOr<KvPoolLayout> KvPoolLayout::Make(const ModelConfig& c, int64_t page_bytes) {
  KvPoolLayout l;
  l.page_bytes = page_bytes;
  l.main_entry_bytes = MainKvEntryBytes(c);
  l.index_key_bytes = IndexerKeyBytes(c);
  const auto too_small = [&](const char* what, int64_t bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV page of ", page_bytes, " bytes cannot hold one ", what, " of ", bytes,
                     " bytes; expected pages of at least ", bytes, " bytes"));
  };
  if (page_bytes < l.main_entry_bytes) return too_small("main KV entry", l.main_entry_bytes);
  if (page_bytes < l.index_key_bytes) return too_small("indexer key", l.index_key_bytes);
  l.main_per_page = page_bytes / l.main_entry_bytes;
  l.keys_per_page = page_bytes / l.index_key_bytes;
  l.window_pages = CeilDiv(c.sliding_window, l.main_per_page);

  const int64_t hd = c.head_dim, ihd = c.index_head_dim;
  const int64_t num_layers = c.num_hidden_layers + c.num_nextn_predict_layers;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    const int64_t m = c.RatioOf(layer);
    int64_t state = 0;
    if (m == kCsaRatio) {
      l.csa_state_pages = RowPages(2 * 2 * m, 2 * hd * kF32, page_bytes);
      l.indexer_state_pages = RowPages(2 * 2 * m, 2 * ihd * kF32, page_bytes);
      if (l.csa_state_pages < 0) return too_small("CSA compressor state row", 2 * hd * kF32);
      if (l.indexer_state_pages < 0) {
        return too_small("indexer compressor state row", 2 * ihd * kF32);
      }
      state = l.csa_state_pages + l.indexer_state_pages;
    } else if (m > 0) {
      state = RowPages(2 * m, hd * kF32, page_bytes);
      if (state < 0) return too_small("compressor state row", hd * kF32);
    }
    l.ratios_.push_back(m);
    l.state_pages_.push_back(state);
  }
  return l;
}

KvPoolLayout::Pages KvPoolLayout::LayerPages(int64_t layer, int64_t tokens) const {
  FLOTILLA_CHECK(tokens >= 0 && layer >= 0 && layer < num_layers());
  Pages p;
  const int64_t m = ratios_[size_t(layer)];
  p.window = window_pages;
  p.state = state_pages_[size_t(layer)];
  if (m == 0) return p;
  p.main = CeilDiv(tokens / m, main_per_page);
  if (m == kCsaRatio) p.indexer = CeilDiv(tokens / m, keys_per_page);
  return p;
}

KvPoolLayout::Pages KvPoolLayout::SequencePages(int64_t tokens) const {
  Pages total;
  for (int64_t layer = 0; layer < num_layers(); ++layer) {
    const Pages p = LayerPages(layer, tokens);
    total.main += p.main;
    total.indexer += p.indexer;
    total.window += p.window;
    total.state += p.state;
  }
  return total;
}

int64_t KvPoolLayout::LongestContext(int64_t pages, int64_t cap) const {
  if (SequencePages(0).Total() > pages) return -1;
  // Total() is non-decreasing in T: bisection for the last T that fits.
  int64_t lo = 0, hi = cap;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (SequencePages(mid).Total() <= pages) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

double KvPoolLayout::BytesPerTokenAsymptotic() const {
  double total = 0;
  for (const int64_t m : ratios_) {
    if (m == 0) continue;
    total += double(page_bytes) / double(main_per_page) / double(m);
    if (m == kCsaRatio) total += double(page_bytes) / double(keys_per_page) / double(m);
  }
  return total;
}

}  // namespace flotilla
