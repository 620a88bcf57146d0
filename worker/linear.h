// A linear layer as stored in the checkpoint, used in that precision (spec §2.2, §11), run as
// Backend ops on a queue.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "common/status.h"
#include "kernels/backend.h"

namespace flotilla {

struct Linear {
  enum class Kind { kFp8, kFp8F32Scale, kFp4, kBf16 };
  Kind kind = Kind::kBf16;
  int64_t out = 0, in = 0;
  kernels::In<fp8> w8;           // [out, in]            kFp8, kFp8F32Scale
  kernels::In<e8m0> scale;       // [out/128, in/128]    kFp8;  [out, in/32] kFp4
  kernels::In<float> scale_f32;  // [out/128, in/128]    kFp8F32Scale
  kernels::In<uint8_t> w4;       // [out, in/2]          kFp4
  kernels::In<bf16> wb;          // [out, in]            kBf16

  bool TakesQuantizedInput() const { return kind != Kind::kBf16; }
};

// FP8 activations of m rows: codes [m, k] and UE8M0 scales [m, k/128] (spec §2.3), in spans of
// the step workspace (their capacity; rows [0, m) are the current ones).
struct QuantizedActs {
  kernels::Out<fp8> q;
  kernels::Out<e8m0> scale;
  int64_t m = 0, k = 0;
};

// Quantises m rows of x (row stride ldx, k columns) into `out` (1x128 groups).
absl::Status QuantizeActs(kernels::Backend& backend, kernels::Queue& queue, kernels::In<bf16> x,
                          int64_t ldx, int64_t m, int64_t k, QuantizedActs& out);

// y[m, out] = x · Wᵀ in the layer's precision: FP8/FP4 layers quantise x first (1×128 groups)
// into `scratch`.
absl::Status LinearForward(kernels::Backend& backend, kernels::Queue& queue, const Linear& l,
                           kernels::In<bf16> x, int64_t ldx, int64_t m, kernels::Out<bf16> y,
                           int64_t ldy, QuantizedActs& scratch);

// Same, for FP8/FP4 layers, from already-quantised rows (q/scale dense, m rows).
absl::Status LinearForwardQuantized(kernels::Backend& backend, kernels::Queue& queue,
                                    const Linear& l, kernels::In<fp8> q, kernels::In<e8m0> scale,
                                    int64_t m, kernels::Out<bf16> y, int64_t ldy);

}  // namespace flotilla
