// The cuBLASLt FP8 GEMM on the GPU against the CPU backend's GemmFp8 (label cuda; skips without a
// GPU, and on a device without cuBLASLt's block-scaled FP8, which is sm_90's).
//
// Tolerance: cuBLASLt forms each 128-wide partial with the tensor core's own accumulation order
// and internal precision (Hopper's FP8 MMA keeps fewer than f32's bits before the promotion
// into the f32 accumulator), where the CPU forms the exactly ordered lane dot; scales and the
// f32 outer sum are the same operations. Each output is held to
//   |gpu - cpu| <= 2^-7 · |cpu| + 2^-10 · Σ_kb sa·sw·Σ_k |a·w|
// (the bf16 roundings may land one unit in the last place apart, at most 2^-7 relative, plus
// partials accurate to 2^-10 of their magnitude), computed
// in double from the inputs. A wrong scale, block or row is off by far more. NaN rows must match.
// Row-count invariance is bitwise: one row alone gives the same bits as in a call of 64 rows.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <tuple>
#include <vector>

#include "common/dtype.h"
#include "kernels/cuda/fp8_gemm.h"
#include "kernels/ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace flotilla::kernels::cuda {
namespace {

using testing::Download;
using testing::HaveGpu;
using testing::Upload;

struct Problem {
  int64_t m = 0, n = 0, k = 0;
  std::vector<fp8> a, w;
  std::vector<e8m0> a_scale, w_scale;
};

Problem Random(int64_t m, int64_t n, int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  Problem p;
  p.m = m, p.n = n, p.k = k;
  auto code = [&] {
    fp8 c;
    do c = fp8(rng());
    while ((c & 0x7f) == 0x7f);
    return c;
  };
  p.a.resize(m * k);
  p.w.resize(n * k);
  for (auto& c : p.a) c = code();
  for (auto& c : p.w) c = code();
  p.a_scale.resize(m * (k / 128));
  p.w_scale.resize((n + 127) / 128 * (k / 128));
  for (auto& s : p.a_scale) s = e8m0(118 + rng() % 14);
  for (auto& s : p.w_scale) s = e8m0(118 + rng() % 14);
  return p;
}

// Device state of one weight and its prepared cuBLASLt plan.
struct GpuGemm {
  Fp8GemmLt lt;
  fp8* w = nullptr;
  float* w_scale = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  bool supported = false;

  explicit GpuGemm(const Problem& p) {
    if (lt.Init() != nullptr) return;
    const char* err = lt.Prepare(p.n, p.k);
    if (err) {
      cudaDeviceProp prop{};
      cudaGetDeviceProperties(&prop, 0);
      // Block-scaled FP8 is cuBLASLt's on sm_90; elsewhere the test has nothing to check.
      EXPECT_NE(prop.major * 10 + prop.minor, 90) << err;
      return;
    }
    supported = true;
    w = Upload(p.w);
    e8m0* raw = Upload(p.w_scale);
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&w_scale),
                         Fp8WeightScaleCount(p.n, p.k) * sizeof(float)),
              cudaSuccess);
    EXPECT_EQ(LaunchConvertFp8WeightScales(raw, p.n, p.k, w_scale, nullptr), 0);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    // The device conversion is the host one, bit for bit.
    std::vector<float> host(Fp8WeightScaleCount(p.n, p.k));
    ConvertFp8WeightScales(p.w_scale.data(), p.n, p.k, host.data());
    const std::vector<float> dev = Download(w_scale, host.size());
    EXPECT_EQ(std::memcmp(host.data(), dev.data(), host.size() * sizeof(float)), 0);
    cudaFree(raw);
    workspace_bytes = Fp8GemmWorkspaceBytes(kFp8GemmAlgoRows, p.k);
    EXPECT_EQ(cudaMalloc(&workspace, workspace_bytes), cudaSuccess);
    int algo = -1, split = -1;
    EXPECT_TRUE(lt.AlgoInfo(p.n, p.k, &algo, &split));
    EXPECT_LE(split, 1);
  }
  ~GpuGemm() {
    cudaFree(w);
    cudaFree(w_scale);
    cudaFree(workspace);
  }

  // Rows [row0, row0 + m) of the problem's activations; bf16 [m, n].
  std::vector<bf16> Run(const fp8* a, const e8m0* a_scale, const Problem& p, int64_t row0,
                        int64_t m) {
    bf16* c = Upload(std::vector<bf16>(m * p.n, bf16(0x7fa1)));  // poisoned
    Fp8GemmParams g;
    g.a = a + row0 * p.k;
    g.a_scale = a_scale + row0 * (p.k / 128);
    g.w = w;
    g.w_scale = w_scale;
    g.c = c;
    g.ldc = p.n;
    g.m = m, g.n = p.n, g.k = p.k;
    const char* err = lt.Run(g, workspace, workspace_bytes, nullptr);
    EXPECT_EQ(err, nullptr) << err;
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<bf16> out = Download(c, m * p.n);
    cudaFree(c);
    return out;
  }
};

void CheckAgainstCpu(const Problem& p, const std::vector<bf16>& got) {
  std::vector<bf16> want(p.m * p.n);
  GemmFp8Params cpu;
  cpu.a = p.a.data(), cpu.a_scale = p.a_scale.data();
  cpu.w = p.w.data(), cpu.w_scale = p.w_scale.data();
  cpu.c = want.data(), cpu.ldc = p.n;
  cpu.m = p.m, cpu.n = p.n, cpu.k = p.k;
  GemmFp8(cpu);
  const int64_t kb_count = p.k / 128;
  for (int64_t i = 0; i < p.m; ++i) {
    for (int64_t j = 0; j < p.n; ++j) {
      const float ref = Bf16ToF32(want[i * p.n + j]);
      const float gpu = Bf16ToF32(got[i * p.n + j]);
      if (std::isnan(ref)) {
        ASSERT_TRUE(std::isnan(gpu)) << "row " << i << " col " << j;
        continue;
      }
      double magnitude = 0;
      for (int64_t kb = 0; kb < kb_count; ++kb) {
        double s = 0;
        for (int64_t t = kb * 128; t < kb * 128 + 128; ++t) {
          s += std::fabs(double(Fp8ToF32(p.a[i * p.k + t])) * Fp8ToF32(p.w[j * p.k + t]));
        }
        magnitude += s * E8m0ToF32(p.a_scale[i * kb_count + kb]) *
                     E8m0ToF32(p.w_scale[(j / 128) * kb_count + kb]);
      }
      const double bound = std::ldexp(std::fabs(double(ref)), -7) + std::ldexp(magnitude, -10);
      ASSERT_LE(std::fabs(double(gpu) - ref), bound)
          << "row " << i << " col " << j << ": gpu " << gpu << " cpu " << ref;
    }
  }
}

TEST(Fp8GemmCuda, AgainstTheCpuBackend) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  const Problem p = Random(37, 272, 512, 1);  // a ragged last weight block row
  GpuGemm g(p);
  if (!g.supported) GTEST_SKIP() << "no block-scaled FP8 in cuBLASLt on this device";
  fp8* a = Upload(p.a);
  e8m0* s = Upload(p.a_scale);
  CheckAgainstCpu(p, g.Run(a, s, p, 0, p.m));
  cudaFree(a);
  cudaFree(s);
}

TEST(Fp8GemmCuda, F32WeightScaleConversionOnTheDevice) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  const int64_t n = 300, k = 640;
  std::vector<float> in(3 * 5);
  for (size_t i = 0; i < in.size(); ++i) in[i] = std::ldexp(1.0f, int(i) - 7) * (i % 2 ? 3 : 1);
  std::vector<float> want(Fp8WeightScaleCount(n, k));
  ConvertFp8WeightScalesF32(in.data(), n, k, want.data());
  float* d_in = Upload(in);
  float* d_out = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&d_out), want.size() * sizeof(float)), cudaSuccess);
  ASSERT_EQ(LaunchConvertFp8WeightScalesF32(d_in, n, k, d_out, nullptr), 0);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(Download(d_out, want.size()), want);
  cudaFree(d_in);
  cudaFree(d_out);
}

TEST(Fp8GemmCuda, V4FlashShapes) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  // wq_b-like (1024 -> 4096) and wo_b (8192 -> 4096) at decode row counts.
  for (const auto& [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{4, 4096, 1024},
                                std::tuple<int64_t, int64_t, int64_t>{3, 4096, 8192}}) {
    const Problem p = Random(m, n, k, uint32_t(n + k));
    GpuGemm g(p);
    if (!g.supported) GTEST_SKIP() << "no block-scaled FP8 in cuBLASLt on this device";
    fp8* a = Upload(p.a);
    e8m0* s = Upload(p.a_scale);
    CheckAgainstCpu(p, g.Run(a, s, p, 0, p.m));
    cudaFree(a);
    cudaFree(s);
  }
}

TEST(Fp8GemmCuda, OneRowAloneGivesTheSameBitsAsInABatch) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  const Problem p = Random(64, 1024, 2048, 2);
  GpuGemm g(p);
  if (!g.supported) GTEST_SKIP() << "no block-scaled FP8 in cuBLASLt on this device";
  fp8* a = Upload(p.a);
  e8m0* s = Upload(p.a_scale);
  const std::vector<bf16> batch = g.Run(a, s, p, 0, 64);
  for (int64_t row : {0, 1, 17, 63}) {
    const std::vector<bf16> alone = g.Run(a, s, p, row, 1);
    ASSERT_EQ(std::memcmp(alone.data(), batch.data() + row * p.n, p.n * sizeof(bf16)), 0)
        << "row " << row;
  }
  // And 7 rows starting at 30 against the same rows of the batch.
  const std::vector<bf16> seven = g.Run(a, s, p, 30, 7);
  ASSERT_EQ(std::memcmp(seven.data(), batch.data() + 30 * p.n, 7 * p.n * sizeof(bf16)), 0);
  cudaFree(a);
  cudaFree(s);
}

TEST(Fp8GemmCuda, NanAndExtremeValues) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  Problem p = Random(9, 256, 384, 3);
  for (size_t i = 0; i < p.a.size(); i += 5) p.a[i] = (i % 2) ? 0x7e : 0xfe;  // +-448
  for (size_t i = 0; i < p.w.size(); i += 7) p.w[i] = 0x7e;
  p.a[4 * 384 + 200] = 0x7f;  // NaN in row 4
  for (size_t i = 0; i < p.a_scale.size(); ++i) p.a_scale[i] = (i % 2) ? 100 : 140;
  GpuGemm g(p);
  if (!g.supported) GTEST_SKIP() << "no block-scaled FP8 in cuBLASLt on this device";
  fp8* a = Upload(p.a);
  e8m0* s = Upload(p.a_scale);
  CheckAgainstCpu(p, g.Run(a, s, p, 0, p.m));
  cudaFree(a);
  cudaFree(s);
}

}  // namespace
}  // namespace flotilla::kernels::cuda
