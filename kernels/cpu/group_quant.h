// Per-group quantisation steps shared by the CPU backend (quant.cc's QAT round trips, kv_pack.cc's
// packed KV and indexer keys) and their CUDA kernels (kernels/cuda/kv_pack.cu), as FLOTILLA_HD
// code: both sides run these very functions, so groups, scales and codes are bitwise equal.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace flotilla::kernels {

constexpr e8m0 kNanScaleBits = 0xff;
constexpr fp8 kFp8NanCode = 0x7f;

// std::clamp(v, lo, hi) (NaN passes through).
FLOTILLA_HD float ClampF(float v, float lo, float hi) { return v < lo ? lo : (hi < v ? hi : v); }

// Largest |x| of a bf16 group, or -1 when the group holds a NaN or an infinity.
FLOTILLA_HD float GroupAmaxOrNegative(const bf16* x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float a = BitsToF32(F32ToBits(Bf16ToF32(x[i])) & 0x7fffffffu);
    if (!(a <= 3.4028235e38f)) return -1.0f;
    m = m < a ? a : m;  // std::max(m, a)
  }
  return m;
}

// The same as a flag and an out-parameter.
FLOTILLA_HD bool GroupAmax(const bf16* x, int64_t n, float* amax) {
  *amax = GroupAmaxOrNegative(x, n);
  return *amax >= 0.0f;
}

// Scale byte of a group from its largest magnitude (finite), spec §2.3 / §2.5.
FLOTILLA_HD e8m0 Fp8ScaleBits(float amax) {
  return CeilPow2ScaleBits((amax < 1e-4f ? 1e-4f : amax) * (1.0f / 448.0f));
}
FLOTILLA_HD e8m0 Fp4ScaleBits(float amax) {
  const float floor = 6.0f * 0x1p-126f;
  return CeilPow2ScaleBits((amax < floor ? floor : amax) * (1.0f / 6.0f));
}

// The E4M3 / E2M1 code of x at scale s (x / s clamped to the format's range).
FLOTILLA_HD fp8 EncodeFp8(float x, float s) { return F32ToFp8(ClampF(x / s, -448.0f, 448.0f)); }
FLOTILLA_HD uint8_t EncodeFp4(float x, float s) { return F32ToFp4(ClampF(x / s, -6.0f, 6.0f)); }

// The bf16 NaN every NaN group becomes (the canonical quiet NaN, rounded).
FLOTILLA_HD bf16 NanBf16() { return F32ToBf16(BitsToF32(0x7fc00000u)); }

}  // namespace flotilla::kernels
