// Token sampling: greedy, or temperature with top-k / top-p and a per-request seed.
#pragma once

#include <cstdint>

namespace flotilla {

struct SamplingParams {
  bool greedy = true;
  float temperature = 1.0f;  // > 0 when not greedy
  float top_p = 1.0f;        // (0, 1]
  int64_t top_k = 0;         // 0 = all
  uint64_t seed = 0;
};

// Deterministic: the same params and the same logits give the same tokens.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  int32_t Sample(const float* logits, int64_t vocab);

 private:
  double NextUniform();  // [0, 1)
  SamplingParams params_;
  uint64_t state_;
};

// Index of the largest value; ties go to the lowest index.
int32_t Argmax(const float* logits, int64_t n);

}  // namespace flotilla
