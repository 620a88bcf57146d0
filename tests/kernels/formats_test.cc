// The scalar codecs of common/dtype.h, which every kernel builds on, against the independent
// format definitions (exhaustive where the domain is small).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "common/dtype.h"
#include "tests/kernels/reference.h"
#include "tests/kernels/test_util.h"

namespace flotilla::kernels {
namespace {

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(Formats, E4m3DecodeAllCodes) {
  for (int c = 0; c < 256; ++c) {
    const double want = ref::E4m3(static_cast<uint8_t>(c));
    const float got = Fp8ToF32(static_cast<fp8>(c));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << c;
    } else {
      EXPECT_EQ(static_cast<double>(got), want) << c;
      EXPECT_EQ(std::signbit(got), std::signbit(want)) << c;
    }
  }
  EXPECT_EQ(Fp8ToF32(0x38), 1.0f);
  EXPECT_EQ(Fp8ToF32(0x7e), 448.0f);
  EXPECT_EQ(Fp8ToF32(0x01), 0x1p-9f);
}

TEST(Formats, E4m3EncodeEveryBf16AndTies) {
  for (uint32_t b = 0; b < 65536; ++b) {  // every bf16 value as an f32 input
    const float x = FromBits(b << 16);
    if (std::isnan(x)) continue;
    ASSERT_EQ(F32ToFp8(x), ref::ToE4m3(x)) << "x=" << x;
  }
  for (int c = 0; c < 0x7e; ++c) {  // exact midpoints between neighbours: ties to even
    const double mid =
        0.5 * (ref::E4m3(static_cast<uint8_t>(c)) + ref::E4m3(static_cast<uint8_t>(c + 1)));
    ASSERT_EQ(F32ToFp8(static_cast<float>(mid)), ref::ToE4m3(mid)) << "mid=" << mid;
    ASSERT_EQ(F32ToFp8(static_cast<float>(-mid)), ref::ToE4m3(-mid)) << "mid=" << -mid;
  }
  test::Rng rng(1);
  for (int i = 0; i < 200000; ++i) {
    const float x =
        static_cast<float>(rng.Normal(100.0) * std::ldexp(1.0, static_cast<int>(rng.Int(-14, 2))));
    ASSERT_EQ(F32ToFp8(x), ref::ToE4m3(x)) << "x=" << x;
  }
  EXPECT_EQ(F32ToFp8(1e9f), 0x7e);  // saturating
  EXPECT_EQ(F32ToFp8(-1e9f), 0xfe);
}

TEST(Formats, E2m1EncodeDecode) {
  for (int c = 0; c < 16; ++c)
    EXPECT_EQ(static_cast<double>(Fp4ToF32(static_cast<uint8_t>(c))),
              ref::E2m1(static_cast<uint8_t>(c)));
  for (int c = 0; c < 7; ++c) {
    const double mid =
        0.5 * (ref::E2m1(static_cast<uint8_t>(c)) + ref::E2m1(static_cast<uint8_t>(c + 1)));
    EXPECT_EQ(F32ToFp4(static_cast<float>(mid)), ref::ToE2m1(mid)) << mid;
    EXPECT_EQ(F32ToFp4(static_cast<float>(-mid)), ref::ToE2m1(-mid)) << -mid;
  }
  test::Rng rng(2);
  for (int i = 0; i < 100000; ++i) {
    const float x = static_cast<float>(rng.Uniform(-8, 8));
    ASSERT_EQ(F32ToFp4(x), ref::ToE2m1(x)) << x;
  }
}

TEST(Formats, Bf16RoundTrip) {
  test::Rng rng(3);
  for (int i = 0; i < 1000000; ++i) {
    const float x = FromBits(rng.Bits());
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(x))));
      continue;
    }
    ASSERT_EQ(F32ToBf16(x), ref::ToBf16(x)) << x;
  }
  for (uint32_t b = 0; b < 65536; ++b) {
    const double want = ref::Bf16(static_cast<uint16_t>(b));
    if (std::isnan(want)) continue;
    ASSERT_EQ(static_cast<double>(Bf16ToF32(static_cast<bf16>(b))), want);
  }
  EXPECT_EQ(F32ToBf16(FromBits(0x3f808000u)), 0x3f80);  // tie to even
  EXPECT_EQ(F32ToBf16(FromBits(0x3f818000u)), 0x3f82);
}

TEST(Formats, CeilPow2ScaleBitsAndE8m0) {
  for (int e = -127; e <= 127; ++e) {  // the UE8M0 range
    const float p = std::ldexp(1.0f, e);
    EXPECT_EQ(CeilPow2ScaleBits(p), ref::CeilLog2(p) + 127) << e;
    const float up = std::nextafter(p, 1e30f);
    if (e < 127) {
      EXPECT_EQ(CeilPow2ScaleBits(up), ref::CeilLog2(up) + 127) << e;
    }
    const float down = std::nextafter(p, 0.0f);
    if (down > 0) {
      EXPECT_EQ(CeilPow2ScaleBits(down), ref::CeilLog2(down) + 127) << e;
    }
  }
  test::Rng rng(4);
  for (int i = 0; i < 100000; ++i) {
    const float r = FromBits(rng.Bits() & 0x7effffffu);
    if (r < 0x1p-127f || r > 1e38f) continue;
    ASSERT_EQ(CeilPow2ScaleBits(r), ref::CeilLog2(r) + 127) << r;
  }
  for (int s = 0; s < 255; ++s)
    EXPECT_EQ(static_cast<double>(E8m0ToF32(static_cast<e8m0>(s))),
              ref::E8m0(static_cast<uint8_t>(s)));
  EXPECT_TRUE(std::isnan(E8m0ToF32(0xff)));
}

}  // namespace
}  // namespace flotilla::kernels
