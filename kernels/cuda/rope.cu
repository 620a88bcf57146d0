// RoPE (rope.h): a block per token, pairs over threads, heads in a loop.
#include <cuda_runtime.h>

#include "common/hd_math.h"
#include "kernels/cuda/rope.h"

namespace flotilla::kernels::cuda {
namespace {

__global__ void __launch_bounds__(kRopeThreads) RopeKernel(RopeParams p) {
  const int64_t t = blockIdx.x;
  const int64_t half = p.rope_dim / 2;
  const float pos = float(p.positions[t]);
  for (int64_t i = threadIdx.x; i < half; i += kRopeThreads) {
    float s, c;
    hd::SinCosF(__fmul_rn(pos, p.freqs[i]), &s, &c);
    if (p.inverse) s = -s;
    for (int64_t h = 0; h < p.num_heads; ++h) {
      bf16* x = p.x + t * p.ld + h * p.head_stride + p.rope_offset + 2 * i;
      const float re = Bf16ToF32(x[0]), im = Bf16ToF32(x[1]);
      x[0] = F32ToBf16(__fsub_rn(__fmul_rn(re, c), __fmul_rn(im, s)));
      x[1] = F32ToBf16(__fadd_rn(__fmul_rn(re, s), __fmul_rn(im, c)));
    }
  }
}

}  // namespace

int LaunchRope(const RopeParams& p, CUstream_st* stream) {
  const int64_t blocks = RopeBlocks(p);
  if (blocks > 0) RopeKernel<<<unsigned(blocks), kRopeThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace flotilla::kernels::cuda
