// RMSNorm (spec §4.2) and the per-head bf16 RMS norm of the queries (§5.1) on the GPU, bit for
// bit with kernels::RmsNorm / HeadRmsNormBf16: the lane-order sum (ops.h: 8 fused multiply-add
// chains, element i into chain i % 8 in ascending i, then ((s0+s4)+(s2+s6))+((s1+s5)+(s3+s7)))
// is formed by 8 threads of a row, one chain each, in the same order; 1/sqrt is the correctly
// rounded one the CPU backend uses (the spec's GPU reference uses rsqrtf, at most 1 ulp away:
// docs/numerics.md), and every multiply is a separately rounded f32 multiply.
#pragma once

#include <cstdint>

#include "common/dtype.h"

struct CUstream_st;

namespace flotilla::kernels::cuda {

struct RmsNormParams {
  const bf16* x = nullptr;  // [m, d] device, row stride ldx
  int64_t ldx = 0;
  const bf16* w = nullptr;  // [d] device
  int64_t m = 0, d = 0;
  float eps = 1e-6f;
  bf16* y = nullptr;        // [m, d] device, row stride ldy; may alias x
  int64_t ldy = 0;
};

struct HeadRmsNormParams {
  bf16* q = nullptr;  // [rows, dim] device, contiguous, normalised in place
  int64_t rows = 0, dim = 0;
  float eps = 1e-6f;
};

// 8 threads per row, 32 rows per 256-thread block.
constexpr int kNormThreads = 256;
constexpr int kNormRowsPerBlock = kNormThreads / 8;

const char* CheckRmsNorm(const RmsNormParams& p);
const char* CheckHeadRmsNorm(const HeadRmsNormParams& p);
int64_t NormBlocks(int64_t rows);
int LaunchRmsNorm(const RmsNormParams& p, CUstream_st* stream);
int LaunchHeadRmsNorm(const HeadRmsNormParams& p, CUstream_st* stream);

}  // namespace flotilla::kernels::cuda
