// Small device ops of the model's attention (kernels/backend_ops.h, "attention ops") on the GPU,
// bit for bit with the CPU backend: the compressor's entry positions, the f32 -> bf16 rounding of
// pooled entries, the picked-entry dedupe of the sparse indexer, and the unpacking of packed main
// entries read through a page table (kv_paging.h's addressing and decoding). Index lists only
// the device reads are checked there: a bad element is skipped and reported by the queue's next
// Synchronize (device_error.h). Plain C++ header.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "kernels/cuda/device_error.h"

struct CUstream_st;

namespace flotilla::kernels::cuda {

constexpr int kAttentionOpThreads = 256;
constexpr int kPickedEntriesThreads = 1024;  // one block: a scan over the visible entries

// entry_pos[e] = (start_pos / ratio + e) * ratio for e < entries.
int LaunchEntryPositions(int64_t* entry_pos, int64_t entries, int64_t start_pos, int64_t ratio,
                         CUstream_st* stream);

// y[i] = F32ToBf16(x[i]).

struct PickedEntriesParams {
  const int32_t* picks = nullptr;      // [rows, top_k] device
  const int32_t* num_picks = nullptr;  // [rows] device
  int64_t rows = 0, top_k = 0, visible = 0, max_entries = 0;
  int32_t* entry_slot = nullptr;  // [visible] device
  int32_t* entry_idx = nullptr;   // [max_entries] device
  int32_t* count = nullptr;       // [1] device
  DeviceError* error = nullptr;
};
const char* CheckPickedEntries(const PickedEntriesParams& p);
int LaunchPickedEntries(const PickedEntriesParams& p, CUstream_st* stream);

struct KvUnpackPagedParams {
  const uint8_t* pool = nullptr;  // device
  int64_t pool_pages = 0, page_bytes = 0, per_page = 0;
  const int32_t* page_ids = nullptr;  // [table_pages] device
  int64_t table_pages = 0;
  const int32_t* units = nullptr;  // [max_rows] device
  const int32_t* count = nullptr;  // [1] device
  int64_t max_rows = 0;
  int64_t nope = 0, rope = 0, entry_bytes = 0;
  bf16* x = nullptr;  // [max_rows, nope + rope] device, row stride ldx
  int64_t ldx = 0;
  DeviceError* error = nullptr;
};
const char* CheckKvUnpackPaged(const KvUnpackPagedParams& p);
int64_t KvUnpackPagedBlocks(const KvUnpackPagedParams& p);
int LaunchKvUnpackPaged(const KvUnpackPagedParams& p, CUstream_st* stream);

// IndexerTopK (backend_ops.h): a block per row. The row's candidates are its picks so far and
// the block's keys it sees; since every pick precedes every key of the block, ordering
// candidates by (score, key index) is the CPU's order by (score, candidate position), so one
// radix selection over TopKKey(score, key index) (indexer.h) and a bitonic sort of the winners
// give the CPU's top-k in its order. Block keys are scored as IndexerScoresKernel scores them,
// with w_h = bf16(f32(w_h) * w_scale). Dynamic shared memory: IndexerTopKSharedBytes.
struct IndexerTopKParams {
  const bf16* q = nullptr;  // [rows, num_heads, dim] device
  const bf16* w = nullptr;  // [rows, num_heads] device
  float w_scale = 1.0f;
  const bf16* keys = nullptr;  // [n_keys, dim] device
  int64_t first_key = 0, n_keys = 0;
  int64_t rows = 0, start_pos = 0, ratio = 0;
  int64_t num_heads = 0, dim = 0, top_k = 0;
  int32_t* picks = nullptr;      // [rows, top_k] device
  float* pick_scores = nullptr;  // [rows, top_k] device
  int32_t* num_picks = nullptr;  // [rows] device
  DeviceError* error = nullptr;
};
constexpr int kIndexerTopKThreads = 512;
size_t IndexerTopKSharedBytes(const IndexerTopKParams& p);
const char* CheckIndexerTopK(const IndexerTopKParams& p);
int LaunchIndexerTopK(const IndexerTopKParams& p, CUstream_st* stream);

}  // namespace flotilla::kernels::cuda
