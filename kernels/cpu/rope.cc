// Rotary embedding (spec §5.3): frequency tables with optional YaRN, interleaved-pair rotation.
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/hd_math.h"
#include "kernels/ops.h"

namespace flotilla::kernels {
namespace {

// Correctly rounded powf for the table (the spec's reference values assume it): the double
// result is within 1 ulp of double, so its rounding to f32 is the correctly rounded f32.
inline float PowCorrectlyRounded(float base, float e) {
  return static_cast<float>(std::pow(static_cast<double>(base), static_cast<double>(e)));
}

}  // namespace

void RopeFrequencies(int64_t rope_dim, double base, bool yarn, double factor,
                     int64_t original_max_position, double beta_fast, double beta_slow,
                     float* freqs) {
  const int64_t half = rope_dim / 2;
  const float base_f = static_cast<float>(base);
  for (int64_t i = 0; i < half; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(rope_dim);
    freqs[i] = 1.0f / PowCorrectlyRounded(base_f, e);
  }
  if (!yarn) return;
  const double pi = 3.14159265358979323846;
  const auto correction_dim = [&](double rotations) {
    return static_cast<double>(rope_dim) *
           std::log(static_cast<double>(original_max_position) / (rotations * 2.0 * pi)) /
           (2.0 * std::log(base));
  };
  const double low = std::max(std::floor(correction_dim(beta_fast)), 0.0);
  const double high =
      std::min(std::ceil(correction_dim(beta_slow)), static_cast<double>(rope_dim - 1));
  double span = high - low;
  if (span == 0.0) span = 0.001;  // the reference's guard (max += 0.001)
  const float inv_span = static_cast<float>(1.0 / span);
  const float inv_factor = static_cast<float>(1.0 / factor);
  for (int64_t i = 0; i < half; ++i) {
    const float ramp =
        std::clamp(static_cast<float>(static_cast<double>(i) - low) * inv_span, 0.0f, 1.0f);
    const float smooth = 1.0f - ramp;
    const float f = freqs[i];
    freqs[i] = (f * inv_factor) * (1.0f - smooth) + f * smooth;
  }
}

void ApplyRope(const RopeParams& p) {
  const int64_t half = p.rope_dim / 2;
#pragma omp parallel if (p.num_tokens * p.num_heads * p.rope_dim >= (1 << 15))
  {
    static thread_local std::vector<float> cs;  // grows once per thread, then reused
    cs.assign(size_t(2 * half), 0.0f);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < p.num_tokens; ++t) {
      const float pos = static_cast<float>(p.positions[t]);
      for (int64_t i = 0; i < half; ++i) {
        const float theta = pos * p.freqs[i];
        float s, c;
        hd::SinCosF(theta, &s, &c);  // the CUDA kernel's bits (common/hd_math.h)
        cs[2 * i] = c;
        cs[2 * i + 1] = p.inverse ? -s : s;
      }
      for (int64_t h = 0; h < p.num_heads; ++h) {
        bf16* x = p.x + t * p.ld + h * p.head_stride + p.rope_offset;
        for (int64_t i = 0; i < half; ++i) {
          const float re = Bf16ToF32(x[2 * i]), im = Bf16ToF32(x[2 * i + 1]);
          const float c = cs[2 * i], s = cs[2 * i + 1];
          x[2 * i] = F32ToBf16(re * c - im * s);
          x[2 * i + 1] = F32ToBf16(re * s + im * c);
        }
      }
    }
  }
}

}  // namespace flotilla::kernels
