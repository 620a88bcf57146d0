// The small dense GEMMs (kernels::GemmBf16 / GemmF32: bf16 or f32 operands, lane-order f32
// dots) on the GPU, bit for bit with the CPU backend: each output is one lane-order dot formed by
// 8 threads (one fused multiply-add chain each, the CPU's combine), rounded to bf16 or kept f32.
// CUDA cores, not tensor cores: for the model's narrow projections (hyper-connection and gate
// mixes, the compressors' and indexer's small weights), where the bitwise contract matters more
// than peak rate. Plain C++ header.
#pragma once

#include <cstdint>

#include "common/dtype.h"

struct CUstream_st;

namespace flotilla::kernels::cuda {

// c = a · wᵀ. Exactly one of a / a_bf16, one of w / w_bf16 and one of c / c_bf16 is set.
struct DenseGemmParams {
  const float* a = nullptr;  // [m, k] device, row stride lda
  const bf16* a_bf16 = nullptr;
  int64_t lda = 0;
  const float* w = nullptr;  // [n, k] device, row stride ldw
  const bf16* w_bf16 = nullptr;
  int64_t ldw = 0;
  float* c = nullptr;  // [m, n] device, row stride ldc
  bf16* c_bf16 = nullptr;
  int64_t ldc = 0;
  int64_t m = 0, n = 0, k = 0;
};

// 256 threads = 32 outputs per block (8 threads each); grid (ceil(n / 32), m).
constexpr int kDenseGemmThreads = 256;
constexpr int kDenseGemmOutputsPerBlock = kDenseGemmThreads / 8;

struct DenseGemmShape {
  uint32_t grid_x = 0, grid_y = 0;
};

const char* CheckDenseGemm(const DenseGemmParams& p);
DenseGemmShape DenseGemmLaunchShape(const DenseGemmParams& p);
int LaunchDenseGemm(const DenseGemmParams& p, CUstream_st* stream);

}  // namespace flotilla::kernels::cuda
