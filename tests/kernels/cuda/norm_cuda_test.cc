// RMSNorm and the per-head bf16 RMS norm on the GPU against the CPU backend, bit for bit (label
// cuda; skips without a GPU).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "kernels/cuda/norm.h"
#include "kernels/ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace flotilla::kernels::cuda {
namespace {

using testing::HaveGpu;

using testing::RandomBf16;

using testing::Download;
using testing::Upload;

void CheckRmsNorm(int64_t m, int64_t d, int64_t ldx, bool in_place, uint32_t seed) {
  const std::vector<bf16> x = RandomBf16(m * ldx, seed, std::ldexp(1.0f, int(seed % 20) - 10));
  const std::vector<bf16> w = RandomBf16(d, seed + 1, 1.0f);
  std::vector<bf16> want = x;  // rows keep their padding; the norm writes [0, d)
  RmsNorm(x.data(), ldx, w.data(), m, d, 1e-6f, want.data(), ldx);
  bf16* dx = Upload(x);
  bf16* dw = Upload(w);
  bf16* dy = in_place ? dx : Upload(x);
  RmsNormParams p;
  p.x = dx;
  p.ldx = ldx;
  p.w = dw;
  p.m = m;
  p.d = d;
  p.eps = 1e-6f;
  p.y = dy;
  p.ldy = ldx;
  ASSERT_EQ(CheckRmsNorm(p), nullptr);
  ASSERT_EQ(LaunchRmsNorm(p, nullptr), 0);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<bf16> got = Download(dy, x.size());
  cudaFree(dx);
  cudaFree(dw);
  if (!in_place) cudaFree(dy);
  for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << "m " << m << " d " << d << " at " << i;
}

TEST(NormCuda, RmsNormBitwise) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  CheckRmsNorm(33, 4096, 4096, false, 1);   // V4-Flash hidden size, a partial block of rows
  CheckRmsNorm(5, 1024, 1088, false, 2);    // row stride beyond d
  CheckRmsNorm(70, 7, 7, false, 3);         // shorter than the 8 chains
  CheckRmsNorm(17, 4096, 4096, true, 4);    // in place
  CheckRmsNorm(0, 4096, 4096, false, 5);    // no rows
}

TEST(NormCuda, HeadRmsNormBitwise) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  for (int64_t dim : {512, 128, 13}) {
    const int64_t rows = 200;
    std::vector<bf16> q = RandomBf16(rows * dim, uint32_t(dim), 3.0f);
    std::vector<bf16> want = q;
    HeadRmsNormBf16(want.data(), rows, dim, 1e-6f);
    bf16* dq = Upload(q);
    HeadRmsNormParams p;
    p.q = dq;
    p.rows = rows;
    p.dim = dim;
    p.eps = 1e-6f;
    ASSERT_EQ(CheckHeadRmsNorm(p), nullptr);
    ASSERT_EQ(LaunchHeadRmsNorm(p, nullptr), 0);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<bf16> got = Download(dq, q.size());
    cudaFree(dq);
    for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << "dim " << dim << " at " << i;
  }
}

}  // namespace
}  // namespace flotilla::kernels::cuda
