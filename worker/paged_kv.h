// One sequence's KV as the model reads and writes it: through its page tables in the worker's
// KvPool, in the packed layout of spec §8.2 (docs/capacity.md §6).
//   window   ring slot s (position mod sliding_window) = unit s of the window table, packed main
//            entries (PackKvEntries)
//   main     compressed entry j = unit j of the main table, packed main entries
//   indexer  indexer key j = unit j of the indexer table, packed keys (PackIndexerKeys)
//   state    the compressors' unfinished blocks: f32 rows, kv rows then score rows, whole rows
//            per page; the main compressor's pages first, then (CSA) its indexer's
// Rows written are rows that went through the QAT rounding (FP8 non-RoPE dims, FP4 indexer
// keys), so what is read back is bitwise what was written.
//
// Everything is backend work on the model's queue, and nothing waits: rows are packed into (and
// unpacked from) the `packed` bytes of the step workspace by the pack ops, and those bytes move
// to and from the pages with Backend::Copy, one copy per run of units inside a page (the page
// tables are host metadata, so the host cuts the runs). Entries named by a device index list
// (the indexer's picks) are read through a device copy of the page table
// (UnpackKvEntriesPaged). Compressor state moves between the pages and the workspace's state
// rows with Copy.
#pragma once

#include <cstdint>
#include <vector>

#include "common/dtype.h"
#include "common/model_config.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "worker/kv_pool.h"

namespace flotilla {

class PagedKv {
 public:
  // `packed` (bytes moving between rows and pages: StepWorkspaceLayout::packed) and `page_ids`
  // (one page table: StepWorkspaceLayout::page_ids) are spans of the step workspace.
  PagedKv(const ModelConfig& config, KvPool* pool, kernels::Backend* backend, kernels::Queue* queue,
          kernels::Out<uint8_t> packed, kernels::Out<int32_t> page_ids);

  // Which compressor of a layer: the main one, or the CSA indexer's.
  enum class Compressor { kMain, kIndexer };
  // Rows and width of a compressor's state: overlapping (ratio 4) 2m rows of 2d, else m of d.
  int64_t StateRows(int64_t layer, Compressor which) const;
  int64_t StateWidth(int64_t layer, Compressor which) const;

  // Window ring slots [first, first + count) (no wrap) from rows of head_dim bf16.
  absl::Status WriteWindow(const SequencePageTables& t, int64_t layer, int64_t first, int64_t count,
                           kernels::In<bf16> rows) const;
  // The whole ring, [sliding_window, head_dim].
  absl::Status ReadWindow(const SequencePageTables& t, int64_t layer,
                          kernels::Out<bf16> rows) const;

  // Compressed main entries [first, first + count).
  absl::Status WriteMain(const SequencePageTables& t, int64_t layer, int64_t first, int64_t count,
                         kernels::In<bf16> rows) const;
  absl::Status ReadMain(const SequencePageTables& t, int64_t layer, int64_t first, int64_t count,
                        kernels::Out<bf16> rows) const;
  // Entries idx[i] for i < count[0] (<= max_rows; a device index list) into rows i.
  absl::Status ReadMainAt(const SequencePageTables& t, int64_t layer, kernels::In<int32_t> idx,
                          kernels::In<int32_t> count, int64_t max_rows,
                          kernels::Out<bf16> rows) const;

  // Indexer keys [first, first + count), rows of index_head_dim bf16.
  absl::Status WriteKeys(const SequencePageTables& t, int64_t layer, int64_t first, int64_t count,
                         kernels::In<bf16> rows) const;
  absl::Status ReadKeys(const SequencePageTables& t, int64_t layer, int64_t first, int64_t count,
                        kernels::Out<bf16> rows) const;

  // The state of a compressor ([StateRows, StateWidth] f32 each of kv and score), or
  // (WriteStateRows) only its rows [first, first + count).
  absl::Status ReadState(const SequencePageTables& t, int64_t layer, Compressor which,
                         kernels::Out<float> kv, kernels::Out<float> score) const;
  absl::Status WriteState(const SequencePageTables& t, int64_t layer, Compressor which,
                          kernels::In<float> kv, kernels::In<float> score) const;
  absl::Status WriteStateRows(const SequencePageTables& t, int64_t layer, Compressor which,
                              kernels::In<float> kv, kernels::In<float> score, int64_t first,
                              int64_t count) const;
  // Sets every compressor state of a sequence to its start (kv 0, score -inf), filling
  // `kv_scratch` / `score_scratch` (the workspace's state rows) first.
  absl::Status ResetStates(const SequencePageTables& t, kernels::Out<float> kv_scratch,
                           kernels::Out<float> score_scratch) const;

 private:
  // Units [first, first + count) of `unit_bytes` each, `per_page` to a page of `table` starting
  // at table page `page0`, copied from `src` (to_pool) or into `dst`, one Copy per run.
  absl::Status ToPool(const std::vector<int32_t>& table, int64_t page0, int64_t unit_bytes,
                      int64_t per_page, int64_t first, int64_t count,
                      kernels::In<uint8_t> src) const;
  absl::Status FromPool(const std::vector<int32_t>& table, int64_t page0, int64_t unit_bytes,
                        int64_t per_page, int64_t first, int64_t count,
                        kernels::Out<uint8_t> dst) const;
  absl::Status Packed(int64_t bytes, kernels::Out<uint8_t>* out) const;

  const ModelConfig& c_;
  KvPool* pool_;
  kernels::Backend* backend_;
  kernels::Queue* queue_;
  int64_t main_bytes_ = 0, key_bytes_ = 0;
  kernels::Out<uint8_t> packed_;
  kernels::Out<int32_t> page_ids_;
};

}  // namespace flotilla
