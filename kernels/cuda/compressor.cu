// Softmax pooling of compressed entries (compressor.h).
#include <cuda_runtime.h>

#include "common/hd_math.h"
#include "kernels/cuda/compressor.h"

namespace flotilla::kernels::cuda {
namespace {

__global__ void __launch_bounds__(kCompressThreads) CompressPoolKernel(CompressPoolParams p) {
  const int64_t n = p.num_entries * p.d;
  for (int64_t i = int64_t(blockIdx.x) * kCompressThreads + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kCompressThreads) {
    const int64_t e = i / p.d, c = i % p.d;
    const int64_t* off = p.slot_offsets + e * p.n_slots;
    bool bad = false;
    for (int64_t s = 0; s < p.n_slots; ++s) {
      if (off[s] < 0 || off[s] > p.state_elements - p.d) {
        if (c == 0 && atomicCAS(&p.error->code, 0, kDeviceErrorSlotOffset) == 0) {
          p.error->position = e * p.n_slots + s;
          p.error->value = off[s];
          p.error->limit = p.state_elements - p.d + 1;
        }
        bad = true;
        break;
      }
    }
    if (bad) continue;
    float mx = p.score[off[0] + c];
    for (int64_t s = 1; s < p.n_slots; ++s) mx = fmaxf(mx, p.score[off[s] + c]);
    float sum = 0.0f;
    for (int64_t s = 0; s < p.n_slots; ++s) {
      sum = __fadd_rn(sum, hd::ExpF(__fsub_rn(p.score[off[s] + c], mx)));
    }
    float out = 0.0f;
    for (int64_t s = 0; s < p.n_slots; ++s) {
      const float w = __fdiv_rn(hd::ExpF(__fsub_rn(p.score[off[s] + c], mx)), sum);
      out = __fadd_rn(out, __fmul_rn(w, p.kv[off[s] + c]));
    }
    p.out[i] = out;
  }
}

}  // namespace

int LaunchCompressPool(const CompressPoolParams& p, CUstream_st* stream) {
  const int64_t blocks = CompressPoolBlocks(p);
  if (blocks > 0) CompressPoolKernel<<<unsigned(blocks), kCompressThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace flotilla::kernels::cuda
