#include "worker/sampler.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <numeric>
#include <vector>

#include "common/hd_math.h"

namespace flotilla {
namespace {

// A candidate whose scaled logit (logit − max) / T is below this has exp() < 2^-53: the running
// mass is already ≥ 1 (the top candidate adds exp(0) = 1 first), so adding it rounds to the same
// double, and so does every candidate after it in descending order. exp(-37.5) ≈ 5.2e-17.
constexpr double kNegligibleScaledLogit = -37.5;
// Pruning is shown exact for up to this many candidates (docs/numerics.md, "Sampling").
constexpr int64_t kMaxPrunedVocab = int64_t(1) << 24;

// Descending-order key: a larger float gets a smaller key; -0 and +0 are equal, as under `>`.
uint32_t DescendingKey(float f) {
  if (f == 0.0f) f = 0.0f;
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t ascending = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return ~ascending;
}

// A candidate as one integer: its descending key above its id, so ascending integer order is
// descending logit order with ties to the lower id.
uint64_t Packed(float logit, int64_t id) { return (uint64_t(DescendingKey(logit)) << 32) | uint64_t(id); }

struct Scratch {
  std::vector<uint64_t> cand, tmp;
};

// Stable LSD radix sort of `n` packed candidates by their key (the top 32 bits), 11 bits a pass;
// passes whose digit is the same for every candidate are skipped. Candidates that enter in id
// order leave in packed order.
void RadixSortByKey(Scratch& s, size_t n) {
  s.tmp.resize(n);
  for (int shift = 32; shift < 64; shift += 11) {
    std::array<uint32_t, 2048> count{};
    for (size_t i = 0; i < n; ++i) ++count[(s.cand[i] >> shift) & 2047u];
    if (count[(s.cand[0] >> shift) & 2047u] == n) continue;
    uint32_t sum = 0;
    for (uint32_t& c : count) {
      const uint32_t v = c;
      c = sum;
      sum += v;
    }
    for (size_t i = 0; i < n; ++i) s.tmp[count[(s.cand[i] >> shift) & 2047u]++] = s.cand[i];
    std::swap_ranges(s.tmp.begin(), s.tmp.begin() + n, s.cand.begin());
  }
}

}  // namespace

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
  if (params_.greedy || !(params_.temperature > 0.0f)) return Argmax(logits, vocab);
  const double uniform = NextUniform();
  if (vocab <= kMaxPrunedVocab) {
    if (auto id = Pick(logits, vocab, uniform, true)) return *id;
  }
  return *Pick(logits, vocab, uniform, false);
}

// The distribution over the first n = min(k, m) candidates of `cand` (ids in the low 32 bits, in
// descending order), whose m candidates are a prefix of the descending order of the k top-k
// candidates; the k − m left out each add less than half an ulp to every running sum.
std::optional<int32_t> Sampler::Distribute(const float* logits, const uint64_t* cand, int64_t k,
                                           int64_t m, float top, double uniform) const {
  thread_local std::vector<double> p_buf;
  const int64_t n = std::min(k, m);
  auto ids = [cand](int64_t i) { return int32_t(uint32_t(cand[i])); };
  const double inv_t = 1.0 / double(params_.temperature), top_d = double(top);
  p_buf.resize(n);
  double* p = p_buf.data();
  double sum = 0.0;
  // hd::ExpD, not std::exp: the CUDA sampler computes the same bits (kernels/cuda/sampling.h).
  for (int64_t i = 0; i < n; ++i) {
    sum += p[i] = hd::ExpD(hd::DMul(hd::DSub(double(logits[ids(i)]), top_d), inv_t));
  }
  int64_t keep = k;
  if (params_.top_p < 1.0f) {
    double acc = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      acc += p[i] / sum;
      if (acc >= double(params_.top_p)) {
        keep = i + 1;
        break;
      }
    }
    // The normalised mass of the prefix is within 2^-28 of 1, above any float top_p < 1, so the
    // cut falls inside it; if rounding ever said otherwise, the caller repeats without pruning.
    if (keep == k && n < k) return std::nullopt;
  }
  const int64_t summed = std::min(keep, n);
  double kept = 0.0;
  for (int64_t i = 0; i < summed; ++i) kept += p[i];
  const double u = uniform * kept;
  double acc = 0.0;
  for (int64_t i = 0; i < summed; ++i) {
    acc += p[i];
    if (u < acc) return ids(i);
  }
  // u rounded up to the kept mass: the definition picks the last kept candidate.
  if (keep > n) return std::nullopt;
  return ids(keep - 1);
}

// Few top-k candidates are selected straight from the logits. Otherwise the candidates that can
// change a sum (scaled logit ≥ kNegligibleScaledLogit), a prefix of the descending order, are put
// in that order by a radix sort on their float bits (or by selection when top-k keeps few of
// them). The sums then run over that prefix in that order, so every double is the one the
// full-order definition computes; the negligible rest adds nothing.
std::optional<int32_t> Sampler::Pick(const float* logits, int64_t vocab, double uniform,
                                     bool prune) const {
  thread_local Scratch scratch;
  Scratch& s = scratch;
  if (s.cand.size() < size_t(vocab)) s.cand.resize(vocab);
  uint64_t* cand = s.cand.data();
  if (params_.top_k > 0 && params_.top_k <= 1024 && params_.top_k * 8 <= vocab) {
    thread_local std::vector<int32_t> ids;
    ids.resize(vocab);
    for (int64_t i = 0; i < vocab; ++i) ids[i] = int32_t(i);
    auto desc = [logits](int32_t a, int32_t b) {  // NaN orders last
      const float la = logits[a], lb = logits[b];
      if (lb != lb) return la == la;
      return la > lb || (la == lb && a < b);
    };
    int64_t k = params_.top_k;
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), desc);
    const float top = logits[ids[0]];
    while (k > 0 && std::isnan(logits[ids[k - 1]])) --k;
    if (k == 0 || std::isinf(top)) return Argmax(logits, vocab);
    for (int64_t i = 0; i < k; ++i) cand[i] = uint64_t(uint32_t(ids[i]));
    return Distribute(logits, cand, k, k, top, uniform);
  }

  float top = -INFINITY;
  int64_t num_nan = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    const float l = logits[i];
    top = top < l ? l : top;  // NaN never wins
    num_nan += l != l;
  }
  if (std::isinf(top)) return Argmax(logits, vocab);  // also: nothing above -inf
  const int64_t num_valid = vocab - num_nan;
  const int64_t k = params_.top_k > 0 ? std::min(params_.top_k, num_valid) : num_valid;
  const double inv_t = 1.0 / double(params_.temperature), top_d = double(top);
  int64_t m = 0;  // candidates kept, ≥ 1 (the top one)
  if (!prune && num_nan == 0) {
    for (int64_t i = 0; i < vocab; ++i) cand[i] = Packed(logits[i], i);
    m = vocab;
  } else {
    for (int64_t i = 0; i < vocab; ++i) {  // branch-free: the outcome is unpredictable
      const float l = logits[i];
      cand[m] = Packed(l, i);
      m += l == l && (!prune || (double(l) - top_d) * inv_t >= kNegligibleScaledLogit);
    }
  }
  if (k * 8 <= m) {
    std::nth_element(cand, cand + (k - 1), cand + m);
    std::sort(cand, cand + k);
  } else if (m > 1) {
    RadixSortByKey(s, size_t(m));
  }
  return Distribute(logits, cand, k, m, top, uniform);
}

}  // namespace flotilla
