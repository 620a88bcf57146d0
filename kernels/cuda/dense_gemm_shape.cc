#include "kernels/cuda/dense_gemm.h"

namespace flotilla::kernels::cuda {

const char* CheckDenseGemm(const DenseGemmParams& p) {
  if (p.m < 0 || p.n < 0 || p.k < 0) return "dense_gemm: m, n and k must be >= 0";
  if ((p.a == nullptr) == (p.a_bf16 == nullptr)) return "dense_gemm: exactly one of a / a_bf16";
  if ((p.w == nullptr) == (p.w_bf16 == nullptr)) return "dense_gemm: exactly one of w / w_bf16";
  if ((p.c == nullptr) == (p.c_bf16 == nullptr)) return "dense_gemm: exactly one of c / c_bf16";
  if (p.lda < p.k || p.ldw < p.k || p.ldc < p.n) {
    return "dense_gemm: lda and ldw must be >= k, ldc >= n";
  }
  if (p.m > 65535) return "dense_gemm: at most 65535 rows per launch";
  return nullptr;
}

DenseGemmShape DenseGemmLaunchShape(const DenseGemmParams& p) {
  if (p.m == 0 || p.n == 0) return {};
  return {uint32_t((p.n + kDenseGemmOutputsPerBlock - 1) / kDenseGemmOutputsPerBlock),
          uint32_t(p.m)};
}

}  // namespace flotilla::kernels::cuda
