// The Sinkhorn split of one token's hyper-connection mixes (spec §4.3 step 4) as one FLOTILLA_HD
// function: the CPU backend's HcPre and the CUDA kernel (kernels/cuda/hyper_connection.cu) run
// this very code, so pre/post/comb are bitwise equal on both. Every f32 operation is a
// separately rounded one (hd::FMul/FAdd/FDiv: no contraction on the device); sums run in index
// order; exp and the sigmoid are common/hd_math.h's.
#pragma once

#include <cstdint>

#include "common/hd_math.h"

namespace flotilla::kernels {

// mix: [(2 + hc) * hc]; scale: [3]; base: [(2 + hc) * hc]. Writes pre [hc], post [hc] and
// comb [hc * hc] (comb[j * hc + k]: j input stream, k output stream).
FLOTILLA_HD void SinkhornSplit(const float* mix, const float* scale, const float* base, int64_t hc,
                               int64_t iters, float eps, float* pre, float* post, float* comb) {
  using hd::FAdd;
  using hd::FDiv;
  using hd::FMul;
  for (int64_t j = 0; j < hc; ++j) {
    pre[j] = FAdd(hd::SigmoidF(FAdd(FMul(mix[j], scale[0]), base[j])), eps);
    post[j] = FMul(2.0f, hd::SigmoidF(FAdd(FMul(mix[hc + j], scale[1]), base[hc + j])));
  }
  float* c = comb;
  for (int64_t i = 0; i < hc * hc; ++i)
    c[i] = FAdd(FMul(mix[2 * hc + i], scale[2]), base[2 * hc + i]);
  for (int64_t j = 0; j < hc; ++j) {  // row softmax + eps
    float* row = c + j * hc;
    float mx = row[0];
    for (int64_t k = 1; k < hc; ++k) mx = mx < row[k] ? row[k] : mx;  // std::max_element's pick
    float sum = 0.0f;
    for (int64_t k = 0; k < hc; ++k) {
      row[k] = hd::ExpF(FAdd(row[k], -mx));
      sum = FAdd(sum, row[k]);
    }
    for (int64_t k = 0; k < hc; ++k) row[k] = FAdd(FDiv(row[k], sum), eps);
  }
  for (int64_t it = 0; it < iters; ++it) {
    if (it > 0) {  // row normalisation (not before the first column pass)
      for (int64_t j = 0; j < hc; ++j) {
        float* row = c + j * hc;
        float sum = 0.0f;
        for (int64_t k = 0; k < hc; ++k) sum = FAdd(sum, row[k]);
        const float den = FAdd(sum, eps);
        for (int64_t k = 0; k < hc; ++k) row[k] = FDiv(row[k], den);
      }
    }
    for (int64_t k = 0; k < hc; ++k) {  // column normalisation
      float sum = 0.0f;
      for (int64_t j = 0; j < hc; ++j) sum = FAdd(sum, c[j * hc + k]);
      const float den = FAdd(sum, eps);
      for (int64_t j = 0; j < hc; ++j) c[j * hc + k] = FDiv(c[j * hc + k], den);
    }
  }
}

}  // namespace flotilla::kernels
