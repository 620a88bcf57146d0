// Number formats of DeepSeek-V4 checkpoints and activations (spec §2.1), exact scalar codecs.
//
// Header-only and dependency-free: kernels/ (CPU and CUDA) include it, and the GPU machine
// builds kernels/ with the CUDA toolkit alone. The codecs marked FLOTILLA_HD compile for the
// device too, so CUDA kernels round exactly as the CPU backend does.
#pragma once

#if defined(__CUDACC__)
#define FLOTILLA_HD __host__ __device__ inline
#else
#define FLOTILLA_HD inline
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace flotilla {

using bf16 = uint16_t;  // bfloat16 bits
using fp8 = uint8_t;    // float8 E4M3FN bits
using e8m0 = uint8_t;   // UE8M0 scale bits: 2^(bits - 127)

FLOTILLA_HD float BitsToF32(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
FLOTILLA_HD uint32_t F32ToBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// ---- bfloat16 ----
FLOTILLA_HD float Bf16ToF32(bf16 b) { return BitsToF32(uint32_t(b) << 16); }

// Round-to-nearest-even; NaN stays a (quiet) NaN with its sign.
FLOTILLA_HD bf16 F32ToBf16(float f) {
  uint32_t u = F32ToBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16(u >> 16);
}
FLOTILLA_HD float RoundBf16(float f) { return Bf16ToF32(F32ToBf16(f)); }

// ---- FP8 E4M3FN ----
// 0x7F / 0xFF are NaN; no infinities; largest finite 448 (0x7E).
FLOTILLA_HD float Fp8ToF32(fp8 c) {
  const uint32_t sign = (c & 0x80u) << 24;
  const uint32_t e = (c >> 3) & 0xfu, m = c & 7u;
  if (e == 15 && m == 7) return BitsToF32(sign | 0x7fc00000u);
  float mag;
  if (e == 0) {
    mag = float(m) * 0x1p-9f;  // subnormal: m/8 * 2^-6
  } else {
    mag = BitsToF32(((e + 120u) << 23) | (m << 20));
  }
  return BitsToF32(F32ToBits(mag) | sign);
}

// Saturating conversion: clamp to [-448, 448], then round to nearest even. NaN -> 0x7F|sign.
FLOTILLA_HD fp8 F32ToFp8(float f) {
  uint32_t u = F32ToBits(f);
  const uint8_t sign = uint8_t((u >> 24) & 0x80u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return fp8(sign | 0x7f);
  float a = BitsToF32(u);
  if (a >= 448.0f) return fp8(sign | 0x7e);
  if (a < 0x1p-6f) {
    // Subnormal range: multiples of 2^-9. Scaling by 2^9 is exact; nearbyint rounds to even.
    const float q = rintf(a * 512.0f);  // 0..8 (8 = smallest normal 0x08); ties to even
    return fp8(sign | uint8_t(q));
  }
  // Normal: keep 3 mantissa bits with round-to-nearest-even on the f32 bit pattern.
  uint32_t r = u + 0x7ffffu + ((u >> 20) & 1u);
  r &= 0xfff00000u;
  const uint32_t e = (r >> 23) - 120u;  // 1..15
  const uint32_t m = (r >> 20) & 7u;
  return fp8(sign | uint8_t((e << 3) | m));
}

// ---- UE8M0 ----
FLOTILLA_HD float E8m0ToF32(e8m0 s) {
  if (s == 0xff) return BitsToF32(0x7fc00000u);
  if (s == 0) return 0x1p-127f;  // 2^-127 is an f32 subnormal, still exact
  return BitsToF32(uint32_t(s) << 23);
}

// ---- FP4 E2M1 (packed two per byte, low nibble = even element) ----
// Magnitude codes 0..7 are 0, .5, 1, 1.5, 2, 3, 4, 6: (1 + m/2) * 2^(e-1) for e = code >> 1 > 0,
// m/2 for e = 0 (m = code & 1). Every value is exact in f32.
FLOTILLA_HD float Fp4ToF32(uint8_t nibble) {
  const uint32_t c = nibble & 7u, e = c >> 1, m = c & 1u;
  const float mag = e == 0 ? float(m) * 0.5f : BitsToF32((e + 126u) << 23 | m << 22);
  return BitsToF32(F32ToBits(mag) | uint32_t(nibble & 8u) << 28);
}

// Saturating: clamp to [-6, 6], then round to nearest even. NaN maps to +0 (never produced
// by the model: inputs are finite after scaling).
FLOTILLA_HD uint8_t F32ToFp4(float f) {
  const uint32_t u = F32ToBits(f);
  const uint8_t sign = (u >> 31) ? 8 : 0;
  const float a = BitsToF32(u & 0x7fffffffu);
  if (!(a == a)) return 0;
  // Representable magnitudes: 0, .5, 1, 1.5, 2, 3, 4, 6. Midpoints round to the even code.
  uint8_t c;
  if (a <= 0.25f) c = 0;          // tie at .25 -> 0 (even)
  else if (a < 0.75f) c = 1;      // .75 tie -> 1.0 (code 2, even)
  else if (a <= 1.25f) c = 2;     // 1.25 tie -> 1.0 (code 2)
  else if (a < 1.75f) c = 3;      // 1.75 tie -> 2.0 (code 4)
  else if (a <= 2.5f) c = 4;      // 2.5 tie -> 2.0 (code 4)
  else if (a < 3.5f) c = 5;       // 3.5 tie -> 4.0 (code 6)
  else if (a <= 5.0f) c = 6;      // 5 tie -> 4.0 (code 6)
  else c = 7;
  return uint8_t(sign | c);
}

// ---- power-of-two scales (spec §2.3 / §2.5) ----
// e = ceil(log2(r)) from the f32 bits of r (r > 0, normal or subnormal): unbiased exponent,
// plus one when mantissa bits are non-zero. Returns the UE8M0 byte (e + 127).
// Out of UE8M0 range: r <= 2^-127 (and r == 0) gives 0 (2^-127, the smallest scale, still >= r);
// r > 2^127, inf and NaN give 0xFF (NaN). The spec's amax floors keep r far inside the range.
FLOTILLA_HD e8m0 CeilPow2ScaleBits(float r) {
  const uint32_t u = F32ToBits(r);
  int32_t exp = int32_t((u >> 23) & 0xffu);
  uint32_t man = u & 0x7fffffu;
  if (exp == 0) {  // subnormal r: value man * 2^-149
    if (man == 0) return 0;
    int lz = 0;
    while (!(man & 0x400000u)) {
      man <<= 1;
      ++lz;
    }
    exp = -lz;  // biased exponent of the normalised value
    man = (man << 1) & 0x7fffffu;
  }
  int32_t e = exp - 127 + (man != 0 ? 1 : 0);
  if (e < -127) return 0;
  if (e > 127) return 0xff;  // also inf / NaN r
  return e8m0(e + 127);
}

}  // namespace flotilla
