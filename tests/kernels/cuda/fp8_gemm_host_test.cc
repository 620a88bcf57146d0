// The host side of the cuBLASLt FP8 GEMM (kernels/cuda/fp8_gemm.h), on the CPU: the cuBLASLt
// problem and scale layouts, the load-time scale conversion and the launch checks.
//
// The layout test evaluates the product the way cuBLASLt defines it — column-major operands,
// op(A) = Aᵀ, one f32 scale per 128 x 128 block of A and per 128-element K vector of B, D
// column-major — from the layout this code computes and the converted scales, and compares it
// with the spec's row-major formula on the original UE8M0 scales (both in double).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "kernels/cuda/fp8_gemm.h"

namespace flotilla::kernels::cuda {
namespace {

TEST(Fp8GemmLayout, V4FlashShape) {
  // wo_b of V4-Flash: k 8192 -> n 4096, 5 rows, output row stride 4096.
  const Fp8GemmLayout l = MakeFp8GemmLayout(5, 4096, 8192, 4096);
  EXPECT_EQ(l.a_rows, 8192);
  EXPECT_EQ(l.a_cols, 4096);
  EXPECT_EQ(l.lda, 8192);
  EXPECT_TRUE(l.transa);
  EXPECT_EQ(l.b_rows, 8192);
  EXPECT_EQ(l.b_cols, 5);
  EXPECT_EQ(l.ldb, 8192);
  EXPECT_FALSE(l.transb);
  EXPECT_EQ(l.d_rows, 4096);
  EXPECT_EQ(l.d_cols, 5);
  EXPECT_EQ(l.ldd, 4096);
  EXPECT_EQ(l.w_scale_rows, 32);
  EXPECT_EQ(l.w_scale_cols, 64);
  EXPECT_EQ(l.w_scale_ld, 64);
  EXPECT_EQ(l.a_scale_count, 5 * 64);
  // k / 128 = 5 is padded to 8 columns; n = 300 needs 3 block rows.
  EXPECT_EQ(Fp8WeightScaleCount(300, 640), 3 * 8);
  EXPECT_EQ(Fp8WeightScaleIndex(2, 4, 640), 2 * 8 + 4);
  EXPECT_EQ(Fp8ActScaleIndex(3, 2, 7), 2 * 7 + 3);
  // 1 row, k 4096: 32 scales (128 bytes) rounded to 256, then cuBLASLt's workspace.
  EXPECT_EQ(Fp8GemmWorkspaceBytes(1, 4096), 256 + kFp8GemmLtWorkspaceBytes);
  EXPECT_EQ(Fp8GemmWorkspaceBytes(64, 4096), 64 * 32 * 4 + kFp8GemmLtWorkspaceBytes);
}

TEST(Fp8GemmLayout, WeightScaleConversion) {
  const int64_t n = 300, k = 640;  // 3 x 5 blocks, ld 8
  std::vector<e8m0> in(3 * 5);
  for (size_t i = 0; i < in.size(); ++i) in[i] = e8m0(100 + 3 * i);
  in[7] = 0;     // 2^-127
  in[8] = 0xff;  // NaN
  std::vector<float> out(Fp8WeightScaleCount(n, k), -1.0f);
  ConvertFp8WeightScales(in.data(), n, k, out.data());
  for (int64_t r = 0; r < 3; ++r) {
    for (int64_t c = 0; c < 8; ++c) {
      const float got = out[r * 8 + c];
      if (c >= 5) {
        EXPECT_EQ(got, 0.0f) << r << "," << c;
      } else if (r * 5 + c == 8) {
        EXPECT_TRUE(std::isnan(got));
      } else {
        const int e = int(in[r * 5 + c]) - 127;
        EXPECT_EQ(got, std::ldexp(1.0f, e)) << r << "," << c;
      }
    }
  }
}

TEST(Fp8GemmLayout, F32WeightScalesOnlyChangeTheirRowLayout) {
  const int64_t n = 200, k = 384;  // 2 x 3 blocks, ld 4
  const std::vector<float> in = {0.5f, 3.0f, -1.0f, 1e-30f, 7.0f, 0.125f};
  std::vector<float> out(Fp8WeightScaleCount(n, k), -9.0f);
  ConvertFp8WeightScalesF32(in.data(), n, k, out.data());
  const std::vector<float> want = {0.5f, 3.0f, -1.0f, 0.0f, 1e-30f, 7.0f, 0.125f, 0.0f};
  EXPECT_EQ(out, want);
}

// The layout's product as cuBLASLt defines it, D column-major [n x m] with ldd.
std::vector<double> LtProduct(const Fp8GemmLayout& l, const std::vector<fp8>& w,
                              const std::vector<fp8>& x, const std::vector<float>& w_scale,
                              const std::vector<float>& x_scale, int64_t k) {
  std::vector<double> d(size_t(l.ldd * l.d_cols), 0.0);
  for (int64_t j = 0; j < l.d_cols; ++j) {    // D column = token
    for (int64_t i = 0; i < l.d_rows; ++i) {  // D row = output feature
      double acc = 0;
      for (int64_t kk = 0; kk < k; ++kk) {
        // op(A)(i, kk) = A(kk, i): A column-major, element (r, c) at r + c * lda.
        const double a = Fp8ToF32(w[kk + i * l.lda]);
        const double sa = w_scale[(i / 128) * l.w_scale_ld + kk / 128];
        // B(kk, j): column-major, ldb; its scale vector per 128 rows of column j.
        const double b = Fp8ToF32(x[kk + j * l.ldb]);
        const double sb = x_scale[Fp8ActScaleIndex(j, kk / 128, l.b_cols)];
        acc += a * sa * b * sb;
      }
      d[i + j * l.ldd] = acc;
    }
  }
  return d;
}

TEST(Fp8GemmLayout, LayoutAndScalesGiveTheSpecProduct) {
  const int64_t m = 3, n = 272, k = 384, ldc = 280;  // ragged last weight block row, padded ld
  std::mt19937 rng(7);
  auto code = [&] {
    fp8 c = fp8(rng() & 0xff);
    return (c & 0x7f) == 0x7f ? fp8(c ^ 1) : c;  // no NaN codes here
  };
  std::vector<fp8> x(m * k), w(n * k);
  for (auto& c : x) c = code();
  for (auto& c : w) c = code();
  std::vector<e8m0> sx(m * (k / 128)), sw(((n + 127) / 128) * (k / 128));
  for (auto& s : sx) s = e8m0(120 + rng() % 12);
  for (auto& s : sw) s = e8m0(120 + rng() % 12);

  const Fp8GemmLayout l = MakeFp8GemmLayout(m, n, k, ldc);
  std::vector<float> w_scale(Fp8WeightScaleCount(n, k));
  ConvertFp8WeightScales(sw.data(), n, k, w_scale.data());
  std::vector<float> x_scale(l.a_scale_count);
  for (int64_t r = 0; r < m; ++r) {  // what LaunchConvertFp8ActScales writes
    for (int64_t kb = 0; kb < k / 128; ++kb) {
      x_scale[Fp8ActScaleIndex(r, kb, m)] = E8m0ToF32(sx[r * (k / 128) + kb]);
    }
  }
  const std::vector<double> d = LtProduct(l, w, x, w_scale, x_scale, k);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t c = 0; c < n; ++c) {
      double want = 0, magnitude = 0;
      for (int64_t kb = 0; kb < k / 128; ++kb) {
        double dot = 0, abs_dot = 0;
        for (int64_t t = kb * 128; t < kb * 128 + 128; ++t) {
          const double prod = double(Fp8ToF32(x[r * k + t])) * Fp8ToF32(w[c * k + t]);
          dot += prod;
          abs_dot += std::fabs(prod);
        }
        const double s =
            double(E8m0ToF32(sx[r * (k / 128) + kb])) * E8m0ToF32(sw[(c / 128) * (k / 128) + kb]);
        want += dot * s;
        magnitude += abs_dot * s;
      }
      // Row-major C[r, c] at r * ldc + c is D(c, r) at c + r * ldd. Both sums are double;
      // only their order differs.
      ASSERT_NEAR(d[c + r * ldc], want, 1e-13 * magnitude) << r << "," << c;
    }
  }
}

TEST(Fp8GemmLaunch, Refusals) {
  alignas(16) static uint8_t buf[256];
  Fp8GemmParams p;
  p.a = buf, p.a_scale = buf, p.w = buf, p.c = reinterpret_cast<bf16*>(buf);
  p.w_scale = reinterpret_cast<const float*>(buf);
  p.m = 4, p.n = 4096, p.k = 7168, p.ldc = 4096;
  EXPECT_EQ(CheckFp8Gemm(p), nullptr);
  auto refused = [&](Fp8GemmParams q) { return CheckFp8Gemm(q) != nullptr; };
  Fp8GemmParams q = p;
  q.k = 7000;
  EXPECT_TRUE(refused(q));
  q = p, q.n = 4100;
  EXPECT_TRUE(refused(q));
  q = p, q.m = 0;
  EXPECT_TRUE(refused(q));
  q = p, q.ldc = 4095;
  EXPECT_TRUE(refused(q));
  q = p, q.ldc = 4100;  // not 16-byte rows
  EXPECT_TRUE(refused(q));
  q = p, q.ldc = 4104;
  EXPECT_FALSE(refused(q));
  q = p, q.a = buf + 8;
  EXPECT_TRUE(refused(q));
  q = p, q.c = reinterpret_cast<bf16*>(buf + 2);
  EXPECT_TRUE(refused(q));
  q = p, q.w_scale = nullptr;
  EXPECT_TRUE(refused(q));
}

}  // namespace
}  // namespace flotilla::kernels::cuda
