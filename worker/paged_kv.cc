#include "worker/paged_kv.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/ops.h"
#include "sharding/capacity.h"

namespace flotilla {
namespace {

constexpr int64_t kCsaRatio = 4;

absl::Status FromBackend(const kernels::BackendStatus& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("KV pool: ", s.message()));
}

}  // namespace

void CompressorState::Reset(int64_t rows, int64_t width) {
  kv.assign(rows * width, 0.0f);
  score.assign(rows * width, -std::numeric_limits<float>::infinity());
}

PagedKv::PagedKv(const ModelConfig& config, KvPool* pool, kernels::Backend* backend,
                 kernels::Queue* queue, std::vector<uint8_t>* packed, CompressorState* reset)
    : c_(config),
      pool_(pool),
      backend_(backend),
      queue_(queue),
      main_bytes_(MainKvEntryBytes(config)),
      key_bytes_(IndexerKeyBytes(config)),
      packed_(packed != nullptr ? packed : &own_packed_),
      reset_(reset != nullptr ? reset : &own_reset_) {}

int64_t PagedKv::StateRows(int64_t layer, Compressor which) const {
  const int64_t m = which == Compressor::kIndexer ? kCsaRatio : c_.RatioOf(layer);
  return m == kCsaRatio ? 2 * m : m;
}

int64_t PagedKv::StateWidth(int64_t layer, Compressor which) const {
  const int64_t m = which == Compressor::kIndexer ? kCsaRatio : c_.RatioOf(layer);
  const int64_t d = which == Compressor::kIndexer ? c_.index_head_dim : c_.head_dim;
  return m == kCsaRatio ? 2 * d : d;
}

absl::Status PagedKv::Sync() const { return FromBackend(queue_->Synchronize()); }

absl::Status PagedKv::Put(const std::vector<int32_t>& table, int64_t page0, int64_t unit_bytes,
                          int64_t per_page, int64_t first, int64_t count,
                          const uint8_t* src) const {
  for (int64_t u = first; u < first + count;) {
    const int64_t page = page0 + u / per_page, slot = u % per_page;
    if (page >= int64_t(table.size())) {
      return absl::InternalError(absl::StrCat("KV pool: unit ", u, " needs page ", page,
                                              " of a table of ", table.size(), " pages"));
    }
    const int64_t run = std::min(per_page - slot, first + count - u);
    const kernels::DeviceSpan<uint8_t> dst =
        pool_->Page(table[size_t(page)]).subspan(slot * unit_bytes, run * unit_bytes);
    const std::span<const uint8_t> host(src + (u - first) * unit_bytes, size_t(run * unit_bytes));
    RETURN_IF_ERROR(FromBackend(backend_->Upload<uint8_t>(*queue_, host, dst)));
    u += run;
  }
  return Sync();  // the caller's host bytes may go once this returns
}

absl::Status PagedKv::Get(const std::vector<int32_t>& table, int64_t page0, int64_t unit_bytes,
                          int64_t per_page, int64_t first, int64_t count, uint8_t* dst) const {
  for (int64_t u = first; u < first + count;) {
    const int64_t page = page0 + u / per_page, slot = u % per_page;
    if (page >= int64_t(table.size())) {
      return absl::InternalError(absl::StrCat("KV pool: unit ", u, " needs page ", page,
                                              " of a table of ", table.size(), " pages"));
    }
    const int64_t run = std::min(per_page - slot, first + count - u);
    const kernels::DeviceSpan<const uint8_t> src =
        pool_->Page(table[size_t(page)]).subspan(slot * unit_bytes, run * unit_bytes);
    const std::span<uint8_t> host(dst + (u - first) * unit_bytes, size_t(run * unit_bytes));
    RETURN_IF_ERROR(FromBackend(backend_->Download<uint8_t>(*queue_, src, host)));
    u += run;
  }
  return Sync();
}

namespace {

void PackMain(const ModelConfig& c, int64_t entry_bytes, int64_t count, const bf16* rows,
              std::vector<uint8_t>* out) {
  out->assign(size_t(count * entry_bytes), 0);
  kernels::KvPackParams p;
  p.rows = count;
  p.nope = c.NopeDim();
  p.rope = c.qk_rope_head_dim;
  p.entry_bytes = entry_bytes;
  p.x = rows;
  p.ldx = c.head_dim;
  p.entries = out->data();
  kernels::PackKvEntries(p);
}

void UnpackMain(const ModelConfig& c, int64_t entry_bytes, int64_t count, const uint8_t* entries,
                bf16* rows) {
  kernels::KvUnpackParams p;
  p.rows = count;
  p.nope = c.NopeDim();
  p.rope = c.qk_rope_head_dim;
  p.entry_bytes = entry_bytes;
  p.entries = entries;
  p.x = rows;
  p.ldx = c.head_dim;
  kernels::UnpackKvEntries(p);
}

}  // namespace

absl::Status PagedKv::WriteWindow(const SequencePageTables& t, int64_t layer, int64_t first,
                                  int64_t count, const bf16* rows) const {
  std::vector<uint8_t>& packed = *packed_;
  PackMain(c_, main_bytes_, count, rows, &packed);
  return Put(t.layers[size_t(layer)].window, 0, main_bytes_, pool_->layout().main_per_page, first,
             count, packed.data());
}

absl::Status PagedKv::ReadWindow(const SequencePageTables& t, int64_t layer, bf16* rows) const {
  const int64_t w = c_.sliding_window;
  std::vector<uint8_t>& packed = *packed_;
  packed.resize(size_t(w * main_bytes_));
  RETURN_IF_ERROR(Get(t.layers[size_t(layer)].window, 0, main_bytes_, pool_->layout().main_per_page,
                      0, w, packed.data()));
  UnpackMain(c_, main_bytes_, w, packed.data(), rows);
  return absl::OkStatus();
}

absl::Status PagedKv::WriteMain(const SequencePageTables& t, int64_t layer, int64_t first,
                                int64_t count, const bf16* rows) const {
  std::vector<uint8_t>& packed = *packed_;
  PackMain(c_, main_bytes_, count, rows, &packed);
  return Put(t.layers[size_t(layer)].main, 0, main_bytes_, pool_->layout().main_per_page, first,
             count, packed.data());
}

absl::Status PagedKv::ReadMain(const SequencePageTables& t, int64_t layer, int64_t first,
                               int64_t count, bf16* rows) const {
  std::vector<uint8_t>& packed = *packed_;
  packed.resize(size_t(count * main_bytes_));
  RETURN_IF_ERROR(Get(t.layers[size_t(layer)].main, 0, main_bytes_, pool_->layout().main_per_page,
                      first, count, packed.data()));
  UnpackMain(c_, main_bytes_, count, packed.data(), rows);
  return absl::OkStatus();
}

absl::Status PagedKv::ReadMainAt(const SequencePageTables& t, int64_t layer,
                                 std::span<const int32_t> idx, bf16* rows) const {
  const int64_t n = int64_t(idx.size());
  std::vector<uint8_t>& packed = *packed_;
  packed.resize(size_t(n * main_bytes_));
  for (int64_t i = 0; i < n;) {  // runs of consecutive entries
    int64_t j = i + 1;
    while (j < n && idx[size_t(j)] == idx[size_t(j - 1)] + 1) ++j;
    RETURN_IF_ERROR(Get(t.layers[size_t(layer)].main, 0, main_bytes_, pool_->layout().main_per_page,
                        idx[size_t(i)], j - i, packed.data() + i * main_bytes_));
    i = j;
  }
  UnpackMain(c_, main_bytes_, n, packed.data(), rows);
  return absl::OkStatus();
}

absl::Status PagedKv::WriteKeys(const SequencePageTables& t, int64_t layer, int64_t first,
                                int64_t count, const bf16* rows) const {
  std::vector<uint8_t>& packed = *packed_;
  packed.assign(size_t(count * key_bytes_), 0);
  kernels::KvPackParams p;
  p.rows = count;
  p.nope = c_.index_head_dim;
  p.entry_bytes = key_bytes_;
  p.x = rows;
  p.ldx = c_.index_head_dim;
  p.entries = packed.data();
  kernels::PackIndexerKeys(p);
  return Put(t.layers[size_t(layer)].indexer, 0, key_bytes_, pool_->layout().keys_per_page, first,
             count, packed.data());
}

absl::Status PagedKv::ReadKeys(const SequencePageTables& t, int64_t layer, int64_t first,
                               int64_t count, bf16* rows) const {
  std::vector<uint8_t>& packed = *packed_;
  packed.resize(size_t(count * key_bytes_));
  RETURN_IF_ERROR(Get(t.layers[size_t(layer)].indexer, 0, key_bytes_, pool_->layout().keys_per_page,
                      first, count, packed.data()));
  kernels::KvUnpackParams p;
  p.rows = count;
  p.nope = c_.index_head_dim;
  p.entry_bytes = key_bytes_;
  p.entries = packed.data();
  p.x = rows;
  p.ldx = c_.index_head_dim;
  kernels::UnpackIndexerKeys(p);
  return absl::OkStatus();
}

// Rows of a compressor's state: kv rows [0, R), score rows [R, 2R), each `width` f32, whole
// rows per page, from table page `page0` (the indexer's after the main compressor's pages).
absl::Status PagedKv::StateIo(const SequencePageTables& t, int64_t layer, Compressor which,
                              CompressorState* in, const CompressorState* out, int64_t first,
                              int64_t count) const {
  const int64_t rows = StateRows(layer, which), width = StateWidth(layer, which);
  const int64_t row_bytes = width * int64_t(sizeof(float));
  const int64_t per_page = pool_->layout().page_bytes / row_bytes;
  const int64_t page0 = which == Compressor::kIndexer ? pool_->layout().csa_state_pages : 0;
  const std::vector<int32_t>& table = t.layers[size_t(layer)].state;
  if (in != nullptr) {
    in->kv.resize(size_t(rows * width));
    in->score.resize(size_t(rows * width));
    RETURN_IF_ERROR(Get(table, page0, row_bytes, per_page, first, count,
                        reinterpret_cast<uint8_t*>(in->kv.data() + first * width)));
    return Get(table, page0, row_bytes, per_page, rows + first, count,
               reinterpret_cast<uint8_t*>(in->score.data() + first * width));
  }
  RETURN_IF_ERROR(Put(table, page0, row_bytes, per_page, first, count,
                      reinterpret_cast<const uint8_t*>(out->kv.data() + first * width)));
  return Put(table, page0, row_bytes, per_page, rows + first, count,
             reinterpret_cast<const uint8_t*>(out->score.data() + first * width));
}

absl::Status PagedKv::ReadState(const SequencePageTables& t, int64_t layer, Compressor which,
                                CompressorState* st) const {
  return StateIo(t, layer, which, st, nullptr, 0, StateRows(layer, which));
}

absl::Status PagedKv::WriteState(const SequencePageTables& t, int64_t layer, Compressor which,
                                 const CompressorState& st) const {
  return StateIo(t, layer, which, nullptr, &st, 0, StateRows(layer, which));
}

absl::Status PagedKv::WriteStateRows(const SequencePageTables& t, int64_t layer, Compressor which,
                                     const CompressorState& st, int64_t first,
                                     int64_t count) const {
  return StateIo(t, layer, which, nullptr, &st, first, count);
}

absl::Status PagedKv::ResetStates(const SequencePageTables& t) const {
  for (int64_t layer = 0; layer < int64_t(t.layers.size()); ++layer) {
    const int64_t m = c_.RatioOf(layer);
    if (m == 0) continue;
    CompressorState& st = *reset_;
    st.Reset(StateRows(layer, Compressor::kMain), StateWidth(layer, Compressor::kMain));
    RETURN_IF_ERROR(WriteState(t, layer, Compressor::kMain, st));
    if (m != kCsaRatio) continue;
    st.Reset(StateRows(layer, Compressor::kIndexer), StateWidth(layer, Compressor::kIndexer));
    RETURN_IF_ERROR(WriteState(t, layer, Compressor::kIndexer, st));
  }
  return absl::OkStatus();
}

}  // namespace flotilla
