// Every op gives the same bits on the scalar and the AVX2 path, with 1 and 2 threads.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <functional>
#include <limits>

#include "kernels/cpu/dispatch.h"
#include "kernels/ops.h"
#include "tests/kernels/test_util.h"

namespace flotilla::kernels {
namespace {

using test::Rng;
using test::ScopedSimd;

// Runs `op` (which returns its outputs as one vector) on every path and thread count and
// expects identical bits (NaN equals NaN) to the scalar single-thread run.
template <class T>
void ExpectIdenticalOnAllPaths(const std::function<std::vector<T>()>& op) {
  if (!cpu::CpuHasAvx2()) GTEST_SKIP() << "no AVX2 on this CPU";
  const int saved_threads = omp_get_max_threads();
  std::vector<T> base;
  {
    ScopedSimd simd(cpu::Simd::kScalar);
    omp_set_num_threads(1);
    base = op();
  }
  for (const cpu::Simd path : {cpu::Simd::kScalar, cpu::Simd::kAvx2}) {
    for (const int threads : {1, 2}) {
      ScopedSimd simd(path);
      omp_set_num_threads(threads);
      EXPECT_BITWISE_EQ(op(), base)
          << (path == cpu::Simd::kAvx2 ? "avx2" : "scalar") << ", " << threads << " thread(s)";
    }
  }
  omp_set_num_threads(saved_threads);
}

TEST(SimdIdentity, ActQuantAndSimulations) {
  Rng rng(1);
  std::vector<bf16> x = rng.Bf16(3 * 4096, 2.0);
  x[200] = F32ToBf16(std::numeric_limits<float>::quiet_NaN());
  for (int j = 512; j < 640; ++j) x[j] = F32ToBf16(static_cast<float>(rng.Normal(1e-8)));
  ExpectIdenticalOnAllPaths<uint8_t>([&] {
    std::vector<uint8_t> out(3 * 4096 + 3 * 32);
    ActQuantFp8({.x = x.data(),
                 .ldx = 4096,
                 .m = 3,
                 .k = 4096,
                 .block = 128,
                 .q = out.data(),
                 .scale = out.data() + 3 * 4096});
    return out;
  });
  ExpectIdenticalOnAllPaths<bf16>([&] {
    std::vector<bf16> y = x;
    Fp8SimulateInPlace(y.data(), 24, 512, 448, 64);
    Fp4SimulateInPlace(y.data() + 4096, 16, 128, 128, 32);
    return y;
  });
}

TEST(SimdIdentity, GemmFp8) {
  Rng rng(2);
  for (const auto& [m, n, k] : std::vector<std::array<int64_t, 3>>{
           {1, 300, 512}, {7, 300, 512}, {1, 4096, 1024}, {3, 130, 256}}) {
    std::vector<fp8> a = rng.Fp8Codes(m * k), w = rng.Fp8Codes(n * k);
    a[(m - 1) * k + 5] = 0x7f;  // NaN codes: last activation row, weight row 3
    w[3 * k + 9] = 0xff;
    const std::vector<e8m0> sa = rng.Scales(m * k / 128),
                            sw = rng.Scales((n + 127) / 128 * (k / 128), 10);
    std::vector<float> sw_f32(sw.size());
    for (auto& s : sw_f32) s = static_cast<float>(rng.Uniform(1e-4, 1e-2));
    for (const bool f32_scales : {false, true}) {
      ExpectIdenticalOnAllPaths<bf16>([&] {
        std::vector<bf16> c(m * n);
        GemmFp8({.a = a.data(),
                 .a_scale = sa.data(),
                 .w = w.data(),
                 .w_scale = f32_scales ? nullptr : sw.data(),
                 .w_scale_f32 = f32_scales ? sw_f32.data() : nullptr,
                 .c = c.data(),
                 .ldc = n,
                 .m = m,
                 .n = n,
                 .k = k});
        return c;
      });
    }
  }
}

TEST(SimdIdentity, GemmFp8Fp4) {
  Rng rng(3);
  for (const auto& [m, n, k] : std::vector<std::array<int64_t, 3>>{
           {1, 300, 512}, {5, 300, 512}, {1, 2048, 4096}, {2, 37, 128}}) {
    std::vector<fp8> a = rng.Fp8Codes(m * k);
    a[k - 1] = 0xff;  // NaN code in row 0
    const std::vector<uint8_t> w = rng.Bytes(n * k / 2);
    const std::vector<e8m0> sa = rng.Scales(m * k / 128), sw = rng.Scales(n * k / 32, 10);
    ExpectIdenticalOnAllPaths<bf16>([&] {
      std::vector<bf16> c(m * n);
      GemmFp8Fp4({.a = a.data(),
                  .a_scale = sa.data(),
                  .w = w.data(),
                  .w_scale = sw.data(),
                  .c = c.data(),
                  .ldc = n,
                  .m = m,
                  .n = n,
                  .k = k});
      return c;
    });
  }
}

TEST(SimdIdentity, DenseGemms) {
  Rng rng(4);
  for (const auto& [m, n, k] : std::vector<std::array<int64_t, 3>>{
           {3, 50, 1031}, {1, 1000, 256}, {9, 24, 2048}, {2, 5, 3}}) {
    std::vector<bf16> a16 = rng.Bf16(m * k), w16 = rng.Bf16(n * k);
    const std::vector<float> a32 = rng.F32(m * k), w32 = rng.F32(n * k);
    if (k > 10) a16[(m - 1) * k + 7] = F32ToBf16(std::numeric_limits<float>::quiet_NaN());
    ExpectIdenticalOnAllPaths<float>([&] {
      std::vector<float> out(3 * m * n);
      std::vector<bf16> c16(m * n);
      GemmBf16({.a = a16.data(),
                .lda = k,
                .w = w16.data(),
                .ldw = k,
                .c = c16.data(),
                .ldc = n,
                .m = m,
                .n = n,
                .k = k});
      for (int64_t i = 0; i < m * n; ++i) out[i] = Bf16ToF32(c16[i]);
      GemmF32({.a = a32.data(),
               .lda = k,
               .w_bf16 = w16.data(),
               .ldw = k,
               .c = out.data() + m * n,
               .ldc = n,
               .m = m,
               .n = n,
               .k = k});
      GemmF32({.a_bf16 = a16.data(),
               .lda = k,
               .w = w32.data(),
               .ldw = k,
               .c = out.data() + 2 * m * n,
               .ldc = n,
               .m = m,
               .n = n,
               .k = k});
      return out;
    });
  }
}

TEST(SimdIdentity, NormsAndRope) {
  Rng rng(5);
  for (const int64_t d : {256, 4096, 7, 100}) {
    const std::vector<bf16> x = rng.Bf16(5 * d, 3.0), w = rng.Bf16(d);
    ExpectIdenticalOnAllPaths<bf16>([&] {
      std::vector<bf16> y(5 * d), q = x;
      RmsNorm(x.data(), d, w.data(), 5, d, 1e-6f, y.data(), d);
      HeadRmsNormBf16(q.data(), 5, d, 1e-6f);
      y.insert(y.end(), q.begin(), q.end());
      return y;
    });
  }
  const std::vector<bf16> x = rng.Bf16(3 * 512);
  const std::vector<int64_t> pos = {0, 77, 1048575};
  float freqs[32];
  RopeFrequencies(64, 160000.0, true, 16.0, 65536, 32.0, 1.0, freqs);
  ExpectIdenticalOnAllPaths<bf16>([&] {
    std::vector<bf16> y = x;
    ApplyRope({.x = y.data(),
               .ld = 512,
               .head_stride = 128,
               .num_tokens = 3,
               .num_heads = 4,
               .rope_offset = 64,
               .rope_dim = 64,
               .positions = pos.data(),
               .freqs = freqs});
    return y;
  });
}

TEST(SimdIdentity, HyperConnections) {
  const int64_t hc = 4, d = 256, m = 3, width = hc * d, n_mix = (2 + hc) * hc;
  Rng rng(6);
  const std::vector<bf16> h = rng.Bf16(m * width), x = rng.Bf16(m * d);
  const std::vector<float> fn = rng.F32(n_mix * width, 0.02), base = rng.F32(n_mix),
                           post = rng.F32(m * hc), comb = rng.F32(m * hc * hc);
  const float scale[3] = {0.8f, 1.2f, 1.5f};
  ExpectIdenticalOnAllPaths<float>([&] {
    std::vector<bf16> xo(m * d), ho(m * width), y(m * d);
    std::vector<float> out(m * hc + m * hc * hc);
    HcPre({.h = h.data(),
           .fn = fn.data(),
           .scale = scale,
           .base = base.data(),
           .m = m,
           .hc = hc,
           .d = d,
           .x = xo.data(),
           .post = out.data(),
           .comb = out.data() + m * hc});
    HcPost({.x = x.data(),
            .res = h.data(),
            .post = post.data(),
            .comb = comb.data(),
            .m = m,
            .hc = hc,
            .d = d,
            .h_out = ho.data()});
    HcHead({.h = h.data(),
            .fn = fn.data(),
            .scale = scale,
            .base = base.data(),
            .m = m,
            .hc = hc,
            .d = d,
            .y = y.data()});
    for (bf16 v : xo) out.push_back(Bf16ToF32(v));
    for (bf16 v : ho) out.push_back(Bf16ToF32(v));
    for (bf16 v : y) out.push_back(Bf16ToF32(v));
    return out;
  });
}

TEST(SimdIdentity, AttentionIndexerCompressor) {
  Rng rng(7);
  for (const auto& [heads, dim, n] :
       std::vector<std::array<int64_t, 3>>{{4, 128, 150}, {8, 512, 200}}) {
    const std::vector<bf16> q = rng.Bf16(heads * dim), kv = rng.Bf16(n * dim);
    const std::vector<float> sink = rng.F32(heads);
    std::vector<const bf16*> rows(n);
    for (int64_t i = 0; i < n; ++i) rows[i] = (i % 9 == 4) ? nullptr : kv.data() + i * dim;
    ExpectIdenticalOnAllPaths<bf16>([&] {
      std::vector<bf16> out(heads * dim);
      SparseAttention({.q = q.data(),
                       .rows = rows.data(),
                       .n = n,
                       .sink = sink.data(),
                       .num_heads = heads,
                       .dim = dim,
                       .scale = 1.0f / std::sqrt(static_cast<float>(dim)),
                       .out = out.data()});
      return out;
    });
  }
  const std::vector<bf16> q = rng.Bf16(64 * 128), keys = rng.Bf16(301 * 128),
                          w = rng.Bf16(64, 0.02);
  ExpectIdenticalOnAllPaths<float>([&] {
    std::vector<float> scores(301);
    IndexerScores({.q = q.data(),
                   .w = w.data(),
                   .keys = keys.data(),
                   .ldk = 128,
                   .n = 301,
                   .num_heads = 64,
                   .dim = 128,
                   .scores = scores.data()});
    std::vector<int32_t> idx(64);
    TopK(scores.data(), 301, 64, idx.data());
    for (int32_t i : idx) scores.push_back(static_cast<float>(i));
    return scores;
  });
  ExpectIdenticalOnAllPaths<bf16>([&] {
    std::vector<bf16> y = q;
    HadamardRotateBf16(y.data(), 64, 128);
    return y;
  });
  std::vector<std::vector<float>> kk(8), gg(8);
  std::vector<const float*> kp(8), gp(8);
  for (int s = 0; s < 8; ++s) {
    kk[s] = rng.F32(512);
    gg[s] = rng.F32(512);
    if (s < 2) std::fill(gg[s].begin(), gg[s].end(), -std::numeric_limits<float>::infinity());
    kp[s] = kk[s].data();
    gp[s] = gg[s].data();
  }
  ExpectIdenticalOnAllPaths<float>([&] {
    std::vector<float> out(512);
    CompressPool(kp.data(), gp.data(), 8, 512, out.data());
    return out;
  });
}

TEST(SimdIdentity, MoE) {
  Rng rng(8);
  const std::vector<float> logits = rng.F32(5 * 256, 2.0), bias = rng.F32(256, 0.3),
                           rw = rng.F32(5);
  const std::vector<bf16> gate = rng.Bf16(5 * 128, 5.0), up = rng.Bf16(5 * 128, 5.0);
  ExpectIdenticalOnAllPaths<float>([&] {
    std::vector<int32_t> idx(5 * 6);
    std::vector<float> w(5 * 6);
    Route({.logits = logits.data(),
           .bias = bias.data(),
           .m = 5,
           .num_experts = 256,
           .top_k = 6,
           .route_scale = 1.5f,
           .expert_idx = idx.data(),
           .weights = w.data()});
    std::vector<bf16> out(5 * 128);
    SwiGlu({.gate = gate.data(),
            .up = up.data(),
            .ld_in = 128,
            .row_weight = rw.data(),
            .m = 5,
            .inter = 128,
            .out = out.data(),
            .ld_out = 128});
    for (int32_t i : idx) w.push_back(static_cast<float>(i));
    for (bf16 v : out) w.push_back(Bf16ToF32(v));
    return w;
  });
}

TEST(SimdIdentity, PathNames) {
  {
    ScopedSimd simd(cpu::Simd::kScalar);
    EXPECT_STREQ(SimdPath(), "scalar");
  }
  if (cpu::CpuHasAvx2()) {
    ScopedSimd simd(cpu::Simd::kAvx2);
    EXPECT_STREQ(SimdPath(), "avx2");
  }
}

}  // namespace
}  // namespace flotilla::kernels
