// The indexer's ops (indexer.h).
#include <cuda_runtime.h>

#include "kernels/cuda/indexer.h"

namespace flotilla::kernels::cuda {
namespace {

// One block per row: the row in shared memory as f32, one __syncthreads per butterfly stage;
// every element sees the CPU's stage order (a + b, a - b).
__global__ void HadamardKernel(HadamardParams p, float scale) {
  extern __shared__ float v[];
  bf16* row = p.x + int64_t(blockIdx.x) * p.dim;
  for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) v[i] = Bf16ToF32(row[i]);
  for (int64_t s = 1; s < p.dim; s <<= 1) {
    __syncthreads();
    for (int64_t pair = threadIdx.x; pair < p.dim / 2; pair += blockDim.x) {
      const int64_t i = (pair / s) * 2 * s + pair % s;
      const float a = v[i], b = v[i + s];
      v[i] = __fadd_rn(a, b);
      v[i + s] = __fsub_rn(a, b);
    }
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < p.dim; i += blockDim.x) row[i] = F32ToBf16(__fmul_rn(v[i], scale));
}

constexpr int kScoreThreads = 128;

// A thread per key; q (f32) and w in shared memory. Per head: 8 lane-order fma chains,
// combined ((s0+s4)+(s2+s6))+((s1+s5)+(s3+s7)), bf16, relu, times w, bf16, summed in head order.
__global__ void __launch_bounds__(kScoreThreads) IndexerScoresKernel(IndexerScoresParams p) {
  extern __shared__ float smem[];
  float* q = smem;                       // [num_heads * dim]
  float* w = smem + p.num_heads * p.dim;  // [num_heads]
  for (int64_t i = threadIdx.x; i < p.num_heads * p.dim; i += blockDim.x) q[i] = Bf16ToF32(p.q[i]);
  for (int64_t h = threadIdx.x; h < p.num_heads; h += blockDim.x) w[h] = Bf16ToF32(p.w[h]);
  __syncthreads();
  const int64_t j = int64_t(blockIdx.x) * kScoreThreads + threadIdx.x;
  if (j >= p.n) return;
  const bf16* key = p.keys + j * p.ldk;
  float acc = 0.0f;
  for (int64_t h = 0; h < p.num_heads; ++h) {
    const float* qh = q + h * p.dim;
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t k0 = 0;
    for (; k0 + 8 <= p.dim; k0 += 8) {
#pragma unroll
      for (int l = 0; l < 8; ++l) s[l] = __fmaf_rn(qh[k0 + l], Bf16ToF32(key[k0 + l]), s[l]);
    }
#pragma unroll
    for (int l = 0; l < 8; ++l) {
      if (k0 + l < p.dim) s[l] = __fmaf_rn(qh[k0 + l], Bf16ToF32(key[k0 + l]), s[l]);
    }
    const float dot = __fadd_rn(__fadd_rn(__fadd_rn(s[0], s[4]), __fadd_rn(s[2], s[6])),
                                __fadd_rn(__fadd_rn(s[1], s[5]), __fadd_rn(s[3], s[7])));
    const float d = RoundBf16(dot);
    const float relu = d > 0.0f ? d : 0.0f;
    acc = __fadd_rn(acc, RoundBf16(__fmul_rn(relu, w[h])));
  }
  p.scores[j] = acc;
}

constexpr int kTopKThreads = 1024;

__global__ void __launch_bounds__(kTopKThreads) TopKKernel(TopKParams p) {
  __shared__ unsigned hist[256];
  __shared__ unsigned long long keys[kTopKMax];
  __shared__ unsigned long long prefix, mask;
  __shared__ long long remaining;
  __shared__ unsigned count;
  const int tid = threadIdx.x;
  if (tid == 0) {
    prefix = 0;
    mask = 0;
    remaining = p.k;
    count = 0;
  }
  // Radix selection of the k-th largest key, 8 bits a pass from the top. Keys are unique (the
  // index is part of them), so the k-th is one exact value.
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int d = tid; d < 256; d += kTopKThreads) hist[d] = 0;
    __syncthreads();
    const unsigned long long pre = prefix, msk = mask;
    for (int64_t i = tid; i < p.n; i += kTopKThreads) {
      const unsigned long long key = TopKKey(p.scores[i], uint32_t(i));
      if ((key & msk) == pre) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (tid == 0) {
      long long above = 0;
      for (int d = 255; d >= 0; --d) {
        if (above + hist[d] >= remaining) {
          remaining -= above;
          prefix |= (unsigned long long)d << shift;
          mask |= 255ull << shift;
          break;
        }
        above += hist[d];
      }
    }
    __syncthreads();
  }
  const unsigned long long kth = prefix;
  for (int64_t i = tid; i < p.n; i += kTopKThreads) {
    const unsigned long long key = TopKKey(p.scores[i], uint32_t(i));
    if (key >= kth) keys[atomicAdd(&count, 1u)] = key;  // exactly k of them
  }
  // Pad to a power of two with 0, which sorts after every real key (its index would be 2^32-1).
  int size = 1;
  while (size < p.k) size <<= 1;
  __syncthreads();
  for (int i = int(p.k) + tid; i < size; i += kTopKThreads) keys[i] = 0;
  // Bitonic sort, descending.
  for (int block = 2; block <= size; block <<= 1) {
    for (int stride = block / 2; stride > 0; stride >>= 1) {
      __syncthreads();
      for (int i = tid; i < size; i += kTopKThreads) {
        const int j = i ^ stride;
        if (j <= i) continue;
        const bool descending = (i & block) == 0;
        const unsigned long long a = keys[i], b = keys[j];
        if (descending ? a < b : a > b) {
          keys[i] = b;
          keys[j] = a;
        }
      }
    }
  }
  __syncthreads();
  for (int i = tid; i < p.k; i += kTopKThreads) p.idx[i] = int32_t(~uint32_t(keys[i]));
}

}  // namespace

int LaunchHadamard(const HadamardParams& p, CUstream_st* stream) {
  if (p.rows == 0) return int(cudaSuccess);
  const int threads = int(p.dim / 2 < 512 ? p.dim / 2 : 512);
  HadamardKernel<<<unsigned(p.rows), threads, size_t(p.dim) * sizeof(float), stream>>>(p, HadamardScale(p.dim));
  return int(cudaGetLastError());
}

int LaunchIndexerScores(const IndexerScoresParams& p, CUstream_st* stream) {
  if (p.n == 0) return int(cudaSuccess);
  const size_t smem = size_t(p.num_heads * p.dim + p.num_heads) * sizeof(float);
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(IndexerScoresKernel,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return int(e);
  }
  IndexerScoresKernel<<<unsigned((p.n + kScoreThreads - 1) / kScoreThreads), kScoreThreads, smem,
                        stream>>>(p);
  return int(cudaGetLastError());
}

int LaunchTopK(const TopKParams& p, CUstream_st* stream) {
  TopKKernel<<<1, kTopKThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace flotilla::kernels::cuda
