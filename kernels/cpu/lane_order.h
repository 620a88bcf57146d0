// Scalar statement of the canonical "lane order" (kernels/ops.h): 8 partial sums, element k
// into lane k % 8 in ascending k, fused multiply-add for dots, then
// ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7)). Every SIMD kernel reproduces these bits.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/dtype.h"

namespace flotilla::kernels::cpu {

inline float CombineLanes(const float s[8]) {
  return ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
}

inline float ToF32(float x) { return x; }
inline float ToF32(bf16 x) { return Bf16ToF32(x); }

// Lane-order dot product of n elements; A and B are float or bf16 (upcast exactly).
template <class A, class B>
inline float DotLanes(const A* a, const B* b, int64_t n) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t k = 0; k < n; ++k) s[k & 7] = std::fmaf(ToF32(a[k]), ToF32(b[k]), s[k & 7]);
  return CombineLanes(s);
}

// Lane-order sum of n f32 values (plain adds).
inline float SumLanes(const float* x, int64_t n) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t k = 0; k < n; ++k) s[k & 7] += x[k];
  return CombineLanes(s);
}

// Exact f32 value of every E4M3 code; both NaN codes map to the same +qNaN so that NaN results
// carry one payload on every path.
struct Fp8Table {
  float value[256];
  Fp8Table() {
    for (int c = 0; c < 256; ++c) {
      value[c] = ((c & 0x7f) == 0x7f) ? BitsToF32(0x7fc00000u) : Fp8ToF32(fp8(c));
    }
  }
};
inline const Fp8Table& Fp8Values() {
  static const Fp8Table table;
  return table;
}

inline float E8m0Value(e8m0 s) { return E8m0ToF32(s); }

// Canonical quiet NaN used for every NaN a kernel creates on purpose.
inline float CanonicalNan() { return BitsToF32(0x7fc00000u); }

}  // namespace flotilla::kernels::cpu

namespace flotilla::kernels::cpu {

// Lane-order dot on the active SIMD path (bit-identical on both).
float Dot(const bf16* a, const bf16* b, int64_t n);
float Dot(const float* a, const float* b, int64_t n);

}  // namespace flotilla::kernels::cpu
