// Log probabilities against hand-worked values: logits log(1), log(2), log(3), log(2) are the
// distribution 1/8, 2/8, 3/8, 2/8 (any shift of the logits gives the same).
#include "worker/sampler.h"

#include <cmath>

#include "gtest/gtest.h"

namespace flotilla {
namespace {

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
