// Sparse attention with the attention sink over the packed FP8 KV pages, decode and prefill
// (spec §5.4-5.5; kernels::SparseAttention's math). One KV head (MQA, K = V): every selected
// entry is read from the pool once per token and dequantised (kv_paging.h: FP8 codes times their
// UE8M0 scale, the bf16 RoPE part as stored) for all heads of the rank; QKᵀ and PV run on tensor
// cores (mma.sync m16n8k16 bf16, f32 accumulation).
//
// Per token, the list (idx[t, 0 .. list_len)) is cut into chunks of kSparseAttentionChunk
// entries; one block per (token, chunk) runs the CPU's online softmax over its chunk in blocks of
// 64 entries: s = (q_h · row) · scale, M' = max(M, block max), α = exp(M - M'), p = exp(s - M'),
// L = L·α + Σp (list order), O = O·α + Σ bf16(p)·row; a second kernel merges the chunks
// (M = max M_c, L = Σ L_c·exp(M_c - M), O = Σ O_c·exp(M_c - M), chunk order), adds the sink
// (L += exp(sink[h] - M)) and writes bf16(O / L). With one chunk the merge multiplies by
// exp(0) = 1 and the result has the CPU's structure exactly.
//
// Against the CPU backend: not bitwise — the 512-wide q·k dots and the 64-entry P·V sums are
// the tensor core's accumulation order, exp is the device expf, and lists longer than one chunk
// are merged as above. docs/cuda.md states the tolerance. The number of chunks depends only on
// list_len, never on how many tokens share the call.
//
// This header is plain C++ (no CUDA headers): host code and CPU tests use it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/dtype.h"

struct CUstream_st;

namespace flotilla::kernels::cuda {

struct SparseAttentionParams {
  const bf16* q = nullptr;  // [tokens, num_heads, nope + rope] device, token stride ldq
  int64_t ldq = 0;
  // The pool: pages of page_bytes bytes, entries_per_page packed main entries of entry_bytes
  // (nope FP8 codes, rope bf16, ceil(nope/64) UE8M0 scales; V4-Flash 448 + 128 + 7 + 1 = 584).
  const uint8_t* pool = nullptr;
  int64_t page_bytes = 0, entry_bytes = 0, entries_per_page = 0;
  int64_t nope = 0, rope = 0;
  // Page tables, one run per token (tokens of one sequence may share a run): token t's window
  // ring is page_ids[window_begin[t] ...], its compressed entries page_ids[compressed_begin[t]
  // ...]. List index idx < window_entries reads ring slot idx, idx >= window_entries reads
  // compressed entry idx - window_entries, idx < 0 is an empty slot. Indices are trusted.
  const int32_t* page_ids = nullptr;          // device
  const int64_t* window_begin = nullptr;      // [tokens] device
  const int64_t* compressed_begin = nullptr;  // [tokens] device
  int64_t window_entries = 0;
  const int32_t* idx = nullptr;  // [tokens, list_len] device; idx[t, 0] must not be empty
  int64_t list_len = 0, tokens = 0;
  const float* sink = nullptr;  // [num_heads] device
  int64_t num_heads = 0;        // 1 .. 64 (the heads of this rank)
  float scale = 0.0f;           // f32(dim^-0.5)
  bf16* out = nullptr;          // [tokens, num_heads, nope + rope] device, token stride ldo
  int64_t ldo = 0;
};

constexpr int kSparseAttentionThreads = 512;    // 16 warps
constexpr int64_t kSparseAttentionBlock = 64;   // the softmax block (spec §5.5)
constexpr int64_t kSparseAttentionChunk = 256;  // entries per thread block
constexpr int64_t kSparseAttentionMaxHeads = 64;
constexpr int64_t kSparseAttentionMaxDim = 512;

// Chunks of one token's list (the grid's y; tokens are its x).
inline int64_t SparseAttentionChunks(int64_t list_len) {
  return (list_len + kSparseAttentionChunk - 1) / kSparseAttentionChunk;
}
// Device workspace of a call: per (token, chunk, head) the f32 partial O [dim], M and L.
size_t SparseAttentionWorkspaceBytes(const SparseAttentionParams& p);
// Dynamic shared memory of the chunk kernel: q and one block of 64 dequantised entries as bf16
// (rows padded by 8 elements against bank conflicts), the f32 scores, the bf16 probabilities,
// the per-head rescale factors and the entries' offsets.
size_t SparseAttentionSharedBytes(int64_t num_heads, int64_t dim);

// nullptr when `p` can be launched, else what is wrong (shapes, alignment, pointers).
const char* CheckSparseAttention(const SparseAttentionParams& p);

// Enqueues both kernels on `stream`; `workspace` holds SparseAttentionWorkspaceBytes(p) device
// bytes (16-byte aligned). Returns the launches' cudaError_t (0 on success). No host sync.
int LaunchSparseAttention(const SparseAttentionParams& p, void* workspace, CUstream_st* stream);

}  // namespace flotilla::kernels::cuda
