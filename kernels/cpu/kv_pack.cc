// Packed KV entries and indexer keys (spec §8.2 (b)): the byte layout of the paged KV pool.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/group_quant.h"
#include "kernels/cpu/lane_order.h"
#include "kernels/ops.h"

namespace flotilla::kernels {
namespace {

constexpr e8m0 kNanScale = kNanScaleBits;

// GroupAmax and the scale functions are kernels/cpu/group_quant.h's (shared with CUDA).
inline e8m0 Fp8Scale(float amax) { return Fp8ScaleBits(amax); }
inline e8m0 Fp4Scale(float amax) { return Fp4ScaleBits(amax); }

const bf16 kNanBf16 = NanBf16();

}  // namespace

void PackKvEntries(const KvPackParams& p) {
  const int64_t groups = (p.nope + 63) / 64;
#pragma omp parallel for schedule(static) if (p.rows * p.entry_bytes >= (1 << 18))
  for (int64_t r = 0; r < p.rows; ++r) {
    const bf16* x = p.x + r * p.ldx;
    uint8_t* e = p.entries + r * p.entry_bytes;
    e8m0* scales = e + p.nope + 2 * p.rope;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t g0 = g * 64, len = std::min<int64_t>(64, p.nope - g0);
      float amax;
      if (!GroupAmax(x + g0, len, &amax)) {
        scales[g] = kNanScale;
        std::fill(e + g0, e + g0 + len, fp8(0x7f));
        continue;
      }
      scales[g] = Fp8Scale(amax);
      const float s = E8m0ToF32(scales[g]);
      for (int64_t i = g0; i < g0 + len; ++i) {
        e[i] = F32ToFp8(std::clamp(Bf16ToF32(x[i]) / s, -448.0f, 448.0f));
      }
    }
    for (int64_t i = 0; i < p.rope; ++i) {
      const bf16 v = x[p.nope + i];
      e[p.nope + 2 * i] = uint8_t(v & 0xff);
      e[p.nope + 2 * i + 1] = uint8_t(v >> 8);
    }
    const int64_t used = p.nope + 2 * p.rope + groups;
    std::memset(e + used, 0, size_t(p.entry_bytes - used));
  }
}

void UnpackKvEntries(const KvUnpackParams& p) {
  const int64_t groups = (p.nope + 63) / 64;
#pragma omp parallel for schedule(static) if (p.rows * p.entry_bytes >= (1 << 18))
  for (int64_t r = 0; r < p.rows; ++r) {
    const uint8_t* e = p.entries + r * p.entry_bytes;
    bf16* x = p.x + r * p.ldx;
    const e8m0* scales = e + p.nope + 2 * p.rope;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t g0 = g * 64, len = std::min<int64_t>(64, p.nope - g0);
      if (scales[g] == kNanScale) {
        std::fill(x + g0, x + g0 + len, kNanBf16);
        continue;
      }
      const float s = E8m0ToF32(scales[g]);
      for (int64_t i = g0; i < g0 + len; ++i) x[i] = F32ToBf16(Fp8ToF32(e[i]) * s);
    }
    for (int64_t i = 0; i < p.rope; ++i) {
      x[p.nope + i] = bf16(e[p.nope + 2 * i] | (uint16_t(e[p.nope + 2 * i + 1]) << 8));
    }
  }
}

void PackIndexerKeys(const KvPackParams& p) {
  const int64_t dim = p.nope, groups = dim / 32;
#pragma omp parallel for schedule(static) if (p.rows * p.entry_bytes >= (1 << 18))
  for (int64_t r = 0; r < p.rows; ++r) {
    const bf16* x = p.x + r * p.ldx;
    uint8_t* e = p.entries + r * p.entry_bytes;
    e8m0* scales = e + dim / 2;
    for (int64_t g = 0; g < groups; ++g) {
      const bf16* xg = x + g * 32;
      uint8_t* eg = e + g * 16;
      float amax;
      if (!GroupAmax(xg, 32, &amax)) {
        scales[g] = kNanScale;
        std::fill(eg, eg + 16, uint8_t(0));
        continue;
      }
      scales[g] = Fp4Scale(amax);
      const float s = E8m0ToF32(scales[g]);
      for (int64_t j = 0; j < 16; ++j) {
        const uint8_t lo = F32ToFp4(std::clamp(Bf16ToF32(xg[2 * j]) / s, -6.0f, 6.0f));
        const uint8_t hi = F32ToFp4(std::clamp(Bf16ToF32(xg[2 * j + 1]) / s, -6.0f, 6.0f));
        eg[j] = uint8_t(lo | (hi << 4));
      }
    }
    const int64_t used = dim / 2 + groups;
    std::memset(e + used, 0, size_t(p.entry_bytes - used));
  }
}

void UnpackIndexerKeys(const KvUnpackParams& p) {
  const int64_t dim = p.nope, groups = dim / 32;
#pragma omp parallel for schedule(static) if (p.rows * p.entry_bytes >= (1 << 18))
  for (int64_t r = 0; r < p.rows; ++r) {
    const uint8_t* e = p.entries + r * p.entry_bytes;
    bf16* x = p.x + r * p.ldx;
    const e8m0* scales = e + dim / 2;
    for (int64_t g = 0; g < groups; ++g) {
      bf16* xg = x + g * 32;
      if (scales[g] == kNanScale) {
        std::fill(xg, xg + 32, kNanBf16);
        continue;
      }
      const float s = E8m0ToF32(scales[g]);
      const uint8_t* eg = e + g * 16;
      for (int64_t j = 0; j < 16; ++j) {
        xg[2 * j] = F32ToBf16(Fp4ToF32(eg[j] & 0xf) * s);
        xg[2 * j + 1] = F32ToBf16(Fp4ToF32(eg[j] >> 4) * s);
      }
    }
  }
}

}  // namespace flotilla::kernels
