// MoE permutation on the GPU (spec §9; kernels::MoePermute / GatherRows / ScatterRows /
// MoeCombine): the stable grouping of (token, slot) assignments by expert, row copies through an
// index list and the combine in increasing expert id — bit for bit with the CPU backend (the
// permutation is exact integer work; the combine adds in the same order with the same roundings).
// Plain C++ header.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "kernels/cuda/device_error.h"

struct CUstream_st;

namespace flotilla::kernels::cuda {

struct MoePermuteParams {
  const int32_t* expert_idx = nullptr;  // [n, k] device, global expert ids
  int64_t n = 0, k = 0;
  int64_t first_expert = 0, num_experts = 0;
  int64_t* offsets = nullptr;  // [num_experts + 1] device
  int32_t* order = nullptr;    // [n * k] device
};

// One block: the counts by shared-memory atomics (order-free), a prefix sum, then a warp per
// expert walks the assignments in order and places its own with a ballot (stable, no sort).
constexpr int kMoePermuteThreads = 1024;
constexpr int64_t kMoePermuteMaxExperts = 8192;  // counts in shared memory

// Row copies (GatherRows: dst row i = src row index[i] / divisor; ScatterRows: dst row
// index[i] / divisor = src row i). `indexed_rows` is how many rows the indexed side holds; an
// index outside it is recorded in `error` and its row skipped.
struct RowCopyParams {
  const uint8_t* src = nullptr;
  int64_t ld_src = 0;              // bytes
  const int32_t* index = nullptr;  // [rows] device
  int64_t rows = 0, divisor = 1, row_bytes = 0;
  uint8_t* dst = nullptr;
  int64_t ld_dst = 0;  // bytes
  int64_t indexed_rows = 0;
  DeviceError* error = nullptr;  // device
};

// A block per row (grid-stride), 16-byte copies when every address and stride allows.
constexpr int kRowCopyThreads = 128;

struct MoeCombineParams {
  const int32_t* expert_idx = nullptr;  // [n, k] device
  const bf16* routed = nullptr;         // [n * k, d] device, slot order
  const bf16* shared = nullptr;         // [n, d] device or nullptr
  int64_t n = 0, k = 0, d = 0;          // k <= 64
  bf16* out = nullptr;                  // [n, d] device
};

// A block per token: the stable order of its k slots by expert id, then a thread per channel.
constexpr int kMoeCombineThreads = 256;
constexpr int64_t kMoeCombineMaxK = 64;

const char* CheckMoePermute(const MoePermuteParams& p);
const char* CheckRowCopy(const RowCopyParams& p);
bool RowCopyVectorized(const RowCopyParams& p);  // 16-byte copies
int64_t RowCopyBlocks(const RowCopyParams& p);
const char* CheckMoeCombine(const MoeCombineParams& p);
int LaunchMoePermute(const MoePermuteParams& p, CUstream_st* stream);
int LaunchGatherRows(const RowCopyParams& p, CUstream_st* stream);
int LaunchScatterRows(const RowCopyParams& p, CUstream_st* stream);
int LaunchMoeCombine(const MoeCombineParams& p, CUstream_st* stream);

}  // namespace flotilla::kernels::cuda
