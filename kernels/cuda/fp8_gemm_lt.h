// The cuBLASLt descriptors of the FP8 GEMM (fp8_gemm.h): the operation descriptor and the matrix
// layouts of a call. Creating them needs neither a device nor a handle, so a CPU test reads
// every attribute back. Only fp8_gemm.cu and that test include this header (it needs cublasLt.h).
#pragma once

#include <cublasLt.h>

#include <cstdint>

#include "kernels/cuda/fp8_gemm.h"

namespace flotilla::kernels::cuda {

// TN, f32 compute and scale type, block-scaled FP8 (weights 128 x 128, activations 1 x 128, f32
// scales), fast accumulation off. The scale pointers are set per call.
inline cublasStatus_t MakeFp8GemmDesc(cublasLtMatmulDesc_t* desc) {
  cublasStatus_t s = cublasLtMatmulDescCreate(desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  const int32_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  const int32_t a_mode = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
  const int32_t b_mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
  const int8_t fast_accum = 0;  // every 128-wide partial promoted into the f32 accumulator
  auto set = [&](cublasLtMatmulDescAttributes_t attr, const void* v, size_t bytes) {
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatmulDescSetAttribute(*desc, attr, v, bytes);
  };
  set(CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
  set(CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
  set(CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &a_mode, sizeof(a_mode));
  set(CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &b_mode, sizeof(b_mode));
  set(CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast_accum, sizeof(fast_accum));
  return s;
}

// The A (weights, E4M3), B (activations, E4M3) and D (bf16) layouts of a call; destroyed with
// the object.
struct Fp8GemmLtLayouts {
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  Fp8GemmLtLayouts() = default;
  Fp8GemmLtLayouts(const Fp8GemmLtLayouts&) = delete;
  Fp8GemmLtLayouts& operator=(const Fp8GemmLtLayouts&) = delete;
  ~Fp8GemmLtLayouts() {
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (d) cublasLtMatrixLayoutDestroy(d);
  }
  cublasStatus_t Make(const Fp8GemmLayout& l) {
    cublasStatus_t s = cublasLtMatrixLayoutCreate(&a, CUDA_R_8F_E4M3, uint64_t(l.a_rows),
                                                  uint64_t(l.a_cols), l.lda);
    if (s == CUBLAS_STATUS_SUCCESS) {
      s = cublasLtMatrixLayoutCreate(&b, CUDA_R_8F_E4M3, uint64_t(l.b_rows), uint64_t(l.b_cols),
                                     l.ldb);
    }
    if (s == CUBLAS_STATUS_SUCCESS) {
      s = cublasLtMatrixLayoutCreate(&d, CUDA_R_16BF, uint64_t(l.d_rows), uint64_t(l.d_cols),
                                     l.ldd);
    }
    return s;
  }
};

}  // namespace flotilla::kernels::cuda
