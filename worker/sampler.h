// Token sampling: greedy, or temperature with top-k / top-p and a per-request seed.
#pragma once

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace flotilla {

struct SamplingParams {
  bool greedy = true;
  float temperature = 1.0f;  // > 0 when not greedy (<= 0 samples greedily)
  float top_p = 1.0f;        // (0, 1]
  int64_t top_k = 0;         // 0 = all
  uint64_t seed = 0;
};

// Deterministic: the same params and the same logits give the same tokens.
//
// The distribution is defined on the candidates in descending logit order (ties: lower id
// first): softmax at temperature T in double, summed in that order; top-k keeps the first k;
// top-p keeps the shortest prefix whose normalised mass reaches top_p; one uniform draw u in
// [0, 1) picks the first candidate whose running mass exceeds u × (kept mass). Sample() gives
// exactly that token without sorting the vocabulary (docs/numerics.md, "Sampling"): NaN logits
// are never picked; when the largest logit is +inf, or none is above -inf, it returns Argmax.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  int32_t Sample(const float* logits, int64_t vocab);

 private:
  double NextUniform();  // [0, 1)
  // The pick for the draw `uniform`; nullopt when `prune` cannot be shown exact for these
  // logits (the caller then repeats without pruning).
  std::optional<int32_t> Pick(const float* logits, int64_t vocab, double uniform, bool prune) const;
  std::optional<int32_t> Distribute(const float* logits, const uint64_t* cand, int64_t k,
                                    int64_t m, float top, double uniform) const;
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
