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

// Pools channel c < d of one entry from the state's slots (the CPU's CompressPool on the rows
// worker/attention.cc points it at).
__device__ float PoolChannel(const float* kv, const float* score, int64_t width, int64_t d,
                             int64_t ratio, bool overlap, int64_t c) {
  const int64_t n_slots = overlap ? 2 * ratio : ratio;
  const auto at = [&](int64_t s) { return s * width + (s >= ratio ? d : 0) + c; };
  float mx = score[at(0)];
  for (int64_t s = 1; s < n_slots; ++s) mx = fmaxf(mx, score[at(s)]);
  float sum = 0.0f;
  for (int64_t s = 0; s < n_slots; ++s) sum = __fadd_rn(sum, hd::ExpF(__fsub_rn(score[at(s)], mx)));
  float out = 0.0f;
  for (int64_t s = 0; s < n_slots; ++s) {
    const float w = __fdiv_rn(hd::ExpF(__fsub_rn(score[at(s)], mx)), sum);
    out = __fadd_rn(out, __fmul_rn(w, kv[at(s)]));
  }
  return out;
}

__global__ void __launch_bounds__(kCompressorUpdateThreads)
    CompressorUpdateKernel(CompressorUpdateParams p) {
  int64_t entry = 0;
  for (int64_t i = 0; i < p.n; ++i) {
    const int64_t pos = p.start_pos + i, phase = pos % p.ratio;
    const int64_t slot = (p.overlap ? p.ratio : 0) + phase;
    for (int64_t c = threadIdx.x; c < p.width; c += kCompressorUpdateThreads) {
      p.state_kv[slot * p.width + c] = p.k[i * p.width + c];
      p.state_score[slot * p.width + c] =
          __fadd_rn(p.g[i * p.width + c], p.ape[phase * p.width + c]);
    }
    if ((pos + 1) % p.ratio != 0) continue;
    __syncthreads();  // the slot rows are whole before any channel pools from them
    for (int64_t c = threadIdx.x; c < p.d; c += kCompressorUpdateThreads) {
      p.pooled[entry * p.d + c] =
          PoolChannel(p.state_kv, p.state_score, p.width, p.d, p.ratio, p.overlap, c);
    }
    ++entry;
    __syncthreads();  // pooled from the slots before they move or are overwritten
    if (p.overlap) {  // the finished block becomes "previous"
      for (int64_t j = threadIdx.x; j < p.ratio * p.width; j += kCompressorUpdateThreads) {
        p.state_kv[j] = p.state_kv[p.ratio * p.width + j];
        p.state_score[j] = p.state_score[p.ratio * p.width + j];
      }
      __syncthreads();
    }
  }
}

}  // namespace

int LaunchCompressorUpdate(const CompressorUpdateParams& p, CUstream_st* stream) {
  if (p.n > 0) CompressorUpdateKernel<<<1, kCompressorUpdateThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

int LaunchCompressPool(const CompressPoolParams& p, CUstream_st* stream) {
  const int64_t blocks = CompressPoolBlocks(p);
  if (blocks > 0) CompressPoolKernel<<<unsigned(blocks), kCompressThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace flotilla::kernels::cuda
