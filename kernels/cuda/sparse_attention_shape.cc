#include <cstdint>

#include "kernels/cuda/sparse_attention.h"

namespace flotilla::kernels::cuda {
namespace {

int64_t HeadRows(int64_t num_heads) { return (num_heads + 15) / 16 * 16; }

}  // namespace

size_t SparseAttentionWorkspaceBytes(const SparseAttentionParams& p) {
  const int64_t dim = p.nope + p.rope;
  return size_t(p.tokens * SparseAttentionChunks(p.list_len) * p.num_heads * (dim + 2)) *
         sizeof(float);
}

size_t SparseAttentionSharedBytes(int64_t num_heads, int64_t dim) {
  const int64_t rows = HeadRows(num_heads), stride = dim + 8;
  const int64_t q = rows * stride * 2, kv = kSparseAttentionBlock * stride * 2;
  const int64_t scores = rows * (kSparseAttentionBlock + 4) * 4;
  const int64_t probs = rows * (kSparseAttentionBlock + 8) * 2;
  const int64_t alpha = rows * 4, offsets = kSparseAttentionBlock * 8;
  return size_t(q + kv + scores + probs + alpha + offsets);
}

const char* CheckSparseAttention(const SparseAttentionParams& p) {
  if (!p.q || !p.pool || !p.page_ids || !p.window_begin || !p.compressed_begin || !p.idx ||
      !p.sink || !p.out) {
    return "sparse attention: q, pool, page_ids, window_begin, compressed_begin, idx, sink and "
           "out must all be set";
  }
  const int64_t dim = p.nope + p.rope;
  if (p.nope <= 0 || p.nope % 64 != 0 || p.rope < 0 || p.rope % 8 != 0) {
    return "sparse attention: nope must be a positive multiple of 64 and rope a multiple of 8";
  }
  if (dim % 128 != 0 || dim > kSparseAttentionMaxDim) {
    return "sparse attention: nope + rope must be a multiple of 128, at most 512";
  }
  if (p.num_heads < 1 || p.num_heads > kSparseAttentionMaxHeads) {
    return "sparse attention: num_heads must be in [1, 64]";
  }
  if (p.entry_bytes < p.nope + 2 * p.rope + p.nope / 64 || p.entry_bytes % 8 != 0) {
    return "sparse attention: entry_bytes must hold nope + 2 rope + nope/64 bytes and be a "
           "multiple of 8";
  }
  if (p.page_bytes % 8 != 0 || p.entries_per_page < 1 ||
      p.entries_per_page > p.page_bytes / p.entry_bytes) {
    return "sparse attention: page_bytes must be a multiple of 8 holding entries_per_page "
           "(>= 1) entries";
  }
  if (p.window_entries < 0 || p.window_entries > 0x7fffffff) {
    return "sparse attention: window_entries must be in [0, 2^31)";
  }
  if (p.list_len < 1 || p.tokens < 0) return "sparse attention: list_len must be positive";
  if (SparseAttentionChunks(p.list_len) > 65535 || p.tokens > 0x7fffffff) {
    return "sparse attention: list_len must be at most 65,535 chunks (grid y)";
  }
  if (p.ldq < p.num_heads * dim || p.ldo < p.num_heads * dim || p.ldq % 2 != 0 || p.ldo % 2 != 0) {
    return "sparse attention: ldq and ldo must be even and at least num_heads * (nope + rope)";
  }
  if (reinterpret_cast<uintptr_t>(p.pool) % 8 != 0 || reinterpret_cast<uintptr_t>(p.q) % 4 != 0 ||
      reinterpret_cast<uintptr_t>(p.out) % 4 != 0) {
    return "sparse attention: pool must be 8-byte, q and out 4-byte aligned";
  }
  return nullptr;
}

}  // namespace flotilla::kernels::cuda
