// RMSNorm and the per-head bf16 RMS norm (norm.h): a row per 8 consecutive threads, thread t
// owning lane-order chain t (elements t, t + 8, t + 16, ... in ascending order).
#include <cuda_runtime.h>

#include "kernels/cuda/norm.h"

namespace flotilla::kernels::cuda {
namespace {

// ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7)) over the 8 threads of a row group; every
// thread of the group gets the result.
__device__ __forceinline__ float CombineLanes(float s) {
  const unsigned all = 0xffffffffu;
  const float s4 = __shfl_xor_sync(all, s, 4);  // t < 4: s_t + s_(t+4)
  const float a = __fadd_rn(s, s4);             // t in {0,1,2,3}: a_t = s_t + s_(t+4)
  const float a2 = __shfl_xor_sync(all, a, 2);  // t = 0: a_2; t = 1: a_3
  const float b = __fadd_rn(a, a2);             // t = 0: (s0+s4)+(s2+s6); t = 1: (s1+s5)+(s3+s7)
  const float b1 = __shfl_xor_sync(all, b, 1);
  const int t = threadIdx.x & 7;
  // Thread 0 of the group adds in the stated order; broadcast it.
  const float total = (t & 1) == 0 ? __fadd_rn(b, b1) : __fadd_rn(b1, b);
  return __shfl_sync(all, total, int(threadIdx.x & 31) & ~7);
}

__global__ void __launch_bounds__(kNormThreads) RmsNormKernel(RmsNormParams p) {
  const int64_t row = int64_t(blockIdx.x) * kNormRowsPerBlock + threadIdx.x / 8;
  const int t = threadIdx.x & 7;
  const bool active = row < p.m;
  const bf16* x = p.x + (active ? row : 0) * p.ldx;
  float s = 0.0f;
  if (active) {
    for (int64_t i = t; i < p.d; i += 8) {
      const float v = Bf16ToF32(x[i]);
      s = __fmaf_rn(v, v, s);
    }
  }
  const float sum = CombineLanes(s);  // all 32 lanes take part
  if (!active) return;
  const float mean = __fmul_rn(sum, __fdiv_rn(1.0f, float(p.d)));
  const float r = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(mean, p.eps)));
  bf16* y = p.y + row * p.ldy;
  for (int64_t i = t; i < p.d; i += 8) {
    y[i] = F32ToBf16(__fmul_rn(Bf16ToF32(p.w[i]), __fmul_rn(Bf16ToF32(x[i]), r)));
  }
}

__global__ void __launch_bounds__(kNormThreads) HeadRmsNormKernel(HeadRmsNormParams p) {
  const int64_t row = int64_t(blockIdx.x) * kNormRowsPerBlock + threadIdx.x / 8;
  const int t = threadIdx.x & 7;
  const bool active = row < p.rows;
  bf16* q = p.q + (active ? row : 0) * p.dim;
  float s = 0.0f;
  if (active) {
    for (int64_t i = t; i < p.dim; i += 8) {
      const float v = Bf16ToF32(q[i]);
      s = __fadd_rn(s, RoundBf16(__fmul_rn(v, v)));
    }
  }
  const float sum = CombineLanes(s);
  if (!active) return;
  const float mean = RoundBf16(__fmul_rn(sum, __fdiv_rn(1.0f, float(p.dim))));
  const float shifted = RoundBf16(__fadd_rn(mean, p.eps));
  const float r = RoundBf16(__fdiv_rn(1.0f, __fsqrt_rn(shifted)));
  for (int64_t i = t; i < p.dim; i += 8) q[i] = F32ToBf16(__fmul_rn(Bf16ToF32(q[i]), r));
}

}  // namespace

int LaunchRmsNorm(const RmsNormParams& p, CUstream_st* stream) {
  const int64_t blocks = NormBlocks(p.m);
  if (blocks > 0) RmsNormKernel<<<unsigned(blocks), kNormThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

int LaunchHeadRmsNorm(const HeadRmsNormParams& p, CUstream_st* stream) {
  const int64_t blocks = NormBlocks(p.rows);
  if (blocks > 0) HeadRmsNormKernel<<<unsigned(blocks), kNormThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace flotilla::kernels::cuda
