// Lane-order dense GEMM (dense_gemm.h).
#include <cuda_runtime.h>

#include "kernels/cuda/dense_gemm.h"
#include "kernels/cuda/lane_order.cuh"

namespace flotilla::kernels::cuda {
namespace {

template <typename A, typename W, bool kBf16Out>
__global__ void __launch_bounds__(kDenseGemmThreads)
    DenseGemmKernel(const A* a, int64_t lda, const W* w, int64_t ldw, float* c, bf16* c_bf16,
                    int64_t ldc, int64_t n, int64_t k) {
  const int64_t row = blockIdx.y;
  const int64_t col = int64_t(blockIdx.x) * kDenseGemmOutputsPerBlock + (threadIdx.x >> 3);
  // Columns past n still take part in the shuffles (all 32 lanes must).
  const float s = col < n ? DotChain(a + row * lda, w + col * ldw, k) : 0.0f;
  const float total = CombineLanes8(s);
  if (col >= n || (threadIdx.x & 7) != 0) return;
  if (kBf16Out) {
    c_bf16[row * ldc + col] = F32ToBf16(total);
  } else {
    c[row * ldc + col] = total;
  }
}

template <typename A, typename W>
void Launch(const A* a, const W* w, const DenseGemmParams& p, CUstream_st* stream) {
  const DenseGemmShape shape = DenseGemmLaunchShape(p);
  const dim3 grid(shape.grid_x, shape.grid_y);
  if (p.c_bf16 != nullptr) {
    DenseGemmKernel<A, W, true><<<grid, kDenseGemmThreads, 0, stream>>>(a, p.lda, w, p.ldw, p.c,
                                                                        p.c_bf16, p.ldc, p.n, p.k);
  } else {
    DenseGemmKernel<A, W, false><<<grid, kDenseGemmThreads, 0, stream>>>(a, p.lda, w, p.ldw, p.c,
                                                                         p.c_bf16, p.ldc, p.n, p.k);
  }
}

}  // namespace

int LaunchDenseGemm(const DenseGemmParams& p, CUstream_st* stream) {
  if (p.m > 0 && p.n > 0) {
    if (p.a != nullptr && p.w != nullptr) Launch(p.a, p.w, p, stream);
    if (p.a != nullptr && p.w_bf16 != nullptr) Launch(p.a, p.w_bf16, p, stream);
    if (p.a_bf16 != nullptr && p.w != nullptr) Launch(p.a_bf16, p.w, p, stream);
    if (p.a_bf16 != nullptr && p.w_bf16 != nullptr) Launch(p.a_bf16, p.w_bf16, p, stream);
  }
  return int(cudaGetLastError());
}

}  // namespace flotilla::kernels::cuda
