// Scalar codecs of common/dtype.h against independent double-precision references.
#include "common/dtype.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace flotilla {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---- independent references (spec §2.1) ----

double RefE4m3(int code) {
  const int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
  if (e == 15 && m == 7) return kNaN;
  const double mag =
      e == 0 ? (m / 8.0) * std::ldexp(1.0, -6) : (1 + m / 8.0) * std::ldexp(1.0, e - 7);
  return s ? -mag : mag;
}

// Nearest code by exhaustive search after clamping to +-448; ties to the even code (whose
// lowest bit is the mantissa's lowest bit). The sign of x is kept, so small negatives give -0.
int RefEncodeE4m3(float x) {
  if (std::isnan(x)) return std::signbit(x) ? 0xFF : 0x7F;
  const int sign = std::signbit(x) ? 0x80 : 0;
  const double a = std::min(std::fabs(double(x)), 448.0);
  int best = 0;
  double best_err = std::numeric_limits<double>::infinity();
  for (int c = 0; c <= 0x7E; ++c) {
    const double err = std::fabs(RefE4m3(c) - a);
    if (err < best_err || (err == best_err && (c & 1) == 0)) {
      best = c;
      best_err = err;
    }
  }
  return sign | best;
}

constexpr double kE2m1[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};

int RefEncodeE2m1(float x) {
  const int sign = std::signbit(x) ? 8 : 0;
  const double a = std::min(std::fabs(double(x)), 6.0);
  int best = 0;
  double best_err = std::numeric_limits<double>::infinity();
  for (int c = 0; c < 8; ++c) {
    const double err = std::fabs(kE2m1[c] - a);
    if (err < best_err || (err == best_err && (c & 1) == 0)) {
      best = c;
      best_err = err;
    }
  }
  return sign | best;
}

// bf16 by value: the two neighbours of x, nearest wins, ties to the even pattern; the pattern
// past the largest finite value stands for 2^128 (IEEE overflow rounding).
uint16_t RefEncodeBf16(float x) {
  const uint32_t u = F32ToBits(x);
  const uint16_t lo = uint16_t(u >> 16);
  if ((u & 0xffff) == 0) return lo;
  const uint16_t hi = uint16_t(lo + 1);
  auto value = [](uint16_t b) {
    if ((b & 0x7fff) == 0x7f80) return std::copysign(std::ldexp(1.0, 128), b & 0x8000 ? -1.0 : 1.0);
    return double(Bf16ToF32(b));
  };
  const double err_lo = std::fabs(double(x) - value(lo)), err_hi = std::fabs(double(x) - value(hi));
  if (err_lo != err_hi) return err_lo < err_hi ? lo : hi;
  return (lo & 1) == 0 ? lo : hi;
}

// ceil(log2(r)) for r > 0 via frexp (r = f * 2^e, f in [0.5, 1)).
int RefCeilLog2(float r) {
  int e = 0;
  const double f = std::frexp(double(r), &e);
  return f == 0.5 ? e - 1 : e;
}

std::vector<float> InterestingFloats() {
  std::vector<float> xs;
  std::mt19937 rng(1234);
  std::uniform_int_distribution<uint32_t> bits;
  std::uniform_real_distribution<float> exp2(-20.0f, 12.0f);
  for (int i = 0; i < 100000; ++i) xs.push_back(BitsToF32(bits(rng)));
  for (int i = 0; i < 100000; ++i) {
    const float x = std::exp2(exp2(rng));
    xs.push_back(i % 2 ? x : -x);
  }
  for (float x : {0.0f, -0.0f, 1.0f, 448.0f, 464.0f, 480.0f, 6.0f, 7.0f,
                  std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                  std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::max(),
                  std::numeric_limits<float>::min()}) {
    xs.push_back(x);
  }
  return xs;
}

// ---- E4M3 ----

TEST(E4m3, DecodesAll256CodesLikeTheSpecFormula) {
  for (int c = 0; c < 256; ++c) {
    const double want = RefE4m3(c);
    const float got = Fp8ToF32(fp8(c));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << "code " << c;
      EXPECT_EQ(std::signbit(got), c >= 0x80) << "code " << c;
    } else {
      EXPECT_EQ(double(got), want) << "code " << c;
      EXPECT_EQ(std::signbit(got), c >= 0x80) << "code " << c;
    }
  }
  EXPECT_EQ(Fp8ToF32(0x38), 1.0f);
  EXPECT_EQ(Fp8ToF32(0x40), 2.0f);
  EXPECT_EQ(Fp8ToF32(0x30), 0.5f);
  EXPECT_EQ(Fp8ToF32(0x08), 0x1p-6f);
  EXPECT_EQ(Fp8ToF32(0x01), 0x1p-9f);
  EXPECT_EQ(Fp8ToF32(0x7E), 448.0f);
  EXPECT_TRUE(std::isnan(Fp8ToF32(0x7F)));
  EXPECT_TRUE(std::isnan(Fp8ToF32(0xFF)));
}

TEST(E4m3, EncodeOfDecodeIsIdentityForEveryNonNanCode) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7F) == 0x7F) continue;
    EXPECT_EQ(int(F32ToFp8(Fp8ToF32(fp8(c)))), c) << "code " << c;
  }
  EXPECT_EQ(F32ToFp8(-0.0f), 0x80);
  EXPECT_EQ(F32ToFp8(0.0f), 0x00);
}

TEST(E4m3, MidpointsRoundToEvenAndNeighboursRoundToNearest) {
  for (int c = 0; c < 0x7E; ++c) {
    const float lo = Fp8ToF32(fp8(c)), hi = Fp8ToF32(fp8(c + 1));
    const float mid = (lo + hi) / 2;  // exact: both have at most 4 significant bits
    ASSERT_EQ(double(mid), (double(lo) + double(hi)) / 2);
    const int even = (c & 1) == 0 ? c : c + 1;
    EXPECT_EQ(int(F32ToFp8(mid)), even) << "between codes " << c << " and " << c + 1;
    EXPECT_EQ(int(F32ToFp8(-mid)), 0x80 | even);
    EXPECT_EQ(int(F32ToFp8(std::nextafter(mid, 0.0f))), c);
    EXPECT_EQ(int(F32ToFp8(std::nextafter(mid, 1e9f))), c + 1);
  }
}

TEST(E4m3, SaturatesAfterClamping) {
  EXPECT_EQ(F32ToFp8(448.0f), 0x7E);
  EXPECT_EQ(F32ToFp8(449.0f), 0x7E);
  EXPECT_EQ(F32ToFp8(464.0f), 0x7E);  // would round to 480 without the clamp
  EXPECT_EQ(F32ToFp8(479.0f), 0x7E);
  EXPECT_EQ(F32ToFp8(1e9f), 0x7E);
  EXPECT_EQ(F32ToFp8(std::numeric_limits<float>::max()), 0x7E);
  EXPECT_EQ(F32ToFp8(std::numeric_limits<float>::infinity()), 0x7E);
  EXPECT_EQ(F32ToFp8(-448.0f), 0xFE);
  EXPECT_EQ(F32ToFp8(-464.0f), 0xFE);
  EXPECT_EQ(F32ToFp8(-std::numeric_limits<float>::infinity()), 0xFE);
  EXPECT_EQ(F32ToFp8(432.0f), 0x7E);  // tie between 416 (0x7D) and 448 (0x7E): even is 0x7E
  EXPECT_EQ(F32ToFp8(431.99f), 0x7D);
}

TEST(E4m3, SubnormalsAndUnderflow) {
  EXPECT_EQ(F32ToFp8(0x1p-9f), 0x01);       // smallest subnormal
  EXPECT_EQ(F32ToFp8(0x1p-10f), 0x00);      // half of it: tie to even (zero)
  EXPECT_EQ(F32ToFp8(-0x1p-10f), 0x80);     // -0
  EXPECT_EQ(F32ToFp8(3 * 0x1p-11f), 0x01);  // 0.75 * 2^-9
  EXPECT_EQ(F32ToFp8(3 * 0x1p-10f), 0x02);  // 1.5 * 2^-9: tie to even (2)
  EXPECT_EQ(F32ToFp8(5 * 0x1p-10f), 0x02);  // 2.5 * 2^-9: tie to even (2)
  EXPECT_EQ(F32ToFp8(std::nextafter(0x1p-10f, 1.0f)), 0x01);
  EXPECT_EQ(F32ToFp8(15 * 0x1p-10f), 0x08);  // 7.5 * 2^-9: tie to 0x08 (2^-6)
  EXPECT_EQ(F32ToFp8(std::numeric_limits<float>::denorm_min()), 0x00);
  EXPECT_EQ(F32ToFp8(1e-30f), 0x00);
}

TEST(E4m3, NanStaysNanWithSign) {
  EXPECT_EQ(F32ToFp8(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(F32ToFp8(-std::numeric_limits<float>::quiet_NaN()), 0xFF);
  EXPECT_EQ(F32ToFp8(BitsToF32(0x7f800001u)), 0x7F);  // signalling NaN
}

TEST(E4m3, MatchesExhaustiveSearchOnRandomInputs) {
  for (float x : InterestingFloats()) {
    ASSERT_EQ(int(F32ToFp8(x)), RefEncodeE4m3(x))
        << "x = " << x << " bits " << std::hex << F32ToBits(x);
  }
}

// ---- UE8M0 ----

TEST(E8m0, DecodesAll256Codes) {
  for (int b = 0; b < 255; ++b) {
    EXPECT_EQ(double(E8m0ToF32(e8m0(b))), std::ldexp(1.0, b - 127)) << "code " << b;
  }
  EXPECT_TRUE(std::isnan(E8m0ToF32(0xFF)));
  EXPECT_EQ(E8m0ToF32(127), 1.0f);
  EXPECT_EQ(E8m0ToF32(0), 0x1p-127f);
}

// ---- E2M1 ----

TEST(E2m1, DecodesAll16Nibbles) {
  for (int n = 0; n < 16; ++n) {
    const double want = (n & 8 ? -1 : 1) * kE2m1[n & 7];
    EXPECT_EQ(double(Fp4ToF32(uint8_t(n))), want) << "nibble " << n;
    EXPECT_EQ(std::signbit(Fp4ToF32(uint8_t(n))), n >= 8) << "nibble " << n;
    EXPECT_EQ(int(F32ToFp4(Fp4ToF32(uint8_t(n)))), n) << "nibble " << n;
  }
  EXPECT_EQ(Fp4ToF32(0xF7), 6.0f);  // only the low nibble counts
}

TEST(E2m1, TiesRoundToEvenAndSaturate) {
  struct Case {
    float x;
    int code;
  };
  const Case cases[] = {{0.25f, 0},
                        {0.26f, 1},
                        {0.75f, 2},
                        {0.74f, 1},
                        {1.25f, 2},
                        {1.26f, 3},
                        {1.75f, 4},
                        {1.74f, 3},
                        {2.5f, 4},
                        {2.51f, 5},
                        {3.5f, 6},
                        {3.49f, 5},
                        {5.0f, 6},
                        {5.01f, 7},
                        {6.0f, 7},
                        {7.0f, 7},
                        {1e30f, 7},
                        {-0.25f, 8},
                        {-0.75f, 10},
                        {-1.75f, 12},
                        {-2.5f, 12},
                        {-3.5f, 14},
                        {-5.0f, 14},
                        {-7.0f, 15},
                        {0.1f, 0},
                        {-0.1f, 8},
                        {std::numeric_limits<float>::infinity(), 7},
                        {-std::numeric_limits<float>::infinity(), 15}};
  for (const Case& c : cases) EXPECT_EQ(int(F32ToFp4(c.x)), c.code) << "x = " << c.x;
  EXPECT_EQ(int(F32ToFp4(std::numeric_limits<float>::quiet_NaN())), 0);
}

TEST(E2m1, MatchesExhaustiveSearchOnRandomInputs) {
  for (float x : InterestingFloats()) {
    if (std::isnan(x)) continue;
    ASSERT_EQ(int(F32ToFp4(x)), RefEncodeE2m1(x)) << "x = " << x;
  }
  for (int i = 0; i <= 7 * 64; ++i) {  // every multiple of 1/64 in [0, 7]
    const float x = float(i) / 64;
    ASSERT_EQ(int(F32ToFp4(x)), RefEncodeE2m1(x)) << "x = " << x;
    ASSERT_EQ(int(F32ToFp4(-x)), RefEncodeE2m1(-x)) << "x = " << -x;
  }
}

// ---- bf16 ----

TEST(Bf16, RoundTripsEveryNonNanPattern) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float f = Bf16ToF32(bf16(b));
    EXPECT_EQ(F32ToBits(f), b << 16);
    if (std::isnan(f)) continue;
    ASSERT_EQ(F32ToBf16(f), bf16(b)) << std::hex << b;
  }
}

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(F32ToBf16(1.0f + 0x1p-8f), 0x3F80);             // tie: down to even 1.0
  EXPECT_EQ(F32ToBf16(1.0f + 3 * 0x1p-8f), 0x3F82);         // tie: up to even 1 + 2^-6
  EXPECT_EQ(F32ToBf16(1.0f + 0x1p-8f + 0x1p-23f), 0x3F81);  // just above the tie
  EXPECT_EQ(F32ToBf16(-(1.0f + 0x1p-8f)), 0xBF80);
  EXPECT_EQ(F32ToBf16(std::numeric_limits<float>::max()), 0x7F80);  // overflows to inf
  EXPECT_EQ(F32ToBf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(F32ToBf16(-0.0f), 0x8000);
  EXPECT_EQ(RoundBf16(3.14159265f), Bf16ToF32(0x4049));
}

TEST(Bf16, NanStaysQuietNanWithSign) {
  for (uint32_t bits : {0x7fc00000u, 0x7f800001u, 0x7f810000u, 0xffc00000u, 0xff800001u}) {
    const bf16 b = F32ToBf16(BitsToF32(bits));
    EXPECT_TRUE(std::isnan(Bf16ToF32(b))) << std::hex << bits;
    EXPECT_EQ(b & 0x8000, (bits >> 16) & 0x8000) << std::hex << bits;
    EXPECT_NE(b & 0x0040, 0) << "quiet bit, " << std::hex << bits;
  }
}

TEST(Bf16, MatchesNearestNeighbourOnRandomInputs) {
  for (float x : InterestingFloats()) {
    if (std::isnan(x)) continue;
    ASSERT_EQ(F32ToBf16(x), RefEncodeBf16(x))
        << "x = " << x << " bits " << std::hex << F32ToBits(x);
  }
}

// ---- power-of-two scales ----

TEST(CeilPow2ScaleBits, ExactPowersAndNeighbours) {
  for (int k = -126; k <= 127; ++k) {
    const float p = std::ldexp(1.0f, k);
    EXPECT_EQ(int(CeilPow2ScaleBits(p)), k + 127) << "2^" << k;
    if (k < 127) {
      EXPECT_EQ(int(CeilPow2ScaleBits(std::nextafter(p, std::numeric_limits<float>::infinity()))),
                k + 128)
          << "just above 2^" << k;
    }
    EXPECT_EQ(int(CeilPow2ScaleBits(std::nextafter(p, 0.0f))), k + 127) << "just below 2^" << k;
    EXPECT_EQ(int(CeilPow2ScaleBits(1.5f * p)), k + 128 <= 255 ? k + 128 : 255);
  }
  EXPECT_EQ(CeilPow2ScaleBits(1.0f), 127);
  EXPECT_EQ(CeilPow2ScaleBits(3.0f), 129);
}

TEST(CeilPow2ScaleBits, SpecAmaxFloors) {
  // §2.3: amax floor 1e-4, r = amax * f32(1/448).
  const float r8 = 1e-4f * (1.0f / 448.0f);
  EXPECT_EQ(int(CeilPow2ScaleBits(r8)), RefCeilLog2(r8) + 127);
  EXPECT_EQ(int(CeilPow2ScaleBits(r8)), 127 - 22);  // 2.23e-7 -> 2^-22
  // §2.5: amax floor 6 * 2^-126, r = amax * f32(1/6); f32(1/6) is just above 1/6.
  const float r4 = (6.0f * 0x1p-126f) * (1.0f / 6.0f);
  EXPECT_EQ(int(CeilPow2ScaleBits(r4)), RefCeilLog2(r4) + 127);
  EXPECT_GE(int(CeilPow2ScaleBits(r4)), 1);
  // An FP8 group whose amax is exactly 448 needs scale 1; 448.0001 needs 2.
  EXPECT_EQ(CeilPow2ScaleBits(448.0f * (1.0f / 448.0f)), 127);
}

TEST(CeilPow2ScaleBits, MatchesFrexpReferenceIncludingSubnormals) {
  for (float x : InterestingFloats()) {
    const float r = std::fabs(x);
    if (!(r > 0) || std::isinf(r)) continue;
    const int e = RefCeilLog2(r);
    const int want = e < -127 ? 0 : (e > 127 ? 255 : e + 127);
    ASSERT_EQ(int(CeilPow2ScaleBits(r)), want)
        << "r = " << r << " bits " << std::hex << F32ToBits(r);
  }
  EXPECT_EQ(CeilPow2ScaleBits(0x1p-127f), 0);
  EXPECT_EQ(CeilPow2ScaleBits(0x1p-128f), 0);  // below the range: smallest scale
  EXPECT_EQ(CeilPow2ScaleBits(std::numeric_limits<float>::denorm_min()), 0);
  EXPECT_EQ(CeilPow2ScaleBits(0.0f), 0);  // out of contract, but must not hang
  EXPECT_EQ(CeilPow2ScaleBits(std::numeric_limits<float>::infinity()), 0xFF);
  EXPECT_EQ(CeilPow2ScaleBits(std::numeric_limits<float>::quiet_NaN()), 0xFF);
}

}  // namespace
}  // namespace flotilla
