// Helpers shared by the FP8 and FP8xFP4 GEMMs (internal).
#pragma once

#include <cstdint>
#include <vector>

#include "common/dtype.h"
#include "kernels/cpu/lane_order.h"

namespace flotilla::kernels::cpu {

// Decoded activations: f32 values of the E4M3 codes times `scale` (a power of two, exact), one
// row per activation row; NaN codes give the canonical NaN.
void DecodeFp8Rows(const fp8* a, int64_t m, int64_t k, std::vector<float>* out,
                   float scale = 1.0f);

// Second-level accumulation step shared by every path: acc + (P * sa) * sw.
inline float ScaleAndAdd(float acc, float p, float sa, float sw) { return acc + (p * sa) * sw; }

}  // namespace flotilla::kernels::cpu
