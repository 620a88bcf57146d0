// Router and SwiGLU (moe.h).
#include <cuda_runtime.h>

#include "common/hd_math.h"
#include "kernels/cuda/moe.h"

namespace flotilla::kernels::cuda {
namespace {

// Whether (x, a) comes before (y, b) in the CPU router's order. b < 0: no candidate.
__device__ __forceinline__ bool Before(float x, int a, float y, int b) {
  if (b < 0) return a >= 0;
  if (a < 0) return false;
  const bool xn = hd::IsNan(x), yn = hd::IsNan(y);
  if (xn != yn) return yn;
  if (!xn && x != y) return x > y;
  return a < b;
}

__global__ void __launch_bounds__(kRouteThreads) RouteKernel(RouteParams p) {
  extern __shared__ float shared[];
  float* score = shared;                                              // [num_experts]
  float* biased = shared + p.num_experts;                             // [num_experts]
  int32_t* idx = reinterpret_cast<int32_t*>(biased + p.num_experts);  // [kRouteMaxTopK]
  uint8_t* taken = reinterpret_cast<uint8_t*>(idx + kRouteMaxTopK);   // [num_experts]
  const int64_t t = blockIdx.x;
  const float* z = p.logits + t * p.num_experts;
  for (int64_t e = threadIdx.x; e < p.num_experts; e += kRouteThreads) {
    score[e] = hd::SqrtSoftplusF(z[e]);
    if (p.bias != nullptr) biased[e] = __fadd_rn(score[e], p.bias[e]);
    taken[e] = 0;
  }
  __syncthreads();
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x;
  int64_t top_k = p.top_k;  // this row's K
  if (p.row_top_k != nullptr) {
    const int64_t kt = p.row_top_k[t];
    top_k = kt < 1 ? 1 : (kt > p.top_k ? p.top_k : kt);
  }
  if (p.hash_ids != nullptr) {
    for (int64_t i = lane; i < top_k; i += 32) idx[i] = int32_t(p.hash_ids[t * p.ld_hash + i]);
  } else {
    // Selection: round i takes the first expert in the order not yet taken.
    for (int64_t i = 0; i < top_k; ++i) {
      float best_v = 0.0f;
      int best = -1;
      for (int64_t e = lane; e < p.num_experts; e += 32) {
        if (taken[e]) continue;
        if (Before(biased[e], int(e), best_v, best)) {
          best_v = biased[e];
          best = int(e);
        }
      }
      for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best_v, off);
        const int o = __shfl_xor_sync(0xffffffffu, best, off);
        if (Before(ov, o, best_v, best)) {
          best_v = ov;
          best = o;
        }
      }
      if (lane == 0 && best >= 0) taken[best] = 1;
      __syncwarp();
      if (lane == 0) idx[i] = best;
    }
  }
  __syncwarp();
  if (lane != 0) return;
  const float nan = __int_as_float(0x7fc00000);
  float sum = 0.0f;
  for (int64_t i = 0; i < top_k; ++i) {
    const int32_t e = idx[i];
    sum = __fadd_rn(sum, e >= 0 && e < p.num_experts ? score[e] : nan);
  }
  for (int64_t i = 0; i < top_k; ++i) {
    const int32_t e = idx[i];
    const float s = e >= 0 && e < p.num_experts ? score[e] : nan;
    p.expert_idx[t * p.top_k + i] = e;
    p.weights[t * p.top_k + i] = __fmul_rn(__fdiv_rn(s, sum), p.route_scale);
  }
  // Slots past the row's K repeat its first expert with weight 0.
  for (int64_t i = top_k; i < p.top_k; ++i) {
    p.expert_idx[t * p.top_k + i] = idx[0];
    p.weights[t * p.top_k + i] = 0.0f;
  }
}

__global__ void __launch_bounds__(kSwiGluThreads) SwiGluKernel(SwiGluParams p) {
  const int64_t n = p.m * p.inter;
  for (int64_t i = int64_t(blockIdx.x) * kSwiGluThreads + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kSwiGluThreads) {
    const int64_t r = i / p.inter, c = i % p.inter;
    const float gate = Bf16ToF32(p.gate[r * p.ld_in + c]), up = Bf16ToF32(p.up[r * p.ld_in + c]);
    const float g = p.limit < gate ? p.limit : gate;  // std::min: NaN passes through
    const float u = up < -p.limit ? -p.limit : (p.limit < up ? p.limit : up);  // std::clamp
    float a = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, hd::ExpF(-g))), u);
    if (p.row_weight != nullptr) a = __fmul_rn(p.row_weight[r], a);
    p.out[r * p.ld_out + c] = F32ToBf16(a);
  }
}

}  // namespace

int LaunchRoute(const RouteParams& p, CUstream_st* stream) {
  if (p.m > 0) {
    RouteKernel<<<unsigned(p.m), kRouteThreads, size_t(RouteSharedBytes(p)), stream>>>(p);
  }
  return int(cudaGetLastError());
}

int LaunchSwiGlu(const SwiGluParams& p, CUstream_st* stream) {
  const int64_t blocks = SwiGluBlocks(p);
  if (blocks > 0) SwiGluKernel<<<unsigned(blocks), kSwiGluThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace flotilla::kernels::cuda
