// The grouped FP8 x FP4 expert GEMM on Hopper's FP8 tensor cores through wgmma (sm_90a), for
// prefill shapes (many rows per expert): the same inputs, outputs and math as
// grouped_gemm_fp4.h — per 32-wide K slice one FP8 MMA partial P with a zero accumulator, then
// acc = acc + (P · sa) · sw — with both operands in shared memory behind wgmma descriptors
// (wgmma_layout.h). The packed E2M1 weights are decoded to E4M3 on their way into shared memory
// (registers -> shared), never widened in global memory.
//
// Block: two warpgroups (256 threads) own a 128-row x 128-column output tile; warpgroup g the
// rows 64 g .. 64 g + 63. Per 128-wide K block all threads stage the block's activations
// (128 x 128 E4M3) and decoded weights (128 x 128 E4M3) and the 128 x 4 weight scales in shared
// memory (the next block's global loads are in flight in registers meanwhile); each warpgroup
// then runs, per 32-wide slice, one wgmma.m64n128k32.f32.e4m3.e4m3 with
// scale-d = 0 and folds the partial into its f32 accumulators. The grid is (n / 128, experts);
// a block walks its expert's rows 128 at a time (group sizes read on the device).
//
// Accumulation: the accumulator is kept divided by the current activation scale sa (a power of
// two): per slice acc' = fma(P, sw, acc'), per 128-wide block acc' *= sa_prev / sa, at the end
// acc = acc' · sa. Multiplying by a power of two is exact and commutes with rounding while values
// stay normal f32, so this is the same sequence of roundings as the CPU's acc + (P · sa) · sw
// (one FFMA per element and slice instead of three operations); only results that leave the
// normal f32 range on the way may differ, within the stated tolerance.
//
// The mma.sync kernel (grouped_gemm_fp4.h) stays the kernel for decode (few rows per expert,
// bound by reading the weights) and for sm_100a, where wgmma does not exist.
#pragma once

#include <cstdint>

#include "kernels/cuda/grouped_gemm_fp4.h"

namespace flotilla::kernels::cuda {

constexpr int kWgmmaGemmThreads = 256;
constexpr int kWgmmaGemmTileM = 128;
constexpr int kWgmmaGemmTileN = 128;

// nullptr when `p` can be launched on the wgmma kernel, else what is wrong (besides the checks
// of CheckGroupedGemmFp8Fp4: n a multiple of 128, a 16-byte aligned, w 8-byte aligned).
const char* CheckGroupedGemmFp8Fp4Wgmma(const GroupedGemmFp8Fp4Params& p);
LaunchShape GroupedGemmFp8Fp4WgmmaShape(const GroupedGemmFp8Fp4Params& p);
// Static shared memory of the kernel: activations and weights of one K block, weight scales.
constexpr int kWgmmaGemmSharedBytes = 2 * kWgmmaGemmTileM * 128 + kWgmmaGemmTileN * 4;

// Which expert-GEMM kernel a step should use: the wgmma kernel on sm_90 when the step averages
// more than kWgmmaMinRowsPerExpert rows per local expert (prefill), else mma.sync.
constexpr int64_t kWgmmaMinRowsPerExpert = 32;
inline bool UseWgmmaExpertGemm(int sm_major, int sm_minor, int64_t rows, int64_t num_experts) {
  return sm_major == 9 && sm_minor == 0 && num_experts > 0 &&
         rows > kWgmmaMinRowsPerExpert * num_experts;
}

// Enqueues the kernel on `stream`; returns the launch's cudaError_t (0 on success), or
// cudaErrorNotSupported (801) on a device other than sm_90. Callers check the shape first.
int LaunchGroupedGemmFp8Fp4Wgmma(const GroupedGemmFp8Fp4Params& p, CUstream_st* stream);

}  // namespace flotilla::kernels::cuda
