// A linear layer as stored in the checkpoint, used in that precision (spec §2.2, §11).
#pragma once

#include <cstdint>
#include <vector>

#include "common/dtype.h"

namespace flotilla {

struct Linear {
  enum class Kind { kFp8, kFp8F32Scale, kFp4, kBf16 };
  Kind kind = Kind::kBf16;
  int64_t out = 0, in = 0;
  const fp8* w8 = nullptr;           // [out, in]            kFp8, kFp8F32Scale
  const e8m0* scale = nullptr;       // [out/128, in/128]    kFp8;  [out, in/32] kFp4
  const float* scale_f32 = nullptr;  // [out/128, in/128]  kFp8F32Scale
  const uint8_t* w4 = nullptr;       // [out, in/2]          kFp4
  const bf16* wb = nullptr;          // [out, in]            kBf16

  bool TakesQuantizedInput() const { return kind != Kind::kBf16; }
};

// FP8 activations of m rows: codes [m, k] and UE8M0 scales [m, k/128] (spec §2.3).
struct QuantizedActs {
  std::vector<fp8> q;
  std::vector<e8m0> scale;
  int64_t m = 0, k = 0;
  const fp8* row(int64_t r) const { return q.data() + r * k; }
  const e8m0* row_scale(int64_t r) const { return scale.data() + r * (k / 128); }
};

void QuantizeActs(const bf16* x, int64_t ldx, int64_t m, int64_t k, QuantizedActs* out);

// y[m, out] = x · Wᵀ in the layer's precision: FP8/FP4 layers quantise x first (1×128 groups),
// into `scratch` when given (reserved by the caller: no allocation) or a temporary.
void LinearForward(const Linear& l, const bf16* x, int64_t ldx, int64_t m, bf16* y, int64_t ldy,
                   QuantizedActs* scratch = nullptr);

// Same, for FP8/FP4 layers, from already-quantised rows (q/scale dense, m rows).
void LinearForwardQuantized(const Linear& l, const fp8* q, const e8m0* scale, int64_t m, bf16* y,
                            int64_t ldy);

}  // namespace flotilla
