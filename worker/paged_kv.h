// One sequence's KV as the model reads and writes it: through its page tables in the worker's
// KvPool, in the packed layout of spec §8.2 (docs/capacity.md §6).
//   window   ring slot s (position mod sliding_window) = unit s of the window table, packed main
//            entries (PackKvEntries)
//   main     compressed entry j = unit j of the main table, packed main entries
//   indexer  indexer key j = unit j of the indexer table, packed keys (PackIndexerKeys)
//   state    the compressors' unfinished blocks: f32 rows, kv rows then score rows, whole rows
//            per page; the main compressor's pages first, then (CSA) its indexer's
// Rows written are rows that went through the QAT rounding (FP8 non-RoPE dims, FP4 indexer
// keys), so what is read back is bitwise what was written. Packing runs on the host and the
// packed bytes move to and from the pool with the backend's Upload / Download on one queue; the
// calls that read synchronize before they return.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/dtype.h"
#include "common/model_config.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "worker/kv_pool.h"

namespace flotilla {

// Compressor state of one sequence and layer (spec §6) as the model works on it on the host:
// `rows` slots of `width` channels; kv = 0 and score = -inf at sequence start.
struct CompressorState {
  std::vector<float> kv, score;
  void Reset(int64_t rows, int64_t width);
};

class PagedKv {
 public:
  // `packed` and `reset` (may be null: the object keeps its own) hold the packed bytes moving to
  // and from the pool and the start state ResetStates writes; reserved by the owner (the step
  // workspace), they make no call allocate.
  PagedKv(const ModelConfig& config, KvPool* pool, kernels::Backend* backend, kernels::Queue* queue,
          std::vector<uint8_t>* packed = nullptr, CompressorState* reset = nullptr);

  // Which compressor of a layer: the main one, or the CSA indexer's.
  enum class Compressor { kMain, kIndexer };
  // Rows and width of a compressor's state: overlapping (ratio 4) 2m rows of 2d, else m of d.
  int64_t StateRows(int64_t layer, Compressor which) const;
  int64_t StateWidth(int64_t layer, Compressor which) const;

  // Window ring slots [first, first + count) (no wrap) from / to rows of head_dim bf16.
  absl::Status WriteWindow(const SequencePageTables& t, int64_t layer, int64_t first, int64_t count,
                           const bf16* rows) const;
  // The whole ring, [sliding_window, head_dim].
  absl::Status ReadWindow(const SequencePageTables& t, int64_t layer, bf16* rows) const;

  // Compressed main entries [first, first + count).
  absl::Status WriteMain(const SequencePageTables& t, int64_t layer, int64_t first, int64_t count,
                         const bf16* rows) const;
  absl::Status ReadMain(const SequencePageTables& t, int64_t layer, int64_t first, int64_t count,
                        bf16* rows) const;
  // Entries idx[i] (increasing) into rows i.
  absl::Status ReadMainAt(const SequencePageTables& t, int64_t layer, std::span<const int32_t> idx,
                          bf16* rows) const;

  // Indexer keys [first, first + count), rows of index_head_dim bf16.
  absl::Status WriteKeys(const SequencePageTables& t, int64_t layer, int64_t first, int64_t count,
                         const bf16* rows) const;
  absl::Status ReadKeys(const SequencePageTables& t, int64_t layer, int64_t first, int64_t count,
                        bf16* rows) const;

  // The whole state of a compressor, or (WriteStateRows) only its rows [first, first + count).
  absl::Status ReadState(const SequencePageTables& t, int64_t layer, Compressor which,
                         CompressorState* st) const;
  absl::Status WriteState(const SequencePageTables& t, int64_t layer, Compressor which,
                          const CompressorState& st) const;
  absl::Status WriteStateRows(const SequencePageTables& t, int64_t layer, Compressor which,
                              const CompressorState& st, int64_t first, int64_t count) const;
  // Sets every compressor state of a sequence to its start (kv 0, score -inf).
  absl::Status ResetStates(const SequencePageTables& t) const;

 private:
  // Units [first, first + count) of `unit_bytes` each, `per_page` to a page of `table` starting
  // at table page `page0`, to / from host bytes.
  absl::Status Put(const std::vector<int32_t>& table, int64_t page0, int64_t unit_bytes,
                   int64_t per_page, int64_t first, int64_t count, const uint8_t* src) const;
  absl::Status Get(const std::vector<int32_t>& table, int64_t page0, int64_t unit_bytes,
                   int64_t per_page, int64_t first, int64_t count, uint8_t* dst) const;
  absl::Status StateIo(const SequencePageTables& t, int64_t layer, Compressor which,
                       CompressorState* in, const CompressorState* out, int64_t first,
                       int64_t count) const;
  absl::Status Sync() const;

  const ModelConfig& c_;
  KvPool* pool_;
  kernels::Backend* backend_;
  kernels::Queue* queue_;
  int64_t main_bytes_ = 0, key_bytes_ = 0;
  std::vector<uint8_t> own_packed_;
  CompressorState own_reset_;
  std::vector<uint8_t>* packed_;
  CompressorState* reset_;
};

}  // namespace flotilla
