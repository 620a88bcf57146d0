#include "worker/kv_pool.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"

namespace flotilla {

int64_t SequencePageTables::NumPages() const {
  int64_t n = 0;
  for (const Layer& l : layers) {
    n += int64_t(l.main.size() + l.indexer.size() + l.window.size() + l.state.size());
  }
  return n;
}

absl::StatusOr<std::unique_ptr<KvPool>> KvPool::Create(kernels::Backend& backend,
                                                       const KvPoolLayout& layout,
                                                       uint64_t pool_bytes) {
  const int64_t num_pages = std::min<int64_t>(layout.PagesInPool(pool_bytes), INT32_MAX);
  if (num_pages < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a KV pool of ", pool_bytes, " bytes holds no page of ", layout.page_bytes, " bytes"));
  }
  const int64_t bytes = num_pages * layout.page_bytes;
  kernels::BackendResult<std::unique_ptr<kernels::Arena>> arena =
      backend.NewArena("kv-pool", bytes);
  if (!arena.ok()) return absl::ResourceExhaustedError(arena.status().message());
  kernels::BackendResult<kernels::DeviceSpan<uint8_t>> pages =
      arena.value()->Allocate<uint8_t>(bytes);
  if (!pages.ok()) return absl::InternalError(pages.status().message());
  return std::unique_ptr<KvPool>(
      new KvPool(layout, std::move(arena.value()), pages.value(), num_pages));
}

KvPool::KvPool(const KvPoolLayout& layout, std::unique_ptr<kernels::Arena> arena,
               kernels::DeviceSpan<uint8_t> pages, int64_t num_pages)
    : layout_(layout), arena_(std::move(arena)), pages_(pages), num_pages_(num_pages) {
  free_.reserve(size_t(num_pages));
  for (int64_t i = num_pages - 1; i >= 0; --i) free_.push_back(int32_t(i));  // page 0 first
}

void KvPool::Take(int64_t count, std::vector<int32_t>* table) {
  for (int64_t i = 0; i < count; ++i) {
    table->push_back(free_.back());
    free_.pop_back();
  }
}

absl::Status KvPool::Reserve(int64_t tokens, SequencePageTables* seq) {
  if (tokens < 0) return absl::InvalidArgumentError(absl::StrCat("tokens is ", tokens));
  if (seq->layers.empty()) seq->layers.resize(size_t(layout_.num_layers()));
  if (int64_t(seq->layers.size()) != layout_.num_layers()) {
    return absl::InvalidArgumentError(absl::StrCat("page tables of ", seq->layers.size(),
                                                   " layers for a pool of ", layout_.num_layers(),
                                                   " layers"));
  }
  // Count first, so that a reservation takes all its pages or none.
  const auto grow = [](int64_t want, const std::vector<int32_t>& have) {
    return std::max<int64_t>(0, want - int64_t(have.size()));
  };
  int64_t need = 0;
  for (int64_t l = 0; l < layout_.num_layers(); ++l) {
    const KvPoolLayout::Pages p = layout_.LayerPages(l, tokens);
    const SequencePageTables::Layer& t = seq->layers[size_t(l)];
    need += grow(p.main, t.main) + grow(p.indexer, t.indexer) + grow(p.window, t.window) +
            grow(p.state, t.state);
  }
  if (need > pages_free()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV pool: ", need, " more pages needed to hold ", tokens, " tokens, ",
                     pages_free(), " of ", num_pages_, " free"));
  }
  for (int64_t l = 0; l < layout_.num_layers(); ++l) {
    const KvPoolLayout::Pages p = layout_.LayerPages(l, tokens);
    SequencePageTables::Layer& t = seq->layers[size_t(l)];
    Take(grow(p.window, t.window), &t.window);
    Take(grow(p.state, t.state), &t.state);
    Take(grow(p.main, t.main), &t.main);
    Take(grow(p.indexer, t.indexer), &t.indexer);
  }
  seq->tokens = std::max(seq->tokens, tokens);
  return absl::OkStatus();
}

void KvPool::ReserveTables(int64_t tokens, SequencePageTables* seq) const {
  if (seq->layers.empty()) seq->layers.resize(size_t(layout_.num_layers()));
  for (int64_t l = 0; l < int64_t(seq->layers.size()) && l < layout_.num_layers(); ++l) {
    const KvPoolLayout::Pages p = layout_.LayerPages(l, tokens);
    SequencePageTables::Layer& t = seq->layers[size_t(l)];
    t.main.reserve(size_t(p.main));
    t.indexer.reserve(size_t(p.indexer));
    t.window.reserve(size_t(p.window));
    t.state.reserve(size_t(p.state));
  }
}

void KvPool::Release(SequencePageTables* seq) {
  for (SequencePageTables::Layer& t : seq->layers) {
    for (std::vector<int32_t>* table : {&t.main, &t.indexer, &t.window, &t.state}) {
      free_.insert(free_.end(), table->rbegin(), table->rend());
      table->clear();
    }
  }
  seq->layers.clear();
  seq->tokens = 0;
}

kernels::DeviceSpan<uint8_t> KvPool::Page(int32_t page_id) const {
  FLOTILLA_CHECK(page_id >= 0 && page_id < num_pages_);
  return pages_.subspan(int64_t(page_id) * layout_.page_bytes, layout_.page_bytes);
}

}  // namespace flotilla
