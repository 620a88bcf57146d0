// Helpers of the CUDA benchmarks: error checks, event timing and the device's measured read
// bandwidth (the ceiling of every memory-bound kernel).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>

#include "common/dtype.h"

#define BENCH_CUDA_OK(call)                                                                      \
  do {                                                                                           \
    cudaError_t e_ = (call);                                                                     \
    if (e_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

#define BENCH_LT_OK(call)                                                                \
  do {                                                                                   \
    cublasStatus_t s_ = (call);                                                          \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                   \
      std::fprintf(stderr, "%s:%d %s: status %d\n", __FILE__, __LINE__, #call, int(s_)); \
      std::exit(1);                                                                      \
    }                                                                                    \
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
  const float ms = TimeMs([&] { StreamReadKernel<<<sms * 8, 512>>>(big, bytes / 16, sink); }, 5);
  BENCH_CUDA_OK(cudaFree(big));
  BENCH_CUDA_OK(cudaFree(sink));
  return bytes / (ms * 1e-3) / 1e9;
}

// Hashed E4M3 codes, NaN codes excluded.
__global__ void FillCodes(fp8* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    uint32_t x = uint32_t(i) * 2654435761u ^ seed;
    x ^= x >> 13;
    x *= 0x5bd1e995u;
    const fp8 c = fp8(x >> 24);
    p[i] = (c & 0x7f) == 0x7f ? fp8(c ^ 1) : c;
  }
}

// n such codes in new device memory.
inline fp8* RandomCodes(size_t n, uint32_t seed) {
  fp8* p;
  BENCH_CUDA_OK(cudaMalloc(&p, n));
  FillCodes<<<1024, 256>>>(p, n, seed);
  BENCH_CUDA_OK(cudaGetLastError());
  return p;
}

// FLOP/s of cuBLASLt's FP8 GEMM with per-tensor scales at size^3 (TN, bf16 out).
inline double MeasureFp8Peak(cublasLtHandle_t lt, int64_t size) {
  fp8* a = RandomCodes(size * size, 1);
  fp8* b = RandomCodes(size * size, 2);
  bf16* d;
  float* one;
  void* ws;
  const size_t ws_bytes = size_t(32) << 20;
  BENCH_CUDA_OK(cudaMalloc(&d, size * size * 2));
  BENCH_CUDA_OK(cudaMalloc(&one, 4));
  BENCH_CUDA_OK(cudaMalloc(&ws, ws_bytes));
  const float host_one = 1.0f;
  BENCH_CUDA_OK(cudaMemcpy(one, &host_one, 4, cudaMemcpyHostToDevice));
  cublasLtMatmulDesc_t desc;
  BENCH_LT_OK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t t = CUBLAS_OP_T, n = CUBLAS_OP_N;
  BENCH_LT_OK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t)));
  BENCH_LT_OK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &n, sizeof(n)));
  BENCH_LT_OK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &one,
                                             sizeof(one)));
  BENCH_LT_OK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &one,
                                             sizeof(one)));
  cublasLtMatrixLayout_t la, lb, ld;
  BENCH_LT_OK(cublasLtMatrixLayoutCreate(&la, CUDA_R_8F_E4M3, size, size, size));
  BENCH_LT_OK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_8F_E4M3, size, size, size));
  BENCH_LT_OK(cublasLtMatrixLayoutCreate(&ld, CUDA_R_16BF, size, size, size));
  cublasLtMatmulPreference_t pref;
  BENCH_LT_OK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t wsb = ws_bytes;
  BENCH_LT_OK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                   &wsb, sizeof(wsb)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  BENCH_LT_OK(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, ld, ld, pref, 1, &result, &found));
  if (found == 0) {
    std::fprintf(stderr, "no cuBLASLt FP8 algorithm for the peak measurement\n");
    std::exit(1);
  }
  const float alpha = 1.0f, beta = 0.0f;
  const float ms = TimeMs(
      [&] {
        BENCH_LT_OK(cublasLtMatmul(lt, desc, &alpha, a, la, b, lb, &beta, d, ld, d, ld,
                                   &result.algo, ws, ws_bytes, nullptr));
      },
      10);
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(ld);
  cublasLtMatmulDescDestroy(desc);
  for (void* p : {static_cast<void*>(a), static_cast<void*>(b), static_cast<void*>(d),
                  static_cast<void*>(one), ws}) {
    BENCH_CUDA_OK(cudaFree(p));
  }
  return 2.0 * size * size * size / (ms * 1e-3);
}

}  // namespace flotilla::bench
