// The model's own data movement on the GPU (kernels/backend_ops.h "model ops"): the embedding
// rows of a vocab slice, rows repeated onto the hyper-connection streams, the MTP input's
// broadcast bf16 add, bf16 <-> f32 conversions around collectives, and the row interleave after
// an all-gather. Every one is exact (copies, or one f32 add and one rounding per element, as the
// CPU backend does), so results are bitwise those of the CPU backend. Plain C++ header.
#pragma once

#include <cstdint>

#include "common/dtype.h"

struct CUstream_st;

namespace flotilla::kernels::cuda {

constexpr int kModelOpThreads = 256;

struct EmbedRowsParams {
  const bf16* table = nullptr;      // [num_rows, d] device
  const int32_t* tokens = nullptr;  // [n] device
  int64_t first = 0, num_rows = 0, n = 0, d = 0;
  bf16* out = nullptr;  // [n, d] device
};

struct RepeatRowsParams {
  const bf16* x = nullptr;  // [n, d] device
  int64_t n = 0, copies = 1, d = 0;
  bf16* out = nullptr;  // [n, copies, d] device
};

struct BroadcastAddParams {
  const bf16* a = nullptr;  // [n, d] device
  const bf16* b = nullptr;  // [n, copies, d] device
  int64_t n = 0, copies = 1, d = 0;
  bf16* out = nullptr;  // [n, copies, d] device (may be b)
};

struct InterleaveRowsParams {
  const uint8_t* src = nullptr;  // [blocks * rows, row_bytes] device
  int64_t blocks = 0, rows = 0, row_bytes = 0;
  uint8_t* dst = nullptr;  // [rows * blocks, row_bytes] device
};

// nullptr when the op can be launched (nothing to do also passes), else why not.
const char* CheckEmbedRows(const EmbedRowsParams& p);
const char* CheckRepeatRows(const RepeatRowsParams& p);
const char* CheckBroadcastAdd(const BroadcastAddParams& p);
const char* CheckConvert(const void* x, const void* y, int64_t count);
const char* CheckInterleaveRows(const InterleaveRowsParams& p);
// Grid of a grid-stride loop over `elements` (at least 1 block, at most 65536).
int64_t ModelOpBlocks(int64_t elements);

int LaunchEmbedRows(const EmbedRowsParams& p, CUstream_st* stream);
int LaunchRepeatRows(const RepeatRowsParams& p, CUstream_st* stream);
int LaunchBroadcastAdd(const BroadcastAddParams& p, CUstream_st* stream);
int LaunchConvertBf16ToF32(const bf16* x, float* y, int64_t count, CUstream_st* stream);
int LaunchConvertF32ToBf16(const float* x, bf16* y, int64_t count, CUstream_st* stream);
int LaunchInterleaveRows(const InterleaveRowsParams& p, CUstream_st* stream);

}  // namespace flotilla::kernels::cuda
