// The sampler against (a) the sort-based definition it replaced, token for token on random
// logits, and (b) an independent long-double computation of the distribution, by frequency;
// the log probabilities against hand-worked values.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "worker/sampler.h"

namespace flotilla {
namespace {

// The sampler as it was before the selection rewrite: a full sort of the candidates.
class SortSampler {
 public:
  explicit SortSampler(const SamplingParams& params) : params_(params), state_(params.seed) {}

  int32_t Sample(const float* logits, int64_t vocab) {
    if (params_.greedy) return Argmax(logits, vocab);
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

 private:
  double NextUniform() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return double(z >> 11) * 0x1p-53;
  }
  SamplingParams params_;
  uint64_t state_;
};

enum class Shape { kNormal, kWide, kTies, kPeaked, kNegInf };

std::vector<float> RandomLogits(int64_t vocab, Shape shape, std::mt19937_64& rng) {
  std::vector<float> l(vocab);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t i = 0; i < vocab; ++i) {
    switch (shape) {
      case Shape::kNormal: l[i] = normal(rng) * 2.0f; break;
      case Shape::kWide: l[i] = normal(rng) * 12.0f; break;               // most candidates pruned
      case Shape::kTies: l[i] = std::round(normal(rng) * 3.0f) * 0.5f; break;  // many equal logits
      case Shape::kPeaked: l[i] = normal(rng) * 3.0f + (i % 997 == 0 ? 30.0f : 0.0f); break;
      case Shape::kNegInf:
        l[i] = (i % 3 == 0) ? -std::numeric_limits<float>::infinity() : normal(rng) * 4.0f;
        break;
    }
  }
  if (shape == Shape::kTies) l[vocab / 2] = -0.0f;  // equal to +0 under `>`
  return l;
}

TEST(Sampler, SameTokenAsTheSortBasedDefinitionOnRandomLogits) {
  std::mt19937_64 rng(20261202);
  const std::vector<int64_t> vocabs = {1, 2, 7, 1000, 129280};
  const std::vector<int64_t> top_ks = {0, 1, 3, 40, 1000, 20000, 129280, 200000};
  const std::vector<float> top_ps = {1.0f, 0.95f, 0.5f, 0.05f, 0.999999f};
  const std::vector<float> temps = {1.0f, 0.2f, 0.7f, 3.0f};
  const Shape shapes[] = {Shape::kNormal, Shape::kWide, Shape::kTies, Shape::kPeaked,
                          Shape::kNegInf};
  int64_t cases = 0, draws = 0;
  for (int64_t vocab : vocabs) {
    for (Shape shape : shapes) {
      const std::vector<float> logits = RandomLogits(vocab, shape, rng);
      for (int trial = 0; trial < (vocab > 10000 ? 6 : 30); ++trial) {
        SamplingParams sp;
        sp.greedy = false;
        sp.temperature = temps[rng() % temps.size()];
        sp.top_p = top_ps[rng() % top_ps.size()];
        sp.top_k = top_ks[rng() % top_ks.size()];
        sp.seed = rng();
        Sampler fast(sp);
        SortSampler ref(sp);
        for (int d = 0; d < 4; ++d, ++draws) {
          ASSERT_EQ(fast.Sample(logits.data(), vocab), ref.Sample(logits.data(), vocab))
              << "vocab " << vocab << " shape " << int(shape) << " T " << sp.temperature
              << " top_p " << sp.top_p << " top_k " << sp.top_k << " seed " << sp.seed
              << " draw " << d;
        }
        ++cases;
      }
    }
  }
  EXPECT_EQ(draws, 4 * cases);
  EXPECT_GT(cases, 400);
}

// Frequencies over many draws against the distribution worked out independently in long
// double: softmax at T over the stable descending order, top-k, top-p prefix.
std::vector<long double> ReferenceDistribution(const std::vector<float>& logits, float t,
                                               int64_t top_k, float top_p) {
  const int64_t v = int64_t(logits.size());
  std::vector<int64_t> order(v);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  const int64_t k = top_k > 0 ? std::min<int64_t>(top_k, v) : v;
  std::vector<long double> w(k);
  long double total = 0;
  for (int64_t i = 0; i < k; ++i) {
    w[i] = std::exp((static_cast<long double>(logits[order[i]]) - logits[order[0]]) / t);
    total += w[i];
  }
  int64_t keep = k;
  if (top_p < 1.0f) {
    long double acc = 0;
    for (int64_t i = 0; i < k; ++i) {
      acc += w[i] / total;
      if (acc >= top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  long double kept = 0;
  for (int64_t i = 0; i < keep; ++i) kept += w[i];
  std::vector<long double> prob(v, 0.0L);
  for (int64_t i = 0; i < keep; ++i) prob[order[i]] = w[i] / kept;
  return prob;
}

TEST(Sampler, FrequenciesMatchAnIndependentReferenceDistribution) {
  // 12 logits with distinct, well separated top-p boundaries (no cut within 1e-3 of a prefix).
  const std::vector<float> logits = {0.3f, 2.0f, -1.0f, 1.2f, 0.8f, -0.4f,
                                     1.9f, 0.0f, -2.5f, 0.5f, 1.5f, -0.2f};
  struct Case {
    float t;
    int64_t top_k;
    float top_p;
  };
  const Case cases[] = {{1.0f, 0, 1.0f}, {0.5f, 0, 1.0f}, {1.0f, 4, 1.0f},
                        {1.0f, 0, 0.7f}, {2.0f, 6, 0.9f}, {0.8f, 1, 1.0f}};
  const int kDraws = 200000;
  for (const Case& c : cases) {
    const std::vector<long double> prob = ReferenceDistribution(logits, c.t, c.top_k, c.top_p);
    SamplingParams sp;
    sp.greedy = false;
    sp.temperature = c.t;
    sp.top_k = c.top_k;
    sp.top_p = c.top_p;
    sp.seed = 99;
    Sampler s(sp);
    std::vector<int64_t> count(logits.size(), 0);
    for (int d = 0; d < kDraws; ++d) ++count[s.Sample(logits.data(), int64_t(logits.size()))];
    for (size_t i = 0; i < logits.size(); ++i) {
      if (prob[i] == 0) {
        EXPECT_EQ(count[i], 0) << "token " << i << " is outside top-k/top-p";
        continue;
      }
      // 6 standard deviations of a binomial count: a false alarm is ~1e-9 per token.
      const double mean = double(prob[i]) * kDraws;
      const double sd = std::sqrt(mean * (1.0 - double(prob[i])));
      EXPECT_NEAR(double(count[i]), mean, 6.0 * sd + 1.0)
          << "token " << i << " T " << c.t << " top_k " << c.top_k << " top_p " << c.top_p;
    }
  }
}

TEST(Sampler, NonFiniteLogits) {
  SamplingParams sp;
  sp.greedy = false;
  sp.seed = 5;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  {  // NaN is never picked, whatever the draw.
    std::vector<float> l = {nan, 0.0f, nan, 0.0f, nan};
    Sampler s(sp);
    for (int d = 0; d < 200; ++d) {
      const int32_t t = s.Sample(l.data(), 5);
      EXPECT_TRUE(t == 1 || t == 3) << t;
    }
  }
  {  // +inf: the greedy choice (the first +inf).
    std::vector<float> l = {1.0f, inf, 3.0f, inf};
    Sampler s(sp);
    EXPECT_EQ(s.Sample(l.data(), 4), 1);
  }
  {  // nothing above -inf: the greedy choice, index 0.
    std::vector<float> l = {-inf, -inf, nan};
    Sampler s(sp);
    EXPECT_EQ(s.Sample(l.data(), 3), 0);
  }
  {  // temperature 0 is greedy.
    SamplingParams zero = sp;
    zero.temperature = 0.0f;
    std::vector<float> l = {0.1f, 0.5f, 0.5f, -3.0f};
    Sampler s(zero);
    EXPECT_EQ(s.Sample(l.data(), 4), 1);
  }
}

// Log probabilities against hand-worked values: logits log(1), log(2), log(3), log(2) are the
// distribution 1/8, 2/8, 3/8, 2/8 (any shift of the logits gives the same).
TEST(LogProbs, HandWorkedDistribution) {
  for (const float shift : {0.0f, 100.0f, -50.0f}) {
    const float logits[] = {std::log(1.0f) + shift, std::log(2.0f) + shift, std::log(3.0f) + shift,
                            std::log(2.0f) + shift};
    const TokenLogprobs lp = LogProbs(logits, 4, 1, 3);
    EXPECT_NEAR(lp.logprob, std::log(0.25), 1e-5) << shift;
    ASSERT_EQ(lp.top.size(), 3u);
    EXPECT_EQ(lp.top[0].first, 2);
    EXPECT_NEAR(lp.top[0].second, std::log(0.375), 1e-5);
    // A tie between ids 1 and 3: the lower id first.
    EXPECT_EQ(lp.top[1].first, 1);
    EXPECT_EQ(lp.top[2].first, 3);
    EXPECT_NEAR(lp.top[2].second, std::log(0.25), 1e-5);
  }
}

TEST(LogProbs, NoAlternativesAndMoreThanTheVocabulary) {
  const float logits[] = {0.0f, 0.0f};
  EXPECT_TRUE(LogProbs(logits, 2, 0, 0).top.empty());
  EXPECT_NEAR(LogProbs(logits, 2, 0, 0).logprob, std::log(0.5), 1e-6);
  EXPECT_EQ(LogProbs(logits, 2, 1, 20).top.size(), 2u);
}

}  // namespace
}  // namespace flotilla
