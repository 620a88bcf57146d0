// MoE permutation (moe_permute.h).
#include <cuda_runtime.h>

#include "kernels/cuda/moe_permute.h"

namespace flotilla::kernels::cuda {
namespace {

__global__ void __launch_bounds__(kMoePermuteThreads) MoePermuteKernel(MoePermuteParams p) {
  __shared__ int32_t count[kMoePermuteMaxExperts];
  const int64_t total = p.n * p.k;
  for (int64_t e = threadIdx.x; e < p.num_experts; e += kMoePermuteThreads) count[e] = 0;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < total; i += kMoePermuteThreads) {
    const int64_t e = int64_t(p.expert_idx[i]) - p.first_expert;
    if (e >= 0 && e < p.num_experts) atomicAdd(&count[e], 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t sum = 0;
    p.offsets[0] = 0;
    for (int64_t e = 0; e < p.num_experts; ++e) {
      const int32_t c = count[e];
      count[e] = int32_t(sum);  // becomes expert e's first position
      sum += c;
      p.offsets[e + 1] = sum;
    }
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned lower = (1u << lane) - 1u;
  for (int64_t e = warp; e < p.num_experts; e += kMoePermuteThreads / 32) {
    int64_t cursor = count[e];
    for (int64_t base = 0; base < total; base += 32) {
      const int64_t i = base + lane;
      const bool mine = i < total && int64_t(p.expert_idx[i]) - p.first_expert == e;
      const unsigned ballot = __ballot_sync(0xffffffffu, mine);
      if (mine) p.order[cursor + __popc(ballot & lower)] = int32_t(i);
      cursor += __popc(ballot);
    }
  }
}

__device__ __forceinline__ void RecordError(DeviceError* error, int32_t code, int64_t position,
                                            int64_t value, int64_t limit) {
  if (atomicCAS(&error->code, 0, code) == 0) {
    error->position = position;
    error->value = value;
    error->limit = limit;
  }
}

template <bool kGather, bool kVector>
__global__ void __launch_bounds__(kRowCopyThreads) RowCopyKernel(RowCopyParams p) {
  for (int64_t i = blockIdx.x; i < p.rows; i += gridDim.x) {
    const int64_t index = p.index[i];
    const int64_t row = index / p.divisor;
    if (index < 0 || row >= p.indexed_rows) {
      if (threadIdx.x == 0) {
        RecordError(p.error, kGather ? kDeviceErrorGatherIndex : kDeviceErrorScatterIndex, i,
                    index < 0 ? index : row, p.indexed_rows);
      }
      continue;
    }
    const uint8_t* src = p.src + (kGather ? row : i) * p.ld_src;
    uint8_t* dst = p.dst + (kGather ? i : row) * p.ld_dst;
    if (kVector) {
      const uint4* s = reinterpret_cast<const uint4*>(src);
      uint4* d = reinterpret_cast<uint4*>(dst);
      for (int64_t j = threadIdx.x; j < p.row_bytes / 16; j += kRowCopyThreads) d[j] = s[j];
    } else {
      for (int64_t j = threadIdx.x; j < p.row_bytes; j += kRowCopyThreads) dst[j] = src[j];
    }
  }
}

template <bool kGather>
int LaunchRowCopy(const RowCopyParams& p, CUstream_st* stream) {
  const int64_t blocks = RowCopyBlocks(p);
  if (blocks > 0) {
    if (RowCopyVectorized(p)) {
      RowCopyKernel<kGather, true><<<unsigned(blocks), kRowCopyThreads, 0, stream>>>(p);
    } else {
      RowCopyKernel<kGather, false><<<unsigned(blocks), kRowCopyThreads, 0, stream>>>(p);
    }
  }
  return int(cudaGetLastError());
}

__global__ void __launch_bounds__(kMoeCombineThreads) MoeCombineKernel(MoeCombineParams p) {
  __shared__ int32_t order[kMoeCombineMaxK];
  const int64_t t = blockIdx.x;
  if (threadIdx.x == 0) {
    // Stable insertion sort of the slots by expert id (std::stable_sort's result).
    const int32_t* idx = p.expert_idx + t * p.k;
    for (int64_t s = 0; s < p.k; ++s) {
      int64_t j = s;
      while (j > 0 && idx[order[j - 1]] > idx[s]) {
        order[j] = order[j - 1];
        --j;
      }
      order[j] = int32_t(s);
    }
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < p.d; c += kMoeCombineThreads) {
    float y = 0.0f;
    for (int64_t s = 0; s < p.k; ++s) {
      y = __fadd_rn(y, Bf16ToF32(p.routed[(t * p.k + order[s]) * p.d + c]));
    }
    if (p.shared != nullptr) y = __fadd_rn(y, Bf16ToF32(p.shared[t * p.d + c]));
    p.out[t * p.d + c] = F32ToBf16(y);
  }
}

}  // namespace

int LaunchMoePermute(const MoePermuteParams& p, CUstream_st* stream) {
  MoePermuteKernel<<<1, kMoePermuteThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

int LaunchGatherRows(const RowCopyParams& p, CUstream_st* stream) {
  return LaunchRowCopy<true>(p, stream);
}

int LaunchScatterRows(const RowCopyParams& p, CUstream_st* stream) {
  return LaunchRowCopy<false>(p, stream);
}

int LaunchMoeCombine(const MoeCombineParams& p, CUstream_st* stream) {
  if (p.n > 0 && p.d > 0) MoeCombineKernel<<<unsigned(p.n), kMoeCombineThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace flotilla::kernels::cuda
