// act_quant (act_quant.h): one warp per group of `block` elements, block / 32 per lane.
#include <cuda_runtime.h>

#include "kernels/cuda/act_quant.h"

namespace flotilla::kernels::cuda {
namespace {

template <int kPerLane>
__global__ void __launch_bounds__(kActQuantThreads) ActQuantFp8Kernel(ActQuantFp8Params p) {
  const int64_t groups_per_row = p.k / p.block;
  const int64_t group = int64_t(blockIdx.x) * (kActQuantThreads / 32) + threadIdx.x / 32;
  if (group >= p.m * groups_per_row) return;  // whole warps leave together
  const int lane = threadIdx.x % 32;
  const int64_t row = group / groups_per_row, g = group % groups_per_row;
  const bf16* x = p.x + row * p.ldx + g * p.block + lane * kPerLane;

  float v[kPerLane];
  float amax = 0.0f;
  bool finite = true;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    v[i] = Bf16ToF32(x[i]);
    const float a = fabsf(v[i]);
    finite = finite && a <= 3.4028235e38f;
    amax = fmaxf(amax, a);
  }
  // Non-negative floats order as their bit patterns: the maximum is exact and order-free.
  amax = __uint_as_float(__reduce_max_sync(0xffffffffu, __float_as_uint(amax)));
  finite = __all_sync(0xffffffffu, finite);

  fp8* q = p.q + row * p.k + g * p.block + lane * kPerLane;
  if (!finite) {
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) q[i] = 0x7f;
    if (lane == 0) p.scale[row * groups_per_row + g] = 0xff;
    return;
  }
  const e8m0 scale = CeilPow2ScaleBits(fmaxf(amax, 1e-4f) * (1.0f / 448.0f));
  const float s = E8m0ToF32(scale);
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    q[i] = F32ToFp8(fminf(fmaxf(__fdiv_rn(v[i], s), -448.0f), 448.0f));
  }
  if (lane == 0) p.scale[row * groups_per_row + g] = scale;
}

}  // namespace

int LaunchActQuantFp8(const ActQuantFp8Params& p, CUstream_st* stream) {
  const int64_t blocks = ActQuantFp8Blocks(p);
  if (blocks == 0) return int(cudaSuccess);
  switch (p.block) {
    case 32: ActQuantFp8Kernel<1><<<unsigned(blocks), kActQuantThreads, 0, stream>>>(p); break;
    case 64: ActQuantFp8Kernel<2><<<unsigned(blocks), kActQuantThreads, 0, stream>>>(p); break;
    default: ActQuantFp8Kernel<4><<<unsigned(blocks), kActQuantThreads, 0, stream>>>(p); break;
  }
  return int(cudaGetLastError());
}

}  // namespace flotilla::kernels::cuda
