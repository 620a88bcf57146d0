#include <cstdint>

#include "kernels/cuda/fp8_gemm.h"

namespace flotilla::kernels::cuda {
namespace {

int64_t WeightScaleLd(int64_t k) { return (k / 128 + 3) / 4 * 4; }

bool Aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace

Fp8GemmLayout MakeFp8GemmLayout(int64_t m, int64_t n, int64_t k, int64_t ldc) {
  Fp8GemmLayout l;
  l.a_rows = k, l.a_cols = n, l.lda = k;
  l.b_rows = k, l.b_cols = m, l.ldb = k;
  l.d_rows = n, l.d_cols = m, l.ldd = ldc;
  l.transa = true, l.transb = false;
  l.w_scale_rows = (n + 127) / 128;
  l.w_scale_cols = k / 128;
  l.w_scale_ld = WeightScaleLd(k);
  l.a_scale_count = m * (k / 128);
  return l;
}

int64_t Fp8WeightScaleCount(int64_t n, int64_t k) { return (n + 127) / 128 * WeightScaleLd(k); }

int64_t Fp8WeightScaleIndex(int64_t n_block, int64_t k_block, int64_t k) {
  return n_block * WeightScaleLd(k) + k_block;
}

size_t Fp8GemmWorkspaceBytes(int64_t m, int64_t k) {
  const size_t scales = size_t(m * (k / 128)) * sizeof(float);
  return (scales + 255) / 256 * 256 + kFp8GemmLtWorkspaceBytes;
}

void ConvertFp8WeightScales(const e8m0* in, int64_t n, int64_t k, float* out) {
  const int64_t rows = (n + 127) / 128, cols = k / 128, ld = WeightScaleLd(k);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < ld; ++c) {
      out[r * ld + c] = c < cols ? E8m0ToF32(in[r * cols + c]) : 0.0f;
    }
  }
}

void ConvertFp8WeightScalesF32(const float* in, int64_t n, int64_t k, float* out) {
  const int64_t rows = (n + 127) / 128, cols = k / 128, ld = WeightScaleLd(k);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < ld; ++c) out[r * ld + c] = c < cols ? in[r * cols + c] : 0.0f;
  }
}

const char* CheckFp8Gemm(const Fp8GemmParams& p) {
  if (!p.a || !p.a_scale || !p.w || !p.w_scale || !p.c) {
    return "FP8 GEMM: a, a_scale, w, w_scale and c must all be set";
  }
  if (p.k <= 0 || p.k % 128 != 0) return "FP8 GEMM: k must be a positive multiple of 128";
  if (p.n <= 0 || p.n % 16 != 0) return "FP8 GEMM: n must be a positive multiple of 16";
  if (p.m <= 0) return "FP8 GEMM: m must be positive";
  if (p.m > 0x7fffffff || p.n > 0x7fffffff || p.k > 0x7fffffff) {
    return "FP8 GEMM: m, n and k must fit cuBLASLt's 32-bit sizes";
  }
  if (p.ldc < p.n) return "FP8 GEMM: ldc must be at least n";
  if (p.ldc % 8 != 0) return "FP8 GEMM: ldc must be a multiple of 8 (16-byte rows of bf16)";
  if (!Aligned(p.a, 16) || !Aligned(p.w, 16) || !Aligned(p.c, 16) || !Aligned(p.w_scale, 16)) {
    return "FP8 GEMM: a, w, c and w_scale must be 16-byte aligned";
  }
  return nullptr;
}

}  // namespace flotilla::kernels::cuda
