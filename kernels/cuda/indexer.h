// The lightning indexer's ops on the GPU (spec §7), bit for bit with the CPU backend's
// HadamardRotateBf16, IndexerScores and TopK (kernels/ops.h): every value is formed by the same
// sequence of rounded f32 operations (butterflies in stage order; lane-order dots, bf16
// roundings, the head sum in head order), and the top-k is an exact selection under the same
// total order (larger score first, NaN after every number, ties to the lower index).
#pragma once

#include <cstdint>

#include "common/dtype.h"

struct CUstream_st;

namespace flotilla::kernels::cuda {

struct HadamardParams {
  bf16* x = nullptr;  // [rows, dim] device, contiguous, rotated in place
  int64_t rows = 0, dim = 0;  // dim a power of two, at most kHadamardMaxDim
};
constexpr int64_t kHadamardMaxDim = 8192;  // 32 KiB of f32 in shared memory

struct IndexerScoresParams {
  const bf16* q = nullptr;     // [num_heads, dim] device, one token
  const bf16* w = nullptr;     // [num_heads] device
  const bf16* keys = nullptr;  // [n, dim] device, row stride ldk
  int64_t ldk = 0;
  int64_t n = 0, num_heads = 0, dim = 0;  // num_heads * dim <= kIndexerMaxQ
  float* scores = nullptr;     // [n] device
};
constexpr int64_t kIndexerMaxQ = 12288;  // q held as f32 in 48 KiB of shared memory

// One block per call: an 8-pass radix selection over (score, index) keys read straight from
// `scores` (no workspace: memory does not grow with n), then a bitonic sort of the k winners in
// shared memory.
struct TopKParams {
  const float* scores = nullptr;  // [n] device
  int64_t n = 0, k = 0;           // 0 < k <= min(n, kTopKMax), n < 2^31
  int32_t* idx = nullptr;         // [k] device, descending
};
constexpr int64_t kTopKMax = 4096;

// The order key of (score, index): larger means earlier. Scores map to an order-preserving
// uint32 (-0 and +0 to the same, every NaN to 0, below -inf); the low half is ~index so that
// ties go to the lower index. Shared with the CPU tests.
FLOTILLA_HD uint64_t TopKKey(float score, uint32_t index) {
  uint32_t u = F32ToBits(score);
  uint32_t key;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    key = 0;  // NaN
  } else {
    if (u == 0x80000000u) u = 0;  // -0 ties with +0
    key = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  }
  return uint64_t(key) << 32 | uint32_t(~index);
}

const char* CheckHadamard(const HadamardParams& p);
const char* CheckIndexerScores(const IndexerScoresParams& p);
const char* CheckTopK(const TopKParams& p);
// 1/sqrt(dim) as the CPU backend forms it (in double, rounded once to f32).
float HadamardScale(int64_t dim);

int LaunchHadamard(const HadamardParams& p, CUstream_st* stream);
int LaunchIndexerScores(const IndexerScoresParams& p, CUstream_st* stream);
int LaunchTopK(const TopKParams& p, CUstream_st* stream);

}  // namespace flotilla::kernels::cuda
