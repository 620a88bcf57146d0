// Token sampling (sampling.h): a block per row.
#include <cuda_runtime.h>

#include "common/hd_math.h"
#include "kernels/cuda/sampling.h"

namespace flotilla::kernels::cuda {
namespace {

// (value, index) is a better argmax candidate than (best_v, best_i): larger, or equal (-0 == +0)
// with a lower index; index < 0 is no candidate.
__device__ __forceinline__ bool Better(float v, int32_t i, float best_v, int32_t best_i) {
  if (i < 0) return false;
  if (best_i < 0) return true;
  return v > best_v || (v == best_v && i < best_i);
}

// Ascending bitonic sort of keys[0, n) (n a power of two) by the whole block.
__device__ void BitonicSort(uint64_t* keys, int64_t n) {
  for (int64_t size = 2; size <= n; size <<= 1) {
    for (int64_t stride = size >> 1; stride > 0; stride >>= 1) {
      for (int64_t i = threadIdx.x; i < n; i += kSampleThreads) {
        const int64_t j = i ^ stride;
        if (j > i) {
          const uint64_t a = keys[i], b = keys[j];
          const bool ascending = (i & size) == 0;
          if ((a > b) == ascending) {
            keys[i] = b;
            keys[j] = a;
          }
        }
      }
      __syncthreads();
    }
  }
}

__global__ void __launch_bounds__(kSampleThreads) SampleKernel(SampleParams p) {
  __shared__ float warp_v[kSampleThreads / 32];
  __shared__ int32_t warp_i[kSampleThreads / 32];
  __shared__ int64_t warp_nan[kSampleThreads / 32];
  __shared__ float top_shared;
  __shared__ int32_t argmax_shared;
  __shared__ int64_t valid_shared;
  __shared__ unsigned long long count_shared;
  __shared__ int32_t pick_shared;
  const int64_t row = blockIdx.x;
  const float* logits = p.logits + row * p.ld;
  const SampleRow rp = p.row_params[row];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  // The largest non-NaN logit (lowest index among equals) and the NaN count.
  float best_v = 0.0f;
  int32_t best_i = -1;
  int64_t nans = 0;
  for (int64_t i = threadIdx.x; i < p.vocab; i += kSampleThreads) {
    const float l = logits[i];
    if (hd::IsNan(l)) {
      ++nans;
    } else if (Better(l, int32_t(i), best_v, best_i)) {
      best_v = l;
      best_i = int32_t(i);
    }
  }
  for (int off = 16; off > 0; off >>= 1) {
    const float v = __shfl_xor_sync(0xffffffffu, best_v, off);
    const int32_t i = __shfl_xor_sync(0xffffffffu, best_i, off);
    if (Better(v, i, best_v, best_i)) {
      best_v = v;
      best_i = i;
    }
    nans += __shfl_xor_sync(0xffffffffu, nans, off);
  }
  if (lane == 0) {
    warp_v[warp] = best_v;
    warp_i[warp] = best_i;
    warp_nan[warp] = nans;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float v = 0.0f;
    int32_t i = -1;
    int64_t total_nan = 0;
    for (int w = 0; w < kSampleThreads / 32; ++w) {
      if (Better(warp_v[w], warp_i[w], v, i)) {
        v = warp_v[w];
        i = warp_i[w];
      }
      total_nan += warp_nan[w];
    }
    top_shared = i < 0 ? -__int_as_float(0x7f800000) : v;
    // Argmax as the sequential scan: a NaN first logit is never replaced.
    argmax_shared = hd::IsNan(logits[0]) || i < 0 ? 0 : i;
    valid_shared = p.vocab - total_nan;
  }
  __syncthreads();
  const float top = top_shared;
  if (rp.greedy != 0 || !(rp.temperature > 0.0f) ||
      (__float_as_uint(top) & 0x7fffffffu) == 0x7f800000u) {
    if (threadIdx.x == 0) p.tokens[row] = argmax_shared;
    return;
  }
  const int64_t num_valid = valid_shared;
  const int64_t k = rp.top_k > 0 && rp.top_k < num_valid ? rp.top_k : num_valid;
  const double inv_t = hd::DDiv(1.0, double(rp.temperature)), top_d = double(top);
  const int64_t padded = SampleWorkspaceElements(p.vocab) / 2;
  uint64_t* keys = p.workspace + row * 2 * padded;
  double* prob = reinterpret_cast<double*>(keys + padded);

  for (int pass = 0; pass < 2; ++pass) {
    const bool prune = pass == 0;
    if (threadIdx.x == 0) count_shared = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < p.vocab; i += kSampleThreads) {
      const float l = logits[i];
      if (hd::IsNan(l)) continue;
      if (prune && !(hd::DMul(hd::DSub(double(l), top_d), inv_t) >= kSampleNegligibleScaledLogit)) {
        continue;
      }
      keys[atomicAdd(&count_shared, 1ull)] = SamplePackedKey(l, i);
    }
    __syncthreads();
    const int64_t m = int64_t(count_shared);
    int64_t n2 = 1;
    while (n2 < m) n2 <<= 1;
    for (int64_t i = m + threadIdx.x; i < n2; i += kSampleThreads) keys[i] = ~uint64_t(0);
    __syncthreads();
    BitonicSort(keys, n2);
    const int64_t n = k < m ? k : m;
    for (int64_t i = threadIdx.x; i < n; i += kSampleThreads) {
      const float l = logits[uint32_t(keys[i])];
      prob[i] = hd::ExpD(hd::DMul(hd::DSub(double(l), top_d), inv_t));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      pick_shared = SampleDistribute(keys, prob, k, m, rp.top_p, rp.uniform);
    }
    __syncthreads();
    if (pick_shared >= 0) {
      if (threadIdx.x == 0) p.tokens[row] = pick_shared;
      return;
    }
    __syncthreads();  // every thread has read pick_shared before the next pass resets state
  }
  // Unreachable: over every candidate the last kept one is always there (n == k).
  if (threadIdx.x == 0) p.tokens[row] = argmax_shared;
}

}  // namespace

int LaunchSample(const SampleParams& p, CUstream_st* stream) {
  if (p.rows > 0) SampleKernel<<<unsigned(p.rows), kSampleThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace flotilla::kernels::cuda
