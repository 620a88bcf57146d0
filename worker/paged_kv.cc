#include "worker/paged_kv.h"

#include <algorithm>
#include <limits>
#include <span>

#include "absl/strings/str_cat.h"
#include "sharding/capacity.h"

namespace flotilla {
namespace {

constexpr int64_t kCsaRatio = 4;

absl::Status FromBackend(const kernels::BackendStatus& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("KV pool: ", s.message()));
}

#define RETURN_IF_KV_ERROR(expr) RETURN_IF_ERROR(FromBackend(expr))

// Calls fn(page span, byte offset in the units' bytes) for each run of units [first, first +
// count) inside one page of `table` (units of unit_bytes, per_page to a page, from table page
// page0).
template <typename Fn>
absl::Status ForEachRun(const KvPool& pool, const std::vector<int32_t>& table, int64_t page0,
                        int64_t unit_bytes, int64_t per_page, int64_t first, int64_t count, Fn fn) {
  for (int64_t u = first; u < first + count;) {
    const int64_t page = page0 + u / per_page, slot = u % per_page;
    if (page >= int64_t(table.size())) {
      return absl::InternalError(absl::StrCat("KV pool: unit ", u, " needs page ", page,
                                              " of a table of ", table.size(), " pages"));
    }
    const int64_t run = std::min(per_page - slot, first + count - u);
    RETURN_IF_ERROR(fn(pool.Page(table[size_t(page)]).subspan(slot * unit_bytes, run * unit_bytes),
                       (u - first) * unit_bytes));
    u += run;
  }
  return absl::OkStatus();
}

kernels::KvPackArgs MainPack(const ModelConfig& c, int64_t entry_bytes, int64_t count,
                             kernels::In<bf16> rows, kernels::Out<uint8_t> entries) {
  return {.rows = count,
          .nope = c.NopeDim(),
          .rope = c.qk_rope_head_dim,
          .entry_bytes = entry_bytes,
          .x = rows,
          .ldx = c.head_dim,
          .entries = entries};
}

kernels::KvUnpackArgs MainUnpack(const ModelConfig& c, int64_t entry_bytes, int64_t count,
                                 kernels::In<uint8_t> entries, kernels::Out<bf16> rows) {
  return {.rows = count,
          .nope = c.NopeDim(),
          .rope = c.qk_rope_head_dim,
          .entry_bytes = entry_bytes,
          .entries = entries,
          .x = rows,
          .ldx = c.head_dim};
}

}  // namespace

PagedKv::PagedKv(const ModelConfig& config, KvPool* pool, kernels::Backend* backend,
                 kernels::Queue* queue, kernels::Out<uint8_t> packed,
                 kernels::Out<int32_t> page_ids)
    : c_(config),
      pool_(pool),
      backend_(backend),
      queue_(queue),
      main_bytes_(MainKvEntryBytes(config)),
      key_bytes_(IndexerKeyBytes(config)),
      packed_(packed),
      page_ids_(page_ids) {}

int64_t PagedKv::StateRows(int64_t layer, Compressor which) const {
  const int64_t m = which == Compressor::kIndexer ? kCsaRatio : c_.RatioOf(layer);
  return m == kCsaRatio ? 2 * m : m;
}

int64_t PagedKv::StateWidth(int64_t layer, Compressor which) const {
  const int64_t m = which == Compressor::kIndexer ? kCsaRatio : c_.RatioOf(layer);
  const int64_t d = which == Compressor::kIndexer ? c_.index_head_dim : c_.head_dim;
  return m == kCsaRatio ? 2 * d : d;
}

absl::Status PagedKv::Packed(int64_t bytes, kernels::Out<uint8_t>* out) const {
  if (bytes > packed_.size()) {
    return absl::InternalError(
        absl::StrCat("KV pool: ", bytes, " packed bytes for a workspace of ", packed_.size()));
  }
  *out = packed_.first(bytes);
  return absl::OkStatus();
}

absl::Status PagedKv::ToPool(const std::vector<int32_t>& table, int64_t page0, int64_t unit_bytes,
                             int64_t per_page, int64_t first, int64_t count,
                             kernels::In<uint8_t> src) const {
  return ForEachRun(
      *pool_, table, page0, unit_bytes, per_page, first, count,
      [&](kernels::Out<uint8_t> page, int64_t offset) {
        return FromBackend(backend_->Copy(*queue_, src.subspan(offset, page.size()), page));
      });
}

absl::Status PagedKv::FromPool(const std::vector<int32_t>& table, int64_t page0, int64_t unit_bytes,
                               int64_t per_page, int64_t first, int64_t count,
                               kernels::Out<uint8_t> dst) const {
  return ForEachRun(*pool_, table, page0, unit_bytes, per_page, first, count,
                    [&](kernels::Out<uint8_t> page, int64_t offset) {
                      return FromBackend(backend_->Copy(*queue_, kernels::In<uint8_t>(page),
                                                        dst.subspan(offset, page.size())));
                    });
}

absl::Status PagedKv::WriteWindow(const SequencePageTables& t, int64_t layer, int64_t first,
                                  int64_t count, kernels::In<bf16> rows) const {
  kernels::Out<uint8_t> packed;
  RETURN_IF_ERROR(Packed(count * main_bytes_, &packed));
  RETURN_IF_KV_ERROR(
      backend_->PackKvEntries(*queue_, MainPack(c_, main_bytes_, count, rows, packed)));
  return ToPool(t.layers[size_t(layer)].window, 0, main_bytes_, pool_->layout().main_per_page,
                first, count, packed);
}

absl::Status PagedKv::ReadWindow(const SequencePageTables& t, int64_t layer,
                                 kernels::Out<bf16> rows) const {
  const int64_t w = c_.sliding_window;
  kernels::Out<uint8_t> packed;
  RETURN_IF_ERROR(Packed(w * main_bytes_, &packed));
  RETURN_IF_ERROR(FromPool(t.layers[size_t(layer)].window, 0, main_bytes_,
                           pool_->layout().main_per_page, 0, w, packed));
  return FromBackend(
      backend_->UnpackKvEntries(*queue_, MainUnpack(c_, main_bytes_, w, packed, rows)));
}

absl::Status PagedKv::WriteMain(const SequencePageTables& t, int64_t layer, int64_t first,
                                int64_t count, kernels::In<bf16> rows) const {
  kernels::Out<uint8_t> packed;
  RETURN_IF_ERROR(Packed(count * main_bytes_, &packed));
  RETURN_IF_KV_ERROR(
      backend_->PackKvEntries(*queue_, MainPack(c_, main_bytes_, count, rows, packed)));
  return ToPool(t.layers[size_t(layer)].main, 0, main_bytes_, pool_->layout().main_per_page, first,
                count, packed);
}

absl::Status PagedKv::ReadMain(const SequencePageTables& t, int64_t layer, int64_t first,
                               int64_t count, kernels::Out<bf16> rows) const {
  kernels::Out<uint8_t> packed;
  RETURN_IF_ERROR(Packed(count * main_bytes_, &packed));
  RETURN_IF_ERROR(FromPool(t.layers[size_t(layer)].main, 0, main_bytes_,
                           pool_->layout().main_per_page, first, count, packed));
  return FromBackend(
      backend_->UnpackKvEntries(*queue_, MainUnpack(c_, main_bytes_, count, packed, rows)));
}

absl::Status PagedKv::ReadMainAt(const SequencePageTables& t, int64_t layer,
                                 kernels::In<int32_t> idx, kernels::In<int32_t> count,
                                 int64_t max_rows, kernels::Out<bf16> rows) const {
  if (max_rows == 0) return absl::OkStatus();
  // The host table stays unchanged until the step's end, when the queue is synchronized (the
  // Upload contract).
  const std::vector<int32_t>& table = t.layers[size_t(layer)].main;
  if (int64_t(table.size()) > page_ids_.size()) {
    return absl::InternalError(absl::StrCat("KV pool: a main table of ", table.size(),
                                            " pages for a workspace of ", page_ids_.size()));
  }
  const kernels::Out<int32_t> ids = page_ids_.first(int64_t(table.size()));
  RETURN_IF_KV_ERROR(backend_->Upload(*queue_, std::span<const int32_t>(table), ids));
  const KvPoolLayout& l = pool_->layout();
  return FromBackend(backend_->UnpackKvEntriesPaged(*queue_, {.pool = pool_->Pages(),
                                                              .page_bytes = l.page_bytes,
                                                              .per_page = l.main_per_page,
                                                              .page_ids = ids,
                                                              .units = idx,
                                                              .count = count,
                                                              .max_rows = max_rows,
                                                              .nope = c_.NopeDim(),
                                                              .rope = c_.qk_rope_head_dim,
                                                              .entry_bytes = main_bytes_,
                                                              .x = rows,
                                                              .ldx = c_.head_dim}));
}

absl::Status PagedKv::WriteKeys(const SequencePageTables& t, int64_t layer, int64_t first,
                                int64_t count, kernels::In<bf16> rows) const {
  kernels::Out<uint8_t> packed;
  RETURN_IF_ERROR(Packed(count * key_bytes_, &packed));
  RETURN_IF_KV_ERROR(backend_->PackIndexerKeys(*queue_, {.rows = count,
                                                         .nope = c_.index_head_dim,
                                                         .entry_bytes = key_bytes_,
                                                         .x = rows,
                                                         .ldx = c_.index_head_dim,
                                                         .entries = packed}));
  return ToPool(t.layers[size_t(layer)].indexer, 0, key_bytes_, pool_->layout().keys_per_page,
                first, count, packed);
}

absl::Status PagedKv::ReadKeys(const SequencePageTables& t, int64_t layer, int64_t first,
                               int64_t count, kernels::Out<bf16> rows) const {
  kernels::Out<uint8_t> packed;
  RETURN_IF_ERROR(Packed(count * key_bytes_, &packed));
  RETURN_IF_ERROR(FromPool(t.layers[size_t(layer)].indexer, 0, key_bytes_,
                           pool_->layout().keys_per_page, first, count, packed));
  return FromBackend(backend_->UnpackIndexerKeys(*queue_, {.rows = count,
                                                           .nope = c_.index_head_dim,
                                                           .entry_bytes = key_bytes_,
                                                           .entries = packed,
                                                           .x = rows,
                                                           .ldx = c_.index_head_dim}));
}

// Rows of a compressor's state: kv rows [0, R), score rows [R, 2R), each `width` f32, whole
// rows per page, from table page `page0` (the indexer's after the main compressor's pages).
absl::Status PagedKv::ReadState(const SequencePageTables& t, int64_t layer, Compressor which,
                                kernels::Out<float> kv, kernels::Out<float> score) const {
  const int64_t rows = StateRows(layer, which), width = StateWidth(layer, which);
  const int64_t row_bytes = width * int64_t(sizeof(float));
  const int64_t per_page = pool_->layout().page_bytes / row_bytes;
  const int64_t page0 = which == Compressor::kIndexer ? pool_->layout().csa_state_pages : 0;
  const std::vector<int32_t>& table = t.layers[size_t(layer)].state;
  RETURN_IF_ERROR(FromPool(table, page0, row_bytes, per_page, 0, rows,
                           kv.first(rows * width).as_writable_bytes()));
  return FromPool(table, page0, row_bytes, per_page, rows, rows,
                  score.first(rows * width).as_writable_bytes());
}

absl::Status PagedKv::WriteStateRows(const SequencePageTables& t, int64_t layer, Compressor which,
                                     kernels::In<float> kv, kernels::In<float> score, int64_t first,
                                     int64_t count) const {
  const int64_t rows = StateRows(layer, which), width = StateWidth(layer, which);
  const int64_t row_bytes = width * int64_t(sizeof(float));
  const int64_t per_page = pool_->layout().page_bytes / row_bytes;
  const int64_t page0 = which == Compressor::kIndexer ? pool_->layout().csa_state_pages : 0;
  const std::vector<int32_t>& table = t.layers[size_t(layer)].state;
  RETURN_IF_ERROR(ToPool(table, page0, row_bytes, per_page, first, count,
                         kv.subspan(first * width, count * width).as_bytes()));
  return ToPool(table, page0, row_bytes, per_page, rows + first, count,
                score.subspan(first * width, count * width).as_bytes());
}

absl::Status PagedKv::WriteState(const SequencePageTables& t, int64_t layer, Compressor which,
                                 kernels::In<float> kv, kernels::In<float> score) const {
  return WriteStateRows(t, layer, which, kv, score, 0, StateRows(layer, which));
}

absl::Status PagedKv::ResetStates(const SequencePageTables& t, kernels::Out<float> kv,
                                  kernels::Out<float> score) const {
  bool filled = false;
  for (int64_t layer = 0; layer < int64_t(t.layers.size()); ++layer) {
    const int64_t m = c_.RatioOf(layer);
    if (m == 0) continue;
    if (!filled) {  // the widest state of any layer fits the scratch (the workspace's layout)
      RETURN_IF_KV_ERROR(backend_->Fill(*queue_, kv, 0.0f));
      RETURN_IF_KV_ERROR(backend_->Fill(*queue_, score, -std::numeric_limits<float>::infinity()));
      filled = true;
    }
    RETURN_IF_ERROR(WriteState(t, layer, Compressor::kMain, kv, score));
    if (m != kCsaRatio) continue;
    RETURN_IF_ERROR(WriteState(t, layer, Compressor::kIndexer, kv, score));
  }
  return absl::OkStatus();
}

}  // namespace flotilla
