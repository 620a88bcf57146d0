#include "worker/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace flotilla {

int32_t Argmax(const float* logits, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (logits[i] > logits[best]) best = i;
  return int32_t(best);
}

TokenLogprobs LogProbs(const float* logits, int64_t vocab, int32_t token, int num_top) {
  double top = -INFINITY;
  for (int64_t i = 0; i < vocab; ++i) top = std::max(top, double(logits[i]));
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(double(logits[i]) - top);
  const double log_z = top + std::log(sum);
  TokenLogprobs out;
  out.logprob = float(double(logits[token]) - log_z);
  const int64_t k = std::min<int64_t>(num_top, vocab);
  if (k > 0) {
    std::vector<int32_t> ids(vocab);
    std::iota(ids.begin(), ids.end(), 0);
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (int64_t i = 0; i < k; ++i) {
      out.top.emplace_back(ids[i], float(double(logits[ids[i]]) - log_z));
    }
  }
  return out;
}

Sampler::Sampler(const SamplingParams& params) : params_(params), state_(params.seed) {}

double Sampler::NextUniform() {  // splitmix64
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return double(z >> 11) * 0x1p-53;
}

int32_t Sampler::Sample(const float* logits, int64_t vocab) {
  if (params_.greedy) return Argmax(logits, vocab);
  // Candidates in descending logit order (ties: lower id first), softmax at temperature T in
  // double, then top-k and the smallest prefix whose mass reaches top_p.
  std::vector<int32_t> ids(vocab);
  std::iota(ids.begin(), ids.end(), 0);
  const int64_t k = params_.top_k > 0 ? std::min(params_.top_k, vocab) : vocab;
  auto desc = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), desc);
  ids.resize(k);
  const double inv_t = 1.0 / double(params_.temperature), top = double(logits[ids[0]]);
  std::vector<double> p(k);
  double sum = 0.0;
  for (int64_t i = 0; i < k; ++i) sum += p[i] = std::exp((double(logits[ids[i]]) - top) * inv_t);
  int64_t keep = k;
  if (params_.top_p < 1.0f) {
    double acc = 0.0;
    for (int64_t i = 0; i < k; ++i) {
      acc += p[i] / sum;
      if (acc >= double(params_.top_p)) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept = 0.0;
  for (int64_t i = 0; i < keep; ++i) kept += p[i];
  const double u = NextUniform() * kept;
  double acc = 0.0;
  for (int64_t i = 0; i < keep; ++i) {
    acc += p[i];
    if (u < acc) return ids[i];
  }
  return ids[keep - 1];
}

}  // namespace flotilla
