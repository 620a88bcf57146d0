// act_quant and the in-place FP8 / FP4 simulations: exact against the reference.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "kernels/ops.h"
#include "tests/kernels/reference.h"
#include "tests/kernels/test_util.h"

namespace flotilla::kernels {
namespace {

struct QuantCase {
  int64_t m, k, ld;
  double stddev;
};

std::vector<bf16> QuantInput(const QuantCase& c, uint64_t seed) {
  test::Rng rng(seed);
  std::vector<bf16> x = rng.Bf16(c.m * c.ld, c.stddev);
  // Structured groups: zeros (amax floor), one dominant element, tiny values, subnormal codes.
  if (c.k >= 512) {
    for (int64_t j = 0; j < 128; ++j) x[j] = 0;
    for (int64_t j = 128; j < 256; ++j) x[j] = F32ToBf16(static_cast<float>(rng.Normal(1e-7)));
    x[300] = F32ToBf16(3e4f);
    for (int64_t j = 384; j < 512; ++j) x[j] = F32ToBf16(static_cast<float>(j - 448) * 0.01f);
  }
  return x;
}

class ActQuantTest : public ::testing::TestWithParam<QuantCase> {};

TEST_P(ActQuantTest, ExactScalesAndCodes) {
  const QuantCase c = GetParam();
  const std::vector<bf16> x = QuantInput(c, 11 + c.k);
  std::vector<fp8> q(c.m * c.k), q_ref(c.m * c.k);
  std::vector<e8m0> s(c.m * c.k / 128), s_ref(c.m * c.k / 128);
  ActQuantFp8({.x = x.data(),
               .ldx = c.ld,
               .m = c.m,
               .k = c.k,
               .block = 128,
               .q = q.data(),
               .scale = s.data()});
  ref::ActQuant(x.data(), c.ld, c.m, c.k, 128, q_ref.data(), s_ref.data());
  EXPECT_BITWISE_EQ(s, s_ref);
  EXPECT_BITWISE_EQ(q, q_ref);
  for (fp8 code : q) ASSERT_NE(code & 0x7f, 0x7f) << "NaN code from finite input";
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ActQuantTest,
    ::testing::Values(QuantCase{1, 128, 128, 1.0}, QuantCase{3, 256, 300, 0.05},
                      QuantCase{1, 4096, 4096, 1.0}, QuantCase{7, 1024, 1024, 30.0},
                      QuantCase{2, 8192, 8192, 1e-3}, QuantCase{5, 512, 512, 1e4}));

TEST(ActQuant, NonFiniteGroupGivesNanScaleAndCodes) {
  test::Rng rng(5);
  std::vector<bf16> x = rng.Bf16(2 * 384);
  x[130] = F32ToBf16(std::numeric_limits<float>::quiet_NaN());
  x[384 + 300] = F32ToBf16(std::numeric_limits<float>::infinity());
  std::vector<fp8> q(2 * 384);
  std::vector<e8m0> s(6);
  ActQuantFp8({.x = x.data(),
               .ldx = 384,
               .m = 2,
               .k = 384,
               .block = 128,
               .q = q.data(),
               .scale = s.data()});
  EXPECT_EQ(s[1], 0xff);
  EXPECT_EQ(s[5], 0xff);
  EXPECT_NE(s[0], 0xff);
  for (int j = 128; j < 256; ++j) EXPECT_EQ(q[j], 0x7f);
  EXPECT_NE(q[0] & 0x7f, 0x7f);
}

TEST(Fp8Simulate, ExactOnKvRows) {
  test::Rng rng(6);
  const int64_t rows = 9, ld = 512;
  std::vector<bf16> x = rng.Bf16(rows * ld, 0.7);
  for (int64_t j = 0; j < 64; ++j) x[j] = F32ToBf16(static_cast<float>(rng.Normal(1e-6)));
  std::vector<bf16> want = x;
  Fp8SimulateInPlace(x.data(), rows, ld, 448, 64);
  ref::Fp8Simulate(want.data(), rows, ld, 448, 64);
  EXPECT_BITWISE_EQ(x, want);
  EXPECT_EQ(test::CountNan(x), 0);
  // The rope part (448..511) is untouched.
  test::Rng again(6);
  const std::vector<bf16> orig = again.Bf16(rows * ld, 0.7);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 448; j < 512; ++j) EXPECT_EQ(x[r * ld + j], orig[r * ld + j]);
}

TEST(Fp8Simulate, PartialLastGroup) {
  test::Rng rng(7);
  std::vector<bf16> x = rng.Bf16(3 * 100, 2.0), want = x;
  Fp8SimulateInPlace(x.data(), 3, 100, 100, 64);
  ref::Fp8Simulate(want.data(), 3, 100, 100, 64);
  EXPECT_BITWISE_EQ(x, want);
}

TEST(Fp4Simulate, ExactOnIndexerRows) {
  test::Rng rng(8);
  const int64_t rows = 12, dim = 128;
  std::vector<bf16> x = rng.Bf16(rows * dim, 0.3);
  for (int64_t j = 0; j < 32; ++j) x[j] = 0;                       // amax floor 6 * 2^-126
  for (int64_t j = 32; j < 64; ++j) x[j] = F32ToBf16(1e-30f * j);  // tiny scales
  std::vector<bf16> want = x;
  Fp4SimulateInPlace(x.data(), rows, dim, dim, 32);
  ref::Fp4Simulate(want.data(), rows, dim, dim, 32);
  EXPECT_BITWISE_EQ(x, want);
  EXPECT_EQ(test::CountNan(x), 0);
  // Every output is an E2M1 value times a power of two.
  for (int64_t j = 64; j < rows * dim; ++j) {
    const float v = std::fabs(Bf16ToF32(x[j]));
    if (v == 0) continue;
    int e;
    const float f = std::frexp(v, &e);  // v = f * 2^e: mantissa in {0.5, 0.75}
    EXPECT_TRUE(f == 0.5f || f == 0.75f) << v;
  }
}

}  // namespace
}  // namespace flotilla::kernels
