// Hyper-connections (hyper_connection.h).
#include <cuda_runtime.h>

#include "common/hd_math.h"
#include "kernels/cpu/sinkhorn.h"
#include "kernels/cuda/hyper_connection.h"
#include "kernels/cuda/lane_order.cuh"

namespace flotilla::kernels::cuda {
namespace {

constexpr int64_t kMaxMix = (2 + kHcMaxStreams) * kHcMaxStreams;

// mix[j] = (fn_j · v) * r for j < n_mix and r = 1/sqrtf(mean(v²) + eps), v = f32(h) of one token
// (hc * d values), as the CPU's HcMixes forms them.
__device__ void Mixes(const bf16* h, const float* fn, int64_t width, int64_t n_mix, float eps,
                      float* mix) {
  const int group = threadIdx.x >> 3;
  __shared__ float r_shared;
  // Output n_mix is the sum of squares; outputs are dealt to the 32 groups in rounds (the whole
  // warp takes part in every shuffle round).
  for (int64_t base = 0; base <= n_mix; base += kHcThreads / 8) {
    const int64_t o = base + group;
    float s = 0.0f;
    if (o < n_mix) {
      s = DotChain(h, fn + o * width, width);
    } else if (o == n_mix) {
      s = DotChain(h, h, width);
    }
    const float total = CombineLanes8(s);
    if ((threadIdx.x & 7) == 0) {
      if (o < n_mix) mix[o] = total;
      if (o == n_mix) {
        const float inv_width = __fdiv_rn(1.0f, float(width));
        r_shared = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fmul_rn(total, inv_width), eps)));
      }
    }
  }
  __syncthreads();
  for (int64_t j = threadIdx.x; j < n_mix; j += kHcThreads) mix[j] = __fmul_rn(mix[j], r_shared);
  __syncthreads();
}

// y[c] = bf16(((w0 h0[c] + w1 h1[c]) + ...)), each product rounded on its own.
__device__ void Collapse(const bf16* h, const float* w, int64_t hc, int64_t d, bf16* y) {
  for (int64_t c = threadIdx.x; c < d; c += kHcThreads) {
    float acc = __fmul_rn(w[0], Bf16ToF32(h[c]));
    for (int64_t j = 1; j < hc; ++j) acc = __fadd_rn(acc, __fmul_rn(w[j], Bf16ToF32(h[j * d + c])));
    y[c] = F32ToBf16(acc);
  }
}

__global__ void __launch_bounds__(kHcThreads) HcPreKernel(HcPreParams p) {
  __shared__ float mix[kMaxMix];
  __shared__ float pre[kHcMaxStreams];
  const int64_t t = blockIdx.x;
  const int64_t width = p.hc * p.d, n_mix = (2 + p.hc) * p.hc;
  const bf16* h = p.h + t * width;
  Mixes(h, p.fn, width, n_mix, p.norm_eps, mix);
  if (threadIdx.x == 0) {
    SinkhornSplit(mix, p.scale, p.base, p.hc, p.sinkhorn_iters, p.hc_eps, pre, p.post + t * p.hc,
                  p.comb + t * p.hc * p.hc);
  }
  __syncthreads();
  Collapse(h, pre, p.hc, p.d, p.x + t * p.d);
}

__global__ void __launch_bounds__(kHcThreads) HcHeadKernel(HcHeadParams p) {
  __shared__ float mix[kHcMaxStreams];
  __shared__ float pre[kHcMaxStreams];
  const int64_t t = blockIdx.x;
  const int64_t width = p.hc * p.d;
  const bf16* h = p.h + t * width;
  Mixes(h, p.fn, width, p.hc, p.norm_eps, mix);
  if (threadIdx.x < p.hc) {
    const int64_t j = threadIdx.x;
    pre[j] = __fadd_rn(hd::SigmoidF(__fadd_rn(__fmul_rn(mix[j], p.scale[0]), p.base[j])), p.hc_eps);
  }
  __syncthreads();
  Collapse(h, pre, p.hc, p.d, p.y + t * p.d);
}

__global__ void __launch_bounds__(kHcPostThreads) HcPostKernel(HcPostParams p) {
  const int64_t n = p.m * p.hc * p.d;
  for (int64_t i = int64_t(blockIdx.x) * kHcPostThreads + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kHcPostThreads) {
    const int64_t c = i % p.d, k = (i / p.d) % p.hc, t = i / (p.d * p.hc);
    const bf16* res = p.res + t * p.hc * p.d;
    const float* comb = p.comb + t * p.hc * p.hc;
    float acc = __fmul_rn(comb[k], Bf16ToF32(res[c]));
    for (int64_t j = 1; j < p.hc; ++j) {
      acc = __fadd_rn(acc, __fmul_rn(comb[j * p.hc + k], Bf16ToF32(res[j * p.d + c])));
    }
    acc = __fadd_rn(acc, __fmul_rn(p.post[t * p.hc + k], Bf16ToF32(p.x[t * p.d + c])));
    p.h_out[i] = F32ToBf16(acc);
  }
}

}  // namespace

int LaunchHcPre(const HcPreParams& p, CUstream_st* stream) {
  if (p.m > 0) HcPreKernel<<<unsigned(p.m), kHcThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

int LaunchHcPost(const HcPostParams& p, CUstream_st* stream) {
  const int64_t blocks = HcPostBlocks(p);
  if (blocks > 0) HcPostKernel<<<unsigned(blocks), kHcPostThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

int LaunchHcHead(const HcHeadParams& p, CUstream_st* stream) {
  if (p.m > 0) HcHeadKernel<<<unsigned(p.m), kHcThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace flotilla::kernels::cuda
