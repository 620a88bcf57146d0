// Shared helpers of the kernel tests: seeded random inputs, SIMD-path scoping, bit comparison.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/device_memory.h"

namespace flotilla::kernels::test {

class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  double Normal(double stddev = 1.0) { return std::normal_distribution<double>(0.0, stddev)(gen_); }
  double Uniform(double lo, double hi) {
    return std::uniform_real_distribution<double>(lo, hi)(gen_);
  }
  int64_t Int(int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(gen_);
  }
  uint32_t Bits() { return static_cast<uint32_t>(gen_()); }

  // bf16 values ~ N(0, stddev^2), rounded to nearest (inputs only; not a reference).
  std::vector<bf16> Bf16(int64_t n, double stddev = 1.0) {
    std::vector<bf16> v(n);
    for (auto& x : v) x = F32ToBf16(static_cast<float>(Normal(stddev)));
    return v;
  }
  // Cheap bf16 values for large operands: random sign and mantissa, magnitude in
  // [2^(top - 7), 2^(top + 1)).
  std::vector<bf16> Bf16Fast(int64_t n, int top = 0) {
    std::vector<bf16> v(n);
    for (int64_t i = 0; i < n; i += 2) {
      const uint64_t r = gen_();
      for (int h = 0; h < 2 && i + h < n; ++h) {
        const uint32_t b = static_cast<uint32_t>(r >> (32 * h));
        const uint32_t e = static_cast<uint32_t>(127 + top) - ((b >> 16) & 7);
        v[i + h] = static_cast<bf16>((b & 0x8000) | (e << 7) | ((b >> 8) & 0x7f));
      }
    }
    return v;
  }
  std::vector<float> F32(int64_t n, double stddev = 1.0) {
    std::vector<float> v(n);
    for (auto& x : v) x = static_cast<float>(Normal(stddev));
    return v;
  }
  // Random finite E4M3 codes (no NaN), all exponents including subnormals.
  std::vector<fp8> Fp8Codes(int64_t n) {
    std::vector<fp8> v(n);
    for (int64_t i = 0; i < n; i += 8) {
      uint64_t r = gen_();
      for (int j = 0; j < 8 && i + j < n; ++j, r >>= 8) {
        fp8 c = static_cast<fp8>(r);
        if ((c & 0x7f) == 0x7f) c ^= 0x01;  // 0x7e / 0xfe instead of NaN
        v[i + j] = c;
      }
    }
    return v;
  }
  // UE8M0 scales 2^(e - 127) with e in [127 - spread, 127 + spread].
  std::vector<e8m0> Scales(int64_t n, int spread = 6) {
    std::vector<e8m0> v(n);
    for (auto& s : v) s = static_cast<e8m0>(127 + Int(-spread, spread));
    return v;
  }
  std::vector<uint8_t> Bytes(int64_t n) {
    std::vector<uint8_t> v(n);
    for (int64_t i = 0; i < n; i += 8) {
      uint64_t r = gen_();
      for (int j = 0; j < 8 && i + j < n; ++j, r >>= 8) v[i + j] = static_cast<uint8_t>(r);
    }
    return v;
  }

 private:
  std::mt19937_64 gen_;
};

// Forces a SIMD path for the scope.
class ScopedSimd {
 public:
  explicit ScopedSimd(cpu::Simd simd) : saved_(cpu::ActiveSimd()) { cpu::SetSimdForTesting(simd); }
  ~ScopedSimd() { cpu::SetSimdForTesting(saved_); }

 private:
  cpu::Simd saved_;
};

inline bool SameBits(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  uint32_t x, y;
  std::memcpy(&x, &a, 4);
  std::memcpy(&y, &b, 4);
  return x == y;
}
inline bool SameBits(bf16 a, bf16 b) { return SameBits(Bf16ToF32(a), Bf16ToF32(b)); }
inline bool SameBits(uint8_t a, uint8_t b) { return a == b; }
inline bool SameBits(int32_t a, int32_t b) { return a == b; }

// Index of the first element that differs bitwise (NaN equals NaN), or -1.
template <class T>
int64_t FirstDifference(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (!SameBits(a[i], b[i])) return static_cast<int64_t>(i);
  return -1;
}

// Streams like EXPECT_EQ; the value shown is the index of the first differing element.
#define EXPECT_BITWISE_EQ(a, b) \
  EXPECT_EQ(::flotilla::kernels::test::FirstDifference((a), (b)), -1) << "bitwise mismatch; "

template <class T>
int64_t CountNan(const std::vector<T>& v) {
  int64_t n = 0;
  for (const T& x : v) {
    if constexpr (std::is_same_v<T, bf16>) {
      n += std::isnan(Bf16ToF32(x));
    } else {
      n += std::isnan(static_cast<double>(x));
    }
  }
  return n;
}

}  // namespace flotilla::kernels::test

// A backend call (kernels::BackendStatus) succeeds, or fails with a message containing `needle`.
#define EXPECT_OK(expr)                                   \
  do {                                                    \
    const ::flotilla::kernels::BackendStatus s_ = (expr); \
    EXPECT_TRUE(s_.ok()) << s_.message();                 \
  } while (0)
#define EXPECT_ERROR(expr, needle)                                           \
  do {                                                                       \
    const ::flotilla::kernels::BackendStatus s_ = (expr);                    \
    EXPECT_FALSE(s_.ok());                                                   \
    EXPECT_NE(s_.message().find(needle), std::string::npos) << s_.message(); \
  } while (0)
