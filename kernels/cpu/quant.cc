// Activation quantisation (spec §2.3) and the in-place QAT round trips (§2.6).
#include <algorithm>
#include <cmath>

#include "kernels/cpu/avx2_util.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/group_quant.h"
#include "kernels/cpu/lane_order.h"
#include "kernels/ops.h"

namespace flotilla::kernels {
namespace {

using cpu::CanonicalNan;

constexpr fp8 kFp8Nan = kFp8NanCode;
constexpr e8m0 kE8m0Nan = kNanScaleBits;

// Fp8ScaleBits, Fp4ScaleBits and GroupAmax are kernels/cpu/group_quant.h's (shared with CUDA).

void ActQuantRowScalar(const bf16* x, int64_t k, int64_t block, fp8* q, e8m0* scale) {
  for (int64_t g = 0; g < k / block; ++g) {
    const bf16* xg = x + g * block;
    fp8* qg = q + g * block;
    float amax;
    if (!GroupAmax(xg, block, &amax)) {
      scale[g] = kE8m0Nan;
      std::fill(qg, qg + block, kFp8Nan);
      continue;
    }
    scale[g] = Fp8ScaleBits(amax);
    const float s = E8m0ToF32(scale[g]);
    for (int64_t i = 0; i < block; ++i) {
      qg[i] = F32ToFp8(std::clamp(Bf16ToF32(xg[i]) / s, -448.0f, 448.0f));
    }
  }
}

// E4M3 codes (in the low byte of each dword) of 8 finite values already clamped to ±448,
// round to nearest even: bit-identical to F32ToFp8.
FLOTILLA_AVX2_INLINE __m256i EncodeFp8x8(__m256 y) {
  const __m256i u = _mm256_castps_si256(y);
  const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(u, 24), _mm256_set1_epi32(0x80));
  const __m256i mag = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
  const __m256 a = _mm256_castsi256_ps(mag);
  // Subnormal range: multiples of 2^-9, round-half-even through the FPU.
  const __m256i sub = _mm256_cvttps_epi32(_mm256_round_ps(
      _mm256_mul_ps(a, _mm256_set1_ps(512.0f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  // Normal range: keep 3 mantissa bits, round half to even on the bit pattern.
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(mag, 20), _mm256_set1_epi32(1));
  __m256i r = _mm256_add_epi32(_mm256_add_epi32(mag, _mm256_set1_epi32(0x7ffff)), lsb);
  r = _mm256_sub_epi32(_mm256_srli_epi32(r, 20), _mm256_set1_epi32(960));
  const __m256 is_sub = _mm256_cmp_ps(a, _mm256_set1_ps(0x1p-6f), _CMP_LT_OQ);
  const __m256i code = _mm256_blendv_epi8(r, sub, _mm256_castps_si256(is_sub));
  return _mm256_or_si256(code, sign);
}

// Packs 4 x 8 dword codes into 32 bytes in order.
FLOTILLA_AVX2_INLINE __m256i PackCodes(__m256i c0, __m256i c1, __m256i c2, __m256i c3) {
  const __m256i p01 = _mm256_packus_epi32(c0, c1);
  const __m256i p23 = _mm256_packus_epi32(c2, c3);
  const __m256i b = _mm256_packus_epi16(p01, p23);
  return _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

FLOTILLA_AVX2 void ActQuantRowAvx2(const bf16* x, int64_t k, int64_t block, fp8* q, e8m0* scale) {
  using namespace cpu::avx2;
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int64_t g = 0; g < k / block; ++g) {
    const bf16* xg = x + g * block;
    fp8* qg = q + g * block;
    __m256 amax = _mm256_setzero_ps();
    __m256 finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    for (int64_t i = 0; i < block; i += 8) {
      const __m256 a = _mm256_and_ps(LoadBf16(xg + i), abs_mask);
      finite = _mm256_and_ps(finite, _mm256_cmp_ps(a, _mm256_set1_ps(3.4028235e38f), _CMP_LE_OQ));
      amax = _mm256_max_ps(amax, a);
    }
    if (_mm256_movemask_ps(finite) != 0xff) {
      scale[g] = kE8m0Nan;
      std::fill(qg, qg + block, kFp8Nan);
      continue;
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    scale[g] = Fp8ScaleBits(_mm_cvtss_f32(m4));
    const __m256 s = _mm256_set1_ps(E8m0ToF32(scale[g]));
    const __m256 lo = _mm256_set1_ps(-448.0f), hi = _mm256_set1_ps(448.0f);
    for (int64_t i = 0; i < block; i += 32) {
      __m256i c[4];
      for (int j = 0; j < 4; ++j) {
        const __m256 y = _mm256_div_ps(LoadBf16(xg + i + 8 * j), s);
        c[j] = EncodeFp8x8(_mm256_min_ps(_mm256_max_ps(y, lo), hi));
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(qg + i), PackCodes(c[0], c[1], c[2], c[3]));
    }
  }
}

}  // namespace

void ActQuantFp8(const ActQuantParams& p) {
  const bool avx2 = cpu::UseAvx2() && p.block % 32 == 0;
  const int64_t groups = p.k / p.block;
#pragma omp parallel for schedule(static) if (p.m * p.k >= (1 << 16))
  for (int64_t r = 0; r < p.m; ++r) {
    const bf16* x = p.x + r * p.ldx;
    fp8* q = p.q + r * p.k;
    e8m0* s = p.scale + r * groups;
    if (avx2) {
      ActQuantRowAvx2(x, p.k, p.block, q, s);
    } else {
      ActQuantRowScalar(x, p.k, p.block, q, s);
    }
  }
}

namespace {

// Quantise -> dequantise in place, per group of `block` elements of [0, n) of every row (a
// shorter last group is its own group): s = 2^ScaleBits(amax), y = bf16(decode(encode(x/s)) * s).
// A group holding NaN or inf becomes NaN.
template <e8m0 (*ScaleBits)(float), typename Code, Code (*Encode)(float), float (*Decode)(Code)>
void SimulateInPlace(bf16* x, int64_t rows, int64_t ld, int64_t n, int64_t block, float limit) {
#pragma omp parallel for schedule(static) if (rows * n >= (1 << 16))
  for (int64_t r = 0; r < rows; ++r) {
    bf16* row = x + r * ld;
    for (int64_t g0 = 0; g0 < n; g0 += block) {
      const int64_t len = std::min(block, n - g0);
      bf16* xg = row + g0;
      float amax;
      if (!GroupAmax(xg, len, &amax)) {
        std::fill(xg, xg + len, F32ToBf16(CanonicalNan()));
        continue;
      }
      const float s = E8m0ToF32(ScaleBits(amax));
      for (int64_t i = 0; i < len; ++i) {
        const Code c = Encode(std::clamp(Bf16ToF32(xg[i]) / s, -limit, limit));
        xg[i] = F32ToBf16(Decode(c) * s);
      }
    }
  }
}

}  // namespace

void Fp8SimulateInPlace(bf16* x, int64_t rows, int64_t ld, int64_t n, int64_t block) {
  SimulateInPlace<Fp8ScaleBits, fp8, F32ToFp8, Fp8ToF32>(x, rows, ld, n, block, 448.0f);
}

void Fp4SimulateInPlace(bf16* x, int64_t rows, int64_t ld, int64_t n, int64_t block) {
  SimulateInPlace<Fp4ScaleBits, uint8_t, F32ToFp4, Fp4ToF32>(x, rows, ld, n, block, 6.0f);
}

}  // namespace flotilla::kernels
