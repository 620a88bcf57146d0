// GEMMs against double-precision references (stated error bound), against an independent
// emulation of the contract's evaluation order (bitwise), M-invariance and NaN behaviour.
#include <gtest/gtest.h>
#include <xmmintrin.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/dispatch.h"
#include "kernels/ops.h"
#include "tests/kernels/reference.h"
#include "tests/kernels/test_util.h"

namespace flotilla::kernels {
namespace {

using test::Rng;

// Error bound for a bf16 (or f32) result of an f32-accumulated sum: half a bf16 ulp of the
// exact value (<= 2^-8 relative) plus f32 accumulation error, bounded by 2^-14 of sum |terms|.
void ExpectCloseBf16(const std::vector<bf16>& got, int64_t ldc, const std::vector<double>& want,
                     const std::vector<double>& abs_sum, int64_t m, int64_t n) {
  int64_t bad = 0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      const double g = Bf16ToF32(got[i * ldc + j]), w = want[i * n + j];
      const double tol = std::ldexp(std::fabs(w), -8) + std::ldexp(abs_sum[i * n + j], -14) + 1e-37;
      if (!(std::fabs(g - w) <= tol) && bad++ < 5) {
        ADD_FAILURE() << "(" << i << "," << j << ") got " << g << " want " << w << " tol " << tol;
      }
    }
  }
  EXPECT_EQ(bad, 0);
}

float Combine(const float* s) {
  return ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
}

// ------------------------------------------------------------------ FP8

struct Fp8Case {
  int64_t m, n, k;
  bool f32_scales;
};

struct Fp8Data {
  int64_t m, n, k;
  std::vector<fp8> a, w;
  std::vector<e8m0> sa, sw;
  std::vector<float> sw_f32;
};

Fp8Data MakeFp8(const Fp8Case& c, uint64_t seed, bool realistic_a) {
  Rng rng(seed);
  Fp8Data d{c.m, c.n, c.k, {}, rng.Fp8Codes(c.n * c.k), {}, {}, {}};
  if (realistic_a) {  // activations as act_quant produces them
    const std::vector<bf16> x = rng.Bf16(c.m * c.k, 1.0);
    d.a.resize(c.m * c.k);
    d.sa.resize(c.m * c.k / 128);
    ref::ActQuant(x.data(), c.k, c.m, c.k, 128, d.a.data(), d.sa.data());
  } else {
    d.a = rng.Fp8Codes(c.m * c.k);
    d.sa = rng.Scales(c.m * c.k / 128);
  }
  const int64_t sw_count = (c.n + 127) / 128 * (c.k / 128);
  if (c.f32_scales) {
    for (int64_t i = 0; i < sw_count; ++i)
      d.sw_f32.push_back(static_cast<float>(rng.Uniform(1e-4, 3e-3)));
  } else {
    d.sw = rng.Scales(sw_count, 8);
  }
  return d;
}

std::vector<bf16> RunFp8(const Fp8Data& d, int64_t ldc, int64_t row0 = 0, int64_t rows = -1) {
  if (rows < 0) rows = d.m;
  std::vector<bf16> c(rows * ldc, 0xdead);
  GemmFp8({.a = d.a.data() + row0 * d.k,
           .a_scale = d.sa.data() + row0 * (d.k / 128),
           .w = d.w.data(),
           .w_scale = d.sw.empty() ? nullptr : d.sw.data(),
           .w_scale_f32 = d.sw_f32.empty() ? nullptr : d.sw_f32.data(),
           .c = c.data(),
           .ldc = ldc,
           .m = rows,
           .n = d.n,
           .k = d.k});
  return c;
}

// The contract's order, written independently of the kernels.
std::vector<bf16> EmulateFp8(const Fp8Data& d) {
  std::vector<bf16> c(d.m * d.n);
  const int64_t kbs = d.k / 128;
  for (int64_t i = 0; i < d.m; ++i) {
    for (int64_t j = 0; j < d.n; ++j) {
      float acc = 0.0f;
      for (int64_t kb = 0; kb < kbs; ++kb) {
        float s[8] = {};
        for (int64_t t = 0; t < 128; ++t) {
          const int64_t k = kb * 128 + t;
          s[t % 8] = std::fmaf(static_cast<float>(ref::E4m3(d.a[i * d.k + k])),
                               static_cast<float>(ref::E4m3(d.w[j * d.k + k])), s[t % 8]);
        }
        const int64_t si = (j / 128) * kbs + kb;
        const float sw = d.sw.empty() ? d.sw_f32[si] : static_cast<float>(ref::E8m0(d.sw[si]));
        acc = acc + (Combine(s) * static_cast<float>(ref::E8m0(d.sa[i * kbs + kb]))) * sw;
      }
      c[i * d.n + j] = ref::ToBf16(acc);
    }
  }
  return c;
}

class GemmFp8Test : public ::testing::TestWithParam<Fp8Case> {};

TEST_P(GemmFp8Test, MatchesDoubleReference) {
  const Fp8Case c = GetParam();
  const Fp8Data d = MakeFp8(c, 100 + c.n, /*realistic_a=*/true);
  const int64_t ldc = c.n + 3;
  const std::vector<bf16> got = RunFp8(d, ldc);
  std::vector<double> want, abs_sum;
  ref::GemmFp8(d.a.data(), d.sa.data(), d.w.data(), d.sw.empty() ? nullptr : d.sw.data(),
               d.sw_f32.empty() ? nullptr : d.sw_f32.data(), c.m, c.n, c.k, &want, &abs_sum);
  ExpectCloseBf16(got, ldc, want, abs_sum, c.m, c.n);
  for (int64_t i = 0; i < c.m; ++i)  // padding columns untouched
    for (int64_t j = c.n; j < ldc; ++j) EXPECT_EQ(got[i * ldc + j], 0xdead);
  EXPECT_EQ(test::CountNan(got), 0);
}

INSTANTIATE_TEST_SUITE_P(Shapes, GemmFp8Test,
                         ::testing::Values(
                             // V4-Flash: wq_b, wo_b, wq_a, wkv, shared w1, indexer wq_b
                             Fp8Case{1, 32768, 1024, false}, Fp8Case{1, 4096, 8192, false},
                             Fp8Case{2, 1024, 4096, false}, Fp8Case{3, 512, 4096, false},
                             Fp8Case{1, 2048, 4096, true}, Fp8Case{2, 8192, 1024, false},
                             // test model: wq_a, wq_b, wkv, wo_b, indexer wq_b, shared w1/w3, w2
                             Fp8Case{4, 128, 256, false}, Fp8Case{5, 512, 128, false},
                             Fp8Case{1, 128, 256, false}, Fp8Case{3, 256, 256, false},
                             Fp8Case{2, 512, 128, false}, Fp8Case{7, 128, 256, true},
                             Fp8Case{6, 256, 128, false},
                             // n not a multiple of 128 / 8
                             Fp8Case{3, 200, 384, false}, Fp8Case{1, 9, 128, false},
                             Fp8Case{9, 130, 256, true}, Fp8Case{1, 1, 256, false}));

TEST(GemmFp8, ContractOrderBitwise) {
  for (const Fp8Case c :
       {Fp8Case{3, 40, 256, false}, Fp8Case{1, 37, 384, true}, Fp8Case{4, 130, 128, false}}) {
    const Fp8Data d = MakeFp8(c, 7 + c.n, /*realistic_a=*/false);  // full exponent range
    EXPECT_BITWISE_EQ(RunFp8(d, c.n), EmulateFp8(d)) << c.m << "x" << c.n << "x" << c.k;
  }
}

TEST(GemmFp8, RowsIndependentOfM) {
  const Fp8Data d = MakeFp8({7, 300, 512, false}, 42, false);
  const std::vector<bf16> all = RunFp8(d, 300);
  for (int64_t r = 0; r < 7; ++r) {
    const std::vector<bf16> one = RunFp8(d, 300, r, 1);
    EXPECT_BITWISE_EQ(one, std::vector<bf16>(all.begin() + r * 300, all.begin() + (r + 1) * 300))
        << r;
  }
}

TEST(GemmFp8, NanCodesPoisonTheirRowAndColumn) {
  Fp8Data d = MakeFp8({3, 256, 256, false}, 43, true);
  d.a[1 * 256 + 130] = 0xff;  // activation row 1, block 1
  d.w[17 * 256 + 5] = 0x7f;   // weight row 17, block 0
  const std::vector<bf16> c = RunFp8(d, 256);
  for (int64_t i = 0; i < 3; ++i) {
    for (int64_t j = 0; j < 256; ++j) {
      const bool want_nan = i == 1 || j == 17;
      EXPECT_EQ(std::isnan(Bf16ToF32(c[i * 256 + j])), want_nan) << i << "," << j;
    }
  }
  Fp8Data one = d;  // the M = 1 kernel too
  const std::vector<bf16> row0 = RunFp8(one, 256, 0, 1);
  for (int64_t j = 0; j < 256; ++j) EXPECT_EQ(std::isnan(Bf16ToF32(row0[j])), j == 17);
}

// The FP8 decode feeds subnormal f32 operands to the FPU: results must not depend on FTZ / DAZ
// set by the caller.
TEST(GemmFp8, IndependentOfCallerFlushToZero) {
  const Fp8Data d = MakeFp8({1, 64, 256, false}, 46, false);  // codes include E4M3 subnormals
  const std::vector<bf16> want = RunFp8(d, 64);
  const unsigned saved = _mm_getcsr();
  _mm_setcsr(saved | 0x8040);  // FTZ | DAZ
  const std::vector<bf16> got = RunFp8(d, 64);
  _mm_setcsr(saved);
  EXPECT_BITWISE_EQ(got, want);
}

// ------------------------------------------------------------------ FP8 x FP4

struct Fp4Case {
  int64_t m, n, k;
};

struct Fp4Data {
  int64_t m, n, k;
  std::vector<fp8> a;
  std::vector<e8m0> sa;
  std::vector<uint8_t> w;
  std::vector<e8m0> sw;
};

Fp4Data MakeFp4(const Fp4Case& c, uint64_t seed, bool realistic_a) {
  Rng rng(seed);
  Fp4Data d{c.m, c.n, c.k, {}, {}, rng.Bytes(c.n * c.k / 2), rng.Scales(c.n * c.k / 32, 8)};
  if (realistic_a) {
    const std::vector<bf16> x = rng.Bf16(c.m * c.k, 1.0);
    d.a.resize(c.m * c.k);
    d.sa.resize(c.m * c.k / 128);
    ref::ActQuant(x.data(), c.k, c.m, c.k, 128, d.a.data(), d.sa.data());
  } else {
    d.a = rng.Fp8Codes(c.m * c.k);
    d.sa = rng.Scales(c.m * c.k / 128);
  }
  return d;
}

std::vector<bf16> RunFp4(const Fp4Data& d, int64_t ldc, int64_t row0 = 0, int64_t rows = -1) {
  if (rows < 0) rows = d.m;
  std::vector<bf16> c(rows * ldc, 0xdead);
  GemmFp8Fp4({.a = d.a.data() + row0 * d.k,
              .a_scale = d.sa.data() + row0 * (d.k / 128),
              .w = d.w.data(),
              .w_scale = d.sw.data(),
              .c = c.data(),
              .ldc = ldc,
              .m = rows,
              .n = d.n,
              .k = d.k});
  return c;
}

// The contract of kernels/ops.h: per 32-wide slice the exact dot (in double: every product is
// a multiple of 2^-10 below 2^12, so the sum is exact) rounded once to f32, then
// acc = acc + (P * sa) * sw in f32, one rounding to bf16.
std::vector<bf16> EmulateFp4(const Fp4Data& d) {
  std::vector<bf16> c(d.m * d.n);
  for (int64_t i = 0; i < d.m; ++i) {
    for (int64_t j = 0; j < d.n; ++j) {
      float acc = 0.0f;
      for (int64_t q = 0; q < d.k / 32; ++q) {
        double dot = 0;
        for (int64_t t = 0; t < 32; ++t) {
          const int64_t k = q * 32 + t;
          const uint8_t byte = d.w[j * (d.k / 2) + k / 2];
          dot += ref::E4m3(d.a[i * d.k + k]) * ref::E2m1((k & 1) ? byte >> 4 : byte & 0xf);
        }
        const float sa = static_cast<float>(ref::E8m0(d.sa[i * (d.k / 128) + q / 4]));
        const float sw = static_cast<float>(ref::E8m0(d.sw[j * (d.k / 32) + q]));
        acc = acc + (static_cast<float>(dot) * sa) * sw;
      }
      c[i * d.n + j] = ref::ToBf16(acc);
    }
  }
  return c;
}

class GemmFp4Test : public ::testing::TestWithParam<Fp4Case> {};

TEST_P(GemmFp4Test, MatchesDoubleReference) {
  const Fp4Case c = GetParam();
  const Fp4Data d = MakeFp4(c, 200 + c.n, true);
  const int64_t ldc = c.n + 5;
  const std::vector<bf16> got = RunFp4(d, ldc);
  std::vector<double> want, abs_sum;
  ref::GemmFp8Fp4(d.a.data(), d.sa.data(), d.w.data(), d.sw.data(), c.m, c.n, c.k, &want, &abs_sum);
  ExpectCloseBf16(got, ldc, want, abs_sum, c.m, c.n);
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t j = c.n; j < ldc; ++j) EXPECT_EQ(got[i * ldc + j], 0xdead);
  EXPECT_EQ(test::CountNan(got), 0);
}

INSTANTIATE_TEST_SUITE_P(Shapes, GemmFp4Test,
                         ::testing::Values(
                             // V4-Flash routed expert w1/w3 and w2
                             Fp4Case{1, 2048, 4096}, Fp4Case{3, 2048, 4096}, Fp4Case{1, 4096, 2048},
                             // test model: w1/w3, w2
                             Fp4Case{1, 128, 256}, Fp4Case{6, 128, 256}, Fp4Case{4, 256, 128},
                             // n not a multiple of 8 / 32
                             Fp4Case{1, 33, 128}, Fp4Case{5, 100, 384}, Fp4Case{2, 7, 256}));

TEST(GemmFp8Fp4, ContractOrderBitwise) {
  for (const Fp4Case c : {Fp4Case{1, 40, 256}, Fp4Case{3, 37, 384}, Fp4Case{2, 64, 128}}) {
    const Fp4Data d = MakeFp4(c, 9 + c.n, false);
    EXPECT_BITWISE_EQ(RunFp4(d, c.n), EmulateFp4(d)) << c.m << "x" << c.n << "x" << c.k;
  }
}

// Hand-worked: the slice dot is rounded once, not per partial sum. Slice 0 holds 448 * 6 = 2688
// at elements 0, 8, 16, 24, 4, 12, 20 and 2^-9 * 0.5 = 2^-10 at elements 28 and 1: exactly
// 7 * 2688 + 2^-9 = 18816 + 2^-9, an f32 value (its ulp is 2^-9). Slice 1 holds -2688 seven
// times: -18816. C = 2^-9 exactly. (An f32 lane-order dot would round (s0 + s4) =
// 18816 + 2^-10 to the even 18816 and give 0.)
TEST(GemmFp8Fp4, SliceDotRoundedOnce) {
  const int64_t k = 128;
  std::vector<fp8> a(k, 0x00);
  std::vector<uint8_t> w(k / 2, 0x00);
  const auto set_w = [&](int64_t e, uint8_t code) {
    w[e / 2] = static_cast<uint8_t>((e & 1) ? (w[e / 2] & 0x0f) | (code << 4)
                                            : (w[e / 2] & 0xf0) | code);
  };
  for (const int64_t e : {0, 8, 16, 24, 4, 12, 20}) {
    a[e] = 0x7e;  // 448
    set_w(e, 0x7);  // 6
  }
  for (const int64_t e : {28, 1}) {
    a[e] = 0x01;  // 2^-9
    set_w(e, 0x1);  // 0.5
  }
  for (int64_t e = 32; e < 39; ++e) {
    a[e] = 0xfe;  // -448
    set_w(e, 0x7);
  }
  const std::vector<e8m0> sa(1, 127), sw(4, 127);
  for (const bool avx2 : {false, true}) {
    test::ScopedSimd simd(avx2 ? cpu::Simd::kAvx2 : cpu::Simd::kScalar);
    bf16 c = 0;
    GemmFp8Fp4({.a = a.data(), .a_scale = sa.data(), .w = w.data(), .w_scale = sw.data(),
                .c = &c, .ldc = 1, .m = 1, .n = 1, .k = k});
    EXPECT_EQ(Bf16ToF32(c), 0x1p-9f) << (avx2 ? "avx2" : "scalar");
  }
}

// Largest magnitudes (|a| = 448, |w| = 6, every sign mix) and the smallest (2^-9, 0.5) side by
// side: the integer path's 16-bit words and 32-bit sums hold them exactly.
TEST(GemmFp8Fp4, ExtremeMagnitudesBitwise) {
  Fp4Data d = MakeFp4({3, 24, 256}, 46, false);
  test::Rng rng(47);
  for (size_t e = 0; e < d.a.size(); ++e) {
    const uint32_t r = rng.Bits();
    d.a[e] = (r & 3) == 0 ? fp8(0x01 | (r & 0x80)) : fp8(0x7e | (r & 0x80));
  }
  for (size_t b = 0; b < d.w.size(); ++b) {
    const uint32_t r = rng.Bits();
    d.w[b] = static_cast<uint8_t>(((r & 1) ? 0x7 : 0xf) | (((r & 2) ? 0x7 : 0xf) << 4));
  }
  EXPECT_BITWISE_EQ(RunFp4(d, 24), EmulateFp4(d));
}

TEST(GemmFp8Fp4, RowsIndependentOfM) {
  const Fp4Data d = MakeFp4({7, 72, 512}, 44, false);
  const std::vector<bf16> all = RunFp4(d, 72);
  for (int64_t r = 0; r < 7; ++r) {
    EXPECT_BITWISE_EQ(RunFp4(d, 72, r, 1),
                      std::vector<bf16>(all.begin() + r * 72, all.begin() + (r + 1) * 72))
        << r;
  }
}

TEST(GemmFp8Fp4, NanActivationPoisonsItsRow) {
  Fp4Data d = MakeFp4({3, 64, 256}, 45, true);
  d.a[2 * 256 + 200] = 0x7f;
  const std::vector<bf16> c = RunFp4(d, 64);
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 64; ++j) EXPECT_EQ(std::isnan(Bf16ToF32(c[i * 64 + j])), i == 2);
  const std::vector<bf16> row2 = RunFp4(d, 64, 2, 1);
  for (int64_t j = 0; j < 64; ++j) EXPECT_TRUE(std::isnan(Bf16ToF32(row2[j])));
}

// ------------------------------------------------------------------ bf16 / f32

struct DenseCase {
  int64_t m, n, k, lda, ldw, ldc;
};

struct DenseData {
  std::vector<bf16> a16, w16;
  std::vector<float> a32, w32;
  std::vector<double> ad, wd;  // dense [m][k], [n][k] doubles for the reference
};

DenseData MakeDense(const DenseCase& c, uint64_t seed, bool with_f32 = true) {
  Rng rng(seed);
  DenseData d;
  d.a16 = rng.Bf16(c.m * c.lda);
  d.w16 = rng.Bf16Fast(c.n * c.ldw, -4);
  if (with_f32) {
    d.a32 = rng.F32(c.m * c.lda);
    d.w32 = rng.F32(c.n * c.ldw, 0.05);
  }
  return d;
}

std::vector<double> Unpack(const bf16* x, int64_t rows, int64_t k, int64_t ld) {
  static const std::vector<double> table = [] {
    std::vector<double> t(65536);
    for (int b = 0; b < 65536; ++b) t[b] = ref::Bf16(static_cast<uint16_t>(b));
    return t;
  }();
  std::vector<double> out(rows * k);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < k; ++j) out[i * k + j] = table[x[i * ld + j]];
  return out;
}
std::vector<double> Unpack(const float* x, int64_t rows, int64_t k, int64_t ld) {
  std::vector<double> out(rows * k);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < k; ++j) out[i * k + j] = x[i * ld + j];
  return out;
}

template <class A, class W>
std::vector<float> EmulateDense(const A* a, const W* w, const DenseCase& c) {
  const auto value = [](auto x) {
    if constexpr (std::is_same_v<decltype(x), bf16>)
      return static_cast<float>(ref::Bf16(x));
    else
      return x;
  };
  std::vector<float> out(c.m * c.n);
  for (int64_t i = 0; i < c.m; ++i) {
    for (int64_t j = 0; j < c.n; ++j) {
      float s[8] = {};
      for (int64_t t = 0; t < c.k; ++t)
        s[t % 8] = std::fmaf(value(a[i * c.lda + t]), value(w[j * c.ldw + t]), s[t % 8]);
      out[i * c.n + j] = Combine(s);
    }
  }
  return out;
}

class DenseGemmTest : public ::testing::TestWithParam<DenseCase> {};

TEST_P(DenseGemmTest, Bf16MatchesReference) {
  const DenseCase c = GetParam();
  const DenseData d = MakeDense(c, 300 + c.n + c.k, /*with_f32=*/false);
  std::vector<double> want, abs_sum;
  ref::Dense(Unpack(d.a16.data(), c.m, c.k, c.lda), Unpack(d.w16.data(), c.n, c.k, c.ldw), c.m, c.n,
             c.k, &want, &abs_sum);
  std::vector<bf16> out(c.m * c.ldc, 0xdead);
  GemmBf16({.a = d.a16.data(),
            .lda = c.lda,
            .w = d.w16.data(),
            .ldw = c.ldw,
            .c = out.data(),
            .ldc = c.ldc,
            .m = c.m,
            .n = c.n,
            .k = c.k});
  ExpectCloseBf16(out, c.ldc, want, abs_sum, c.m, c.n);
  EXPECT_EQ(test::CountNan(out), 0);
  // f32 output: one rounding fewer; the bf16 output is exactly its rounding.
  std::vector<float> out32(c.m * c.ldc);
  GemmBf16({.a = d.a16.data(),
            .lda = c.lda,
            .w = d.w16.data(),
            .ldw = c.ldw,
            .c_f32 = out32.data(),
            .ldc = c.ldc,
            .m = c.m,
            .n = c.n,
            .k = c.k});
  for (int64_t i = 0; i < c.m; ++i) {
    for (int64_t j = 0; j < c.n; ++j) {
      const double g = out32[i * c.ldc + j], w = want[i * c.n + j];
      ASSERT_LE(std::fabs(g - w), std::ldexp(abs_sum[i * c.n + j], -18) + 1e-37) << i << "," << j;
      ASSERT_EQ(out[i * c.ldc + j], F32ToBf16(out32[i * c.ldc + j]));
    }
  }
}

TEST_P(DenseGemmTest, F32MatchesReferenceForEveryStorage) {
  const DenseCase c = GetParam();
  const DenseData d = MakeDense(c, 400 + c.n + c.k);
  for (int variant = 0; variant < 4; ++variant) {
    const bool a_bf16 = variant & 1, w_bf16 = variant & 2;
    const std::vector<double> ad =
        a_bf16 ? Unpack(d.a16.data(), c.m, c.k, c.lda) : Unpack(d.a32.data(), c.m, c.k, c.lda);
    const std::vector<double> wd =
        w_bf16 ? Unpack(d.w16.data(), c.n, c.k, c.ldw) : Unpack(d.w32.data(), c.n, c.k, c.ldw);
    std::vector<double> want, abs_sum;
    ref::Dense(ad, wd, c.m, c.n, c.k, &want, &abs_sum);
    std::vector<float> out(c.m * c.ldc, 12345.0f);
    GemmF32({.a = a_bf16 ? nullptr : d.a32.data(),
             .a_bf16 = a_bf16 ? d.a16.data() : nullptr,
             .lda = c.lda,
             .w = w_bf16 ? nullptr : d.w32.data(),
             .w_bf16 = w_bf16 ? d.w16.data() : nullptr,
             .ldw = c.ldw,
             .c = out.data(),
             .ldc = c.ldc,
             .m = c.m,
             .n = c.n,
             .k = c.k});
    for (int64_t i = 0; i < c.m; ++i) {
      for (int64_t j = 0; j < c.n; ++j) {
        const double g = out[i * c.ldc + j], w = want[i * c.n + j];
        ASSERT_LE(std::fabs(g - w), std::ldexp(abs_sum[i * c.n + j], -18) + 1e-37)
            << variant << " " << i << "," << j;
      }
      for (int64_t j = c.n; j < c.ldc; ++j) ASSERT_EQ(out[i * c.ldc + j], 12345.0f);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, DenseGemmTest,
    ::testing::Values(DenseCase{64, 1000, 256, 256, 256, 1000},  // LM head rows at m = 64
                      DenseCase{3, 24, 4096, 4096, 4096, 24},    // HC mixes (hc 4 x d 1024)
                      DenseCase{4, 128, 256, 300, 256,
                                130},  // wo_a group of the test model, strided
                      DenseCase{5, 33, 13, 13, 20, 40}, DenseCase{1, 7, 1, 1, 1, 7},
                      DenseCase{3, 17, 100, 111, 100, 17}, DenseCase{9, 9, 1031, 1031, 1031, 9}));

// The LM head of the test model (vocab 129280, hidden 256), f32 logits from bf16 operands.
TEST(DenseGemm, LmHeadOfTestModel) {
  const int64_t m = 2, n = 129280, k = 256;
  Rng rng(5);
  const std::vector<bf16> a = rng.Bf16(m * k), w = rng.Bf16Fast(n * k, -4);
  std::vector<float> logits(m * n);
  GemmF32({.a_bf16 = a.data(),
           .lda = k,
           .w_bf16 = w.data(),
           .ldw = k,
           .c = logits.data(),
           .ldc = n,
           .m = m,
           .n = n,
           .k = k});
  const std::vector<double> ad = Unpack(a.data(), m, k, k);
  int64_t bad = 0;
  for (int64_t j = 0; j < n; ++j) {
    const std::vector<double> wd = Unpack(w.data() + j * k, 1, k, k);
    for (int64_t i = 0; i < m; ++i) {
      double s = 0, sa = 0;
      for (int64_t t = 0; t < k; ++t) {
        s += ad[i * k + t] * wd[t];
        sa += std::fabs(ad[i * k + t] * wd[t]);
      }
      bad += !(std::fabs(logits[i * n + j] - s) <= std::ldexp(sa, -18));
    }
  }
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(test::CountNan(logits), 0);
}

TEST(DenseGemm, ContractOrderBitwise) {
  for (const DenseCase c :
       {DenseCase{3, 21, 77, 80, 77, 21}, DenseCase{1, 40, 600, 600, 600, 40}}) {
    const DenseData d = MakeDense(c, 17 + c.k);
    std::vector<float> out(c.m * c.n);
    GemmF32({.a_bf16 = d.a16.data(),
             .lda = c.lda,
             .w = d.w32.data(),
             .ldw = c.ldw,
             .c = out.data(),
             .ldc = c.n,
             .m = c.m,
             .n = c.n,
             .k = c.k});
    EXPECT_BITWISE_EQ(out, EmulateDense(d.a16.data(), d.w32.data(), c));
    GemmF32({.a = d.a32.data(),
             .lda = c.lda,
             .w_bf16 = d.w16.data(),
             .ldw = c.ldw,
             .c = out.data(),
             .ldc = c.n,
             .m = c.m,
             .n = c.n,
             .k = c.k});
    EXPECT_BITWISE_EQ(out, EmulateDense(d.a32.data(), d.w16.data(), c));
  }
}

// One and two A rows take the direct (decode) path, three rows the chunked path; all give the
// contract's bits for every storage of A and W: odd n (partial tiles; few tiles are split in
// halves), k tails, strided operands.
TEST(DenseGemm, OneAndTwoRowsBitwiseAcrossPaths) {
  if (!cpu::CpuHasAvx2()) GTEST_SKIP() << "no AVX2 on this CPU";
  test::ScopedSimd simd(cpu::Simd::kAvx2);
  // {n, k, row padding of A and W}
  const int64_t shapes[][3] = {{1, 1, 0},     {5, 100, 0},   {7, 8, 3},     {13, 31, 0},
                               {17, 33, 5},   {23, 69, 1},   {24, 4096, 0}, {64, 600, 0},
                               {41, 1031, 9}, {1000, 256, 0}};
  for (const auto& [n, k, extra] : shapes) {
    const DenseCase c{3, n, k, k + extra, k + extra, n + 2};
    const DenseData d = MakeDense(c, 900 + n * 7 + k);
    const DenseCase dense{c.m, c.n, c.k, c.lda, c.ldw, c.n};
    for (int variant = 0; variant < 4; ++variant) {
      const bool a_bf16 = variant & 1, w_bf16 = variant & 2;
      std::vector<float> want;
      if (a_bf16) {
        want = w_bf16 ? EmulateDense(d.a16.data(), d.w16.data(), dense)
                      : EmulateDense(d.a16.data(), d.w32.data(), dense);
      } else {
        want = w_bf16 ? EmulateDense(d.a32.data(), d.w16.data(), dense)
                      : EmulateDense(d.a32.data(), d.w32.data(), dense);
      }
      for (const int64_t m : {1, 2, 3}) {
        std::vector<float> out(m * c.ldc, 12345.0f);
        GemmF32({.a = a_bf16 ? nullptr : d.a32.data(),
                 .a_bf16 = a_bf16 ? d.a16.data() : nullptr,
                 .lda = c.lda,
                 .w = w_bf16 ? nullptr : d.w32.data(),
                 .w_bf16 = w_bf16 ? d.w16.data() : nullptr,
                 .ldw = c.ldw,
                 .c = out.data(),
                 .ldc = c.ldc,
                 .m = m,
                 .n = n,
                 .k = k});
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            ASSERT_EQ(F32ToBits(out[i * c.ldc + j]), F32ToBits(want[i * n + j]))
                << "n " << n << " k " << k << " m " << m << " variant " << variant << " (" << i
                << "," << j << ")";
          }
          for (int64_t j = n; j < c.ldc; ++j) ASSERT_EQ(out[i * c.ldc + j], 12345.0f);
        }
        if (variant != 3) continue;
        // GemmBf16 rounds the same dots once.
        std::vector<bf16> out16(m * c.ldc, 0xdead);
        GemmBf16({.a = d.a16.data(),
                  .lda = c.lda,
                  .w = d.w16.data(),
                  .ldw = c.ldw,
                  .c = out16.data(),
                  .ldc = c.ldc,
                  .m = m,
                  .n = n,
                  .k = k});
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j)
            ASSERT_EQ(out16[i * c.ldc + j], F32ToBf16(want[i * n + j]));
          for (int64_t j = n; j < c.ldc; ++j) ASSERT_EQ(out16[i * c.ldc + j], 0xdead);
        }
      }
    }
  }
}

TEST(DenseGemm, RowsIndependentOfM) {
  const DenseCase c{7, 50, 300, 300, 300, 50};
  const DenseData d = MakeDense(c, 77);
  std::vector<bf16> all(c.m * c.n), one(c.n);
  GemmBf16({.a = d.a16.data(),
            .lda = c.lda,
            .w = d.w16.data(),
            .ldw = c.ldw,
            .c = all.data(),
            .ldc = c.n,
            .m = c.m,
            .n = c.n,
            .k = c.k});
  for (int64_t r = 0; r < c.m; ++r) {
    GemmBf16({.a = d.a16.data() + r * c.lda,
              .lda = c.lda,
              .w = d.w16.data(),
              .ldw = c.ldw,
              .c = one.data(),
              .ldc = c.n,
              .m = 1,
              .n = c.n,
              .k = c.k});
    EXPECT_BITWISE_EQ(one, std::vector<bf16>(all.begin() + r * c.n, all.begin() + (r + 1) * c.n))
        << r;
  }
}

}  // namespace
}  // namespace flotilla::kernels
