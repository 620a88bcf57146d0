// Dense lane-order dot products (internal engine behind GemmBf16, GemmF32, the HC mixes and
// the indexer scores): out[i][j] = lane-order f32 dot of A row i and W row j over k elements.
#pragma once

#include <cstdint>
#include <vector>

#include "common/dtype.h"

namespace flotilla::kernels::cpu {

// Row-major operand stored as f32 or bf16 (exactly one pointer set), row stride ld elements.
struct DenseOperand {
  const float* f32 = nullptr;
  const bf16* b16 = nullptr;
  int64_t ld = 0;
};

// The A side prepared once per call: f32 rows (bf16 rows are converted, f32 rows are used in
// place). Read-only afterwards, so threads share it.
class DenseA {
 public:
  DenseA(const DenseOperand& a, int64_t m, int64_t k);
  const float* Row(int64_t i) const { return base_ + i * ld_; }
  int64_t m() const { return m_; }
  int64_t k() const { return k_; }
  const DenseOperand& source() const { return source_; }
  // The SIMD path chosen at construction; DenseTile follows it.
  bool avx2() const { return avx2_; }

 private:
  DenseOperand source_;
  bool avx2_ = false;
  int64_t m_, k_;
  std::vector<float>* packed_ = nullptr;  // the constructing thread's (one DenseA at a time)
  const float* base_ = nullptr;
  int64_t ld_ = 0;
};

constexpr int64_t kDenseTileN = 8;

// Serial: out[(i - i0) * ldo + (j - n0)] for i in [i0, i1), j in [n0, n1), n1 - n0 <= 8.
void DenseTile(const DenseA& a, int64_t i0, int64_t i1, const DenseOperand& w, int64_t n0,
               int64_t n1, float* out, int64_t ldo);

// OpenMP over (row chunk, W tile) items: c[i * ldc + j] for all i < m, j < n (f32, unrounded).
// `to_bf16` set: c_bf16[i * ldc + j] = bf16(dot) instead.
void DenseGemm(const DenseOperand& a, int64_t m, const DenseOperand& w, int64_t n, int64_t k,
               float* c, bf16* c_bf16, int64_t ldc);

}  // namespace flotilla::kernels::cpu
