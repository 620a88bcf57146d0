// act_quant on the GPU against the CPU backend, bit for bit (label cuda; skips without a GPU).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "kernels/cuda/act_quant.h"
#include "kernels/ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace flotilla::kernels::cuda {
namespace {

using testing::HaveGpu;

void CheckBitwise(const std::vector<bf16>& x, int64_t m, int64_t k, int64_t ldx, int64_t block) {
  std::vector<fp8> want_q(m * k), got_q(m * k, 0xAA);
  std::vector<e8m0> want_s(m * (k / block)), got_s(m * (k / block), 0xAA);
  ActQuantParams cpu;
  cpu.x = x.data();
  cpu.ldx = ldx;
  cpu.m = m;
  cpu.k = k;
  cpu.block = block;
  cpu.q = want_q.data();
  cpu.scale = want_s.data();
  ActQuantFp8(cpu);

  void *dx, *dq, *ds;
  ASSERT_EQ(cudaMalloc(&dx, x.size() * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dq, got_q.size()), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&ds, got_s.size()), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dx, x.data(), x.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dq, got_q.data(), got_q.size(), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(ds, got_s.data(), got_s.size(), cudaMemcpyHostToDevice), cudaSuccess);
  ActQuantFp8Params g;
  g.x = static_cast<const bf16*>(dx);
  g.ldx = ldx;
  g.m = m;
  g.k = k;
  g.block = block;
  g.q = static_cast<fp8*>(dq);
  g.scale = static_cast<e8m0*>(ds);
  ASSERT_EQ(CheckActQuantFp8(g), nullptr);
  ASSERT_EQ(LaunchActQuantFp8(g, nullptr), 0);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(got_q.data(), dq, got_q.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(got_s.data(), ds, got_s.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  for (void* p : {dx, dq, ds}) cudaFree(p);
  for (size_t i = 0; i < want_s.size(); ++i) ASSERT_EQ(got_s[i], want_s[i]) << "scale " << i;
  for (size_t i = 0; i < want_q.size(); ++i) ASSERT_EQ(got_q[i], want_q[i]) << "code " << i;
}

std::vector<bf16> RandomRows(int64_t m, int64_t ldx, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<bf16> x(m * ldx);
  for (int64_t r = 0; r < m; ++r) {
    // Rows from tiny (below the 1e-4 amax floor, subnormal FP8 codes) to huge magnitudes.
    const float scale = std::ldexp(1.0f, int(rng() % 60) - 30);
    std::normal_distribution<float> d(0.0f, scale);
    for (int64_t i = 0; i < ldx; ++i) x[r * ldx + i] = F32ToBf16(d(rng));
  }
  return x;
}

TEST(ActQuantCuda, BitwiseEqualToTheCpuBackend) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  for (int64_t block : {32, 64, 128}) {
    CheckBitwise(RandomRows(37, 1024 + 64, 1 + uint32_t(block)), 37, 1024, 1024 + 64, block);
  }
  CheckBitwise(RandomRows(3000, 4096, 5), 3000, 4096, 4096, 128);  // a V4-Flash-wide batch
}

TEST(ActQuantCuda, NonFiniteGroupsAndEdgeValues) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  const int64_t m = 6, k = 512;
  std::vector<bf16> x = RandomRows(m, k, 9);
  x[0 * k + 5] = 0x7fc0;                           // NaN in group 0 of row 0
  x[1 * k + 130] = 0x7f80;                         // +inf in group 1 of row 1
  x[2 * k + 300] = 0xff80;                         // -inf
  for (int64_t i = 0; i < 128; ++i) x[3 * k + i] = 0;  // all-zero group
  for (int64_t i = 0; i < 128; ++i) x[4 * k + i] = F32ToBf16((i % 2 ? -1.0f : 1.0f) * 3.0e38f);
  for (int64_t i = 0; i < 128; ++i) x[5 * k + 128 + i] = F32ToBf16(std::ldexp(float(i), -140));
  CheckBitwise(x, m, k, k, 128);
}

}  // namespace
}  // namespace flotilla::kernels::cuda
