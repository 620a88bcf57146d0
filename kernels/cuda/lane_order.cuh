// Device side of the canonical lane order (kernels/ops.h): 8 consecutive threads of a warp each
// own one chain (thread t: elements t, t + 8, t + 16, ... in ascending order, fused multiply-add
// for dots), then ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7)) by shuffles. All 32 lanes of
// the warp must call; every thread of a group of 8 gets its group's sum.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"

namespace flotilla::kernels::cuda {

__device__ __forceinline__ float CombineLanes8(float s) {
  const unsigned all = 0xffffffffu;
  const float a = __fadd_rn(s, __shfl_xor_sync(all, s, 4));  // t < 4: s_t + s_(t+4)
  const float a2 = __shfl_xor_sync(all, a, 2);
  const float b = __fadd_rn(a, a2);  // t = 0: (s0+s4)+(s2+s6); t = 1: (s1+s5)+(s3+s7)
  const float b1 = __shfl_xor_sync(all, b, 1);
  const float total = (threadIdx.x & 1) == 0 ? __fadd_rn(b, b1) : __fadd_rn(b1, b);
  return __shfl_sync(all, total, int(threadIdx.x & 31) & ~7);
}

__device__ __forceinline__ float LoadF32(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float LoadF32(const bf16* p, int64_t i) { return Bf16ToF32(p[i]); }

// Chain t (t = threadIdx.x % 8) of the lane-order dot of a and b over n elements.
template <typename A, typename B>
__device__ __forceinline__ float DotChain(const A* a, const B* b, int64_t n) {
  float s = 0.0f;
  for (int64_t i = threadIdx.x & 7; i < n; i += 8) s = __fmaf_rn(LoadF32(a, i), LoadF32(b, i), s);
  return s;
}

}  // namespace flotilla::kernels::cuda
