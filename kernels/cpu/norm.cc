// Weighted RMSNorm (spec §4.2) and the per-head bf16-arithmetic RMS norm of the queries (§5.1).
#include <cmath>

#include "kernels/cpu/avx2_util.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/lane_order.h"
#include "kernels/ops.h"

namespace flotilla::kernels {
namespace {

inline float RmsFactor(float sum_sq, int64_t d, float eps) {
  const float mean = sum_sq * (1.0f / static_cast<float>(d));
  return 1.0f / std::sqrt(mean + eps);
}

void RmsNormRowScalar(const bf16* x, const bf16* w, int64_t d, float eps, bf16* y) {
  const float r = RmsFactor(cpu::DotLanes(x, x, d), d, eps);
  for (int64_t i = 0; i < d; ++i) y[i] = F32ToBf16(Bf16ToF32(w[i]) * (Bf16ToF32(x[i]) * r));
}

FLOTILLA_AVX2 void RmsNormRowAvx2(const bf16* x, const bf16* w, int64_t d, float eps, bf16* y) {
  const float r = RmsFactor(cpu::avx2::Dot(x, x, d), d, eps);
  const __m256 rv = _mm256_set1_ps(r);
  int64_t i = 0;
  for (; i + 8 <= d; i += 8) {
    const __m256 v =
        _mm256_mul_ps(cpu::avx2::LoadBf16(w + i), _mm256_mul_ps(cpu::avx2::LoadBf16(x + i), rv));
    cpu::avx2::StoreBf16(y + i, v);
  }
  for (; i < d; ++i) y[i] = F32ToBf16(Bf16ToF32(w[i]) * (Bf16ToF32(x[i]) * r));
}

// Steps (a)-(d) of §5.1 step 4: the bf16 factor r of one head.
inline float HeadFactor(float sum_sq, int64_t dim, float eps) {
  const float mean = RoundBf16(sum_sq * (1.0f / static_cast<float>(dim)));
  const float shifted = RoundBf16(mean + eps);
  return RoundBf16(1.0f / std::sqrt(shifted));
}

void HeadRmsNormRowScalar(bf16* q, int64_t dim, float eps) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < dim; ++i) {
    const float v = Bf16ToF32(q[i]);
    s[i & 7] += RoundBf16(v * v);
  }
  const float r = HeadFactor(cpu::CombineLanes(s), dim, eps);
  for (int64_t i = 0; i < dim; ++i) q[i] = F32ToBf16(Bf16ToF32(q[i]) * r);
}

FLOTILLA_AVX2_INLINE __m256 RoundBf16x8(__m256 v) {
  const __m128i h = cpu::avx2::F32ToBf16x8(v);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

FLOTILLA_AVX2 void HeadRmsNormRowAvx2(bf16* q, int64_t dim, float eps) {
  __m256 s = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= dim; i += 8) {
    const __m256 v = cpu::avx2::LoadBf16(q + i);
    s = _mm256_add_ps(s, RoundBf16x8(_mm256_mul_ps(v, v)));
  }
  if (i < dim) {  // squares are >= +0, so the zero-filled lanes leave their sums unchanged
    const __m256 v = cpu::avx2::LoadPartial8(q + i, static_cast<int>(dim - i));
    s = _mm256_add_ps(s, RoundBf16x8(_mm256_mul_ps(v, v)));
  }
  const float r = HeadFactor(cpu::avx2::CombineNatural(s), dim, eps);
  const __m256 rv = _mm256_set1_ps(r);
  i = 0;
  for (; i + 8 <= dim; i += 8)
    cpu::avx2::StoreBf16(q + i, _mm256_mul_ps(cpu::avx2::LoadBf16(q + i), rv));
  for (; i < dim; ++i) q[i] = F32ToBf16(Bf16ToF32(q[i]) * r);
}

}  // namespace

void RmsNorm(const bf16* x, int64_t ldx, const bf16* w, int64_t m, int64_t d, float eps, bf16* y,
             int64_t ldy) {
  const bool avx2 = cpu::UseAvx2();
#pragma omp parallel for schedule(static) if (m * d >= (1 << 16))
  for (int64_t r = 0; r < m; ++r) {
    if (avx2) {
      RmsNormRowAvx2(x + r * ldx, w, d, eps, y + r * ldy);
    } else {
      RmsNormRowScalar(x + r * ldx, w, d, eps, y + r * ldy);
    }
  }
}

void HeadRmsNormBf16(bf16* q, int64_t rows, int64_t dim, float eps) {
  const bool avx2 = cpu::UseAvx2();
#pragma omp parallel for schedule(static) if (rows * dim >= (1 << 16))
  for (int64_t r = 0; r < rows; ++r) {
    if (avx2) {
      HeadRmsNormRowAvx2(q + r * dim, dim, eps);
    } else {
      HeadRmsNormRowScalar(q + r * dim, dim, eps);
    }
  }
}

}  // namespace flotilla::kernels
