// Helpers of the CUDA benchmarks: error checks, event timing and the device's measured read
// bandwidth (the ceiling of every memory-bound kernel).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>

#define BENCH_CUDA_OK(call)                                                                    \
  do {                                                                                         \
    cudaError_t e_ = (call);                                                                   \
    if (e_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(1);                                                                            \
    }                                                                                          \
  } while (0)

namespace flotilla::bench {

__global__ void StreamReadKernel(const uint4* p, size_t n, uint32_t* sink) {
  uint32_t acc = 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const uint4 v = __ldcs(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) sink[0] = acc;  // keeps the loads
}

// Mean milliseconds of `fn` over `reps` runs after one warm-up run.
inline float TimeMs(const std::function<void()>& fn, int reps) {
  cudaEvent_t start, stop;
  BENCH_CUDA_OK(cudaEventCreate(&start));
  BENCH_CUDA_OK(cudaEventCreate(&stop));
  fn();
  BENCH_CUDA_OK(cudaEventRecord(start));
  for (int i = 0; i < reps; ++i) fn();
  BENCH_CUDA_OK(cudaEventRecord(stop));
  BENCH_CUDA_OK(cudaEventSynchronize(stop));
  float ms = 0;
  BENCH_CUDA_OK(cudaEventElapsedTime(&ms, start, stop));
  BENCH_CUDA_OK(cudaGetLastError());
  BENCH_CUDA_OK(cudaEventDestroy(start));
  BENCH_CUDA_OK(cudaEventDestroy(stop));
  return ms / reps;
}

// GB/s of streaming 4 GiB once.
inline double MeasureReadBandwidth(int sms) {
  const size_t bytes = size_t(4) << 30;
  uint4* big;
  uint32_t* sink;
  BENCH_CUDA_OK(cudaMalloc(&big, bytes));
  BENCH_CUDA_OK(cudaMalloc(&sink, 64));
  BENCH_CUDA_OK(cudaMemset(big, 1, bytes));
  const float ms =
      TimeMs([&] { StreamReadKernel<<<sms * 8, 512>>>(big, bytes / 16, sink); }, 5);
  BENCH_CUDA_OK(cudaFree(big));
  BENCH_CUDA_OK(cudaFree(sink));
  return bytes / (ms * 1e-3) / 1e9;
}

}  // namespace flotilla::bench
