// Grouped FP8 x FP4 expert GEMM on tensor cores: for every local expert e, the rows of `a`
// routed to it ([group_offsets[e], group_offsets[e + 1])) times that expert's packed E2M1
// weights, bf16 out — the routed-expert GEMM of spec §2.4 with kernels::GemmFp8Fp4's math:
// per 32-wide K slice a partial P from one FP8 MMA (the E2M1 weights decoded to E4M3 in
// registers, never widened in memory), acc = acc + (P * sa[row, k/128]) * sw[n, k/32] in f32 in
// slice order without contraction, one bf16 rounding (nearest even).
//
// Against the CPU backend: bitwise where the tensor core's 32-product partial is exact, which
// it is when the partial needs no more significand bits than its accumulator keeps; otherwise
// within the tolerance stated in docs/cuda.md. Group sizes are read on the device: no host
// synchronisation. This header is plain C++ (no CUDA headers) so host code and CPU tests use it.
#pragma once

#include <cstdint>

#include "common/dtype.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace flotilla::kernels::cuda {

struct GroupedGemmFp8Fp4Params {
  const fp8* a = nullptr;                // [rows, k] device, rows grouped by expert
  const e8m0* a_scale = nullptr;         // [rows, k/128] device
  const uint8_t* w = nullptr;            // [num_experts, n, k/2] device, packed E2M1
  const e8m0* w_scale = nullptr;         // [num_experts, n, k/32] device
  const int32_t* group_offsets = nullptr;  // [num_experts + 1] device, non-decreasing, [0] = 0
  // Or (exactly one of the two): int64 offsets into a longer grouping of which this launch runs
  // the rows [window_begin, window_begin + window_rows), held by a and c from their row 0
  // (Backend::GroupedGemmFp8Fp4's pass over MoePermute's grouping).
  const int64_t* group_offsets64 = nullptr;  // [num_experts + 1] device
  int64_t window_begin = 0, window_rows = 0;
  bf16* c = nullptr;                     // [rows, n] device, row stride ldc
  int64_t ldc = 0;
  int64_t n = 0, k = 0;
  int64_t num_experts = 0;
};

// The launch: 128 threads (4 warps) per block; a warp owns 16 output columns (two m16n8k32 n
// tiles), a block 64; grid (ceil(n / 64), num_experts). Each block walks its expert's rows in
// tiles of 16 * kGroupedGemmMTiles, so a weight slice is read once per 64 rows.
constexpr int kGroupedGemmThreads = 128;
constexpr int kGroupedGemmColumnsPerWarp = 16;
constexpr int kGroupedGemmColumnsPerBlock = 64;
constexpr int kGroupedGemmMTiles = 4;

struct LaunchShape {
  uint32_t grid_x = 0, grid_y = 0, block_x = 0;
};

// nullptr when `p` can be launched, else what is wrong (shapes, alignment, missing pointers).
const char* CheckGroupedGemmFp8Fp4(const GroupedGemmFp8Fp4Params& p);
LaunchShape GroupedGemmFp8Fp4Shape(const GroupedGemmFp8Fp4Params& p);

// Enqueues the kernel on `stream` (nullptr: the default stream); returns the cudaError_t of
// the launch (0 on success). Defined in grouped_gemm_fp4.cu; callers check the shape first.
int LaunchGroupedGemmFp8Fp4(const GroupedGemmFp8Fp4Params& p, CUstream_st* stream);

}  // namespace flotilla::kernels::cuda
