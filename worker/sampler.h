// Token sampling: greedy, or temperature with top-k / top-p and a per-request seed.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

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

// Log softmax of raw `logits` (temperature 1, no top-k / top-p), computed in double: the value
// at `token`, and the `num_top` largest (most likely first, ties: lower id).
struct TokenLogprobs {
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;
};
TokenLogprobs LogProbs(const float* logits, int64_t vocab, int32_t token, int num_top);

}  // namespace flotilla
