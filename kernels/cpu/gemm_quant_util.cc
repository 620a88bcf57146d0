#include "kernels/cpu/gemm_quant_util.h"

#include "kernels/cpu/avx2_util.h"
#include "kernels/cpu/dispatch.h"

namespace flotilla::kernels::cpu {
namespace {

void DecodeRowScalar(const fp8* src, int64_t k, const float* lut, float* row) {
  for (int64_t j = 0; j < k; ++j) row[j] = lut[src[j]];
}

// Codes -> bits sign | (c & 0x7f) << 20 (value e4m3(c) * 2^-120, exact, subnormal for small
// codes), then two exact power-of-two products; NaN codes -> the canonical NaN.
FLOTILLA_AVX2 void DecodeRowAvx2(const fp8* src, int64_t k, float scale, float* row) {
  const avx2::ScopedIeeeMxcsr ieee;
  const __m256 up = _mm256_set1_ps(0x1p92f), rest = _mm256_set1_ps(scale * 0x1p28f);
  const __m256 nan = _mm256_set1_ps(CanonicalNan());
  for (int64_t g = 0; g < k; g += 8) {
    const __m256i b =
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + g)));
    const __m256 tiny = _mm256_castsi256_ps(_mm256_and_si256(
        _mm256_slli_epi32(b, 20), _mm256_set1_epi32(static_cast<int>(0x87f00000u))));
    __m256 v = _mm256_mul_ps(_mm256_mul_ps(tiny, up), rest);
    const __m256i is_nan =
        _mm256_cmpeq_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x7f)), _mm256_set1_epi32(0x7f));
    v = _mm256_blendv_ps(v, nan, _mm256_castsi256_ps(is_nan));
    _mm256_storeu_ps(row + g, v);
  }
}

}  // namespace

void DecodeFp8Rows(const fp8* a, int64_t m, int64_t k, std::vector<float>* out, float scale) {
  out->resize(m * k);
  float* dst = out->data();
  // The vector path needs whole groups of 8 and scale * 2^28 to stay a normal power of two.
  const bool avx2 = UseAvx2() && k % 8 == 0 && scale >= 0x1p-100f && scale <= 0x1p96f;
  float lut[256];
  if (!avx2) {
    for (int c = 0; c < 256; ++c) lut[c] = Fp8Values().value[c] * scale;
  }
#pragma omp parallel for schedule(static) if (m * k >= (1 << 18))
  for (int64_t i = 0; i < m; ++i) {
    if (avx2) {
      DecodeRowAvx2(a + i * k, k, scale, dst + i * k);
    } else {
      DecodeRowScalar(a + i * k, k, lut, dst + i * k);
    }
  }
}

}  // namespace flotilla::kernels::cpu
