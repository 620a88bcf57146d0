// AVX2 building blocks shared by the kernels (internal). Every function is compiled for
// AVX2 + FMA + F16C through a target attribute and may only be called when UseAvx2().
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "common/dtype.h"

#define FLOTILLA_AVX2 __attribute__((target("avx2,fma,f16c")))
#define FLOTILLA_AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) inline

namespace flotilla::kernels::cpu::avx2 {

// Clears FTZ / DAZ for the scope: kernels that feed subnormal f32 operands to the FPU (the
// E4M3 decode of the FP8 GEMM) rely on IEEE behaviour whatever the caller set.
class ScopedIeeeMxcsr {
 public:
  ScopedIeeeMxcsr() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ & ~0x8040u); }
  ~ScopedIeeeMxcsr() { _mm_setcsr(saved_); }
  ScopedIeeeMxcsr(const ScopedIeeeMxcsr&) = delete;
  ScopedIeeeMxcsr& operator=(const ScopedIeeeMxcsr&) = delete;

 private:
  unsigned saved_;
};

// 8 bf16 -> 8 f32 (exact).
FLOTILLA_AVX2_INLINE __m256 LoadBf16(const bf16* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(
      _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}

// 8 f32 -> 8 bf16, round to nearest even; NaN keeps its sign and becomes quiet (= F32ToBf16).
FLOTILLA_AVX2_INLINE __m128i F32ToBf16x8(__m256 x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
  const __m256i is_nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f800000));
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r =
      _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
  const __m256i nan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  r = _mm256_blendv_epi8(r, nan, is_nan);
  const __m256i packed = _mm256_packus_epi32(r, r);  // [r0..3 r0..3 | r4..7 r4..7]
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
}

FLOTILLA_AVX2_INLINE void StoreBf16(bf16* p, __m256 x) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), F32ToBf16x8(x));
}

// Lanes 0..n-1 set (n in [0, 8]).
FLOTILLA_AVX2_INLINE __m256i FirstLanesMask(int n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
}

// Canonical combine of one accumulator in natural lane order [s0 .. s7].
FLOTILLA_AVX2_INLINE float CombineNatural(__m256 s) {
  const __m128 t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));  // s0+s4 ..
  const __m128 u = _mm_add_ps(t, _mm_movehl_ps(t, t));  // (s0+s4)+(s2+s6), (s1+s5)+(s3+s7)
  return _mm_cvtss_f32(_mm_add_ss(u, _mm_movehdup_ps(u)));
}

// Canonical combine of 8 accumulators in natural lane order; returns [r(a0) .. r(a7)].
FLOTILLA_AVX2_INLINE __m256 CombineNatural8(const __m256* a) {
  // [x(s0+s4) x(s1+s5) x(s2+s6) x(s3+s7) | y(..)] for (x, y) = (0,4), (1,5), (2,6), (3,7)
  __m256 v[4];
  for (int p = 0; p < 4; ++p) {
    v[p] = _mm256_add_ps(_mm256_permute2f128_ps(a[p], a[p + 4], 0x20),
                         _mm256_permute2f128_ps(a[p], a[p + 4], 0x31));
  }
  // [xE xO yE yO | ..] with E = (s0+s4)+(s2+s6), O = (s1+s5)+(s3+s7)
  const __m256 l0 =
      _mm256_add_ps(_mm256_shuffle_ps(v[0], v[1], 0x44), _mm256_shuffle_ps(v[0], v[1], 0xEE));
  const __m256 l1 =
      _mm256_add_ps(_mm256_shuffle_ps(v[2], v[3], 0x44), _mm256_shuffle_ps(v[2], v[3], 0xEE));
  return _mm256_add_ps(_mm256_shuffle_ps(l0, l1, 0x88), _mm256_shuffle_ps(l0, l1, 0xDD));
}

// Lane-order dot of n elements (bf16 or f32 operands), natural lanes.
template <class A>
FLOTILLA_AVX2_INLINE __m256 Load8(const A* p);
template <>
FLOTILLA_AVX2_INLINE __m256 Load8<float>(const float* p) {
  return _mm256_loadu_ps(p);
}
template <>
FLOTILLA_AVX2_INLINE __m256 Load8<bf16>(const bf16* p) {
  return LoadBf16(p);
}

// Loads the first n (< 8) elements, the rest zero, without reading past them.
template <class A>
FLOTILLA_AVX2_INLINE __m256 LoadPartial8(const A* p, int n) {
  alignas(32) A tmp[8] = {};
  for (int i = 0; i < n; ++i) tmp[i] = p[i];
  return Load8<A>(tmp);
}

template <class A, class B>
FLOTILLA_AVX2_INLINE float Dot(const A* a, const B* b, int64_t n) {
  __m256 s = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) s = _mm256_fmadd_ps(Load8<A>(a + k), Load8<B>(b + k), s);
  if (k < n) {
    const int r = static_cast<int>(n - k);
    const __m256 t = _mm256_fmadd_ps(LoadPartial8<A>(a + k, r), LoadPartial8<B>(b + k, r), s);
    s = _mm256_blendv_ps(s, t, _mm256_castsi256_ps(FirstLanesMask(r)));
  }
  return CombineNatural(s);
}

}  // namespace flotilla::kernels::cpu::avx2
