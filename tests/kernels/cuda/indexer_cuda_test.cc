// The indexer's ops on the GPU against the CPU backend, bit for bit (label cuda; skips without
// a GPU): Hadamard rotation, the head-weighted scores and the top-k selection.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "kernels/cuda/indexer.h"
#include "kernels/ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace flotilla::kernels::cuda {
namespace {

using testing::Download;
using testing::HaveGpu;
using testing::Upload;

using testing::RandomBf16;

TEST(IndexerCuda, HadamardBitwise) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  for (int64_t dim : {2, 64, 128, 1024, 8192}) {
    const int64_t rows = 37;
    std::vector<bf16> x = RandomBf16(rows * dim, uint32_t(dim), 2.0f);
    std::vector<bf16> want = x;
    HadamardRotateBf16(want.data(), rows, dim);
    bf16* dx = Upload(x);
    HadamardParams p{dx, rows, dim};
    ASSERT_EQ(CheckHadamard(p), nullptr);
    ASSERT_EQ(LaunchHadamard(p, nullptr), 0);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<bf16> got = Download(dx, x.size());
    cudaFree(dx);
    for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << "dim " << dim << " at " << i;
  }
}

void CheckScores(int64_t n, int64_t heads, int64_t dim, int64_t ldk, uint32_t seed) {
  const std::vector<bf16> q = RandomBf16(heads * dim, seed, 1.0f);
  std::vector<bf16> w = RandomBf16(heads, seed + 1, 0.5f);
  const std::vector<bf16> keys = RandomBf16(std::max<int64_t>(n, 1) * ldk, seed + 2, 1.0f);
  std::vector<float> want(std::max<int64_t>(n, 1), -7.0f);
  IndexerScoreParams cpu;
  cpu.q = q.data();
  cpu.w = w.data();
  cpu.keys = keys.data();
  cpu.ldk = ldk;
  cpu.n = n;
  cpu.num_heads = heads;
  cpu.dim = dim;
  cpu.scores = want.data();
  IndexerScores(cpu);
  IndexerScoresParams g;
  g.q = Upload(q);
  g.w = Upload(w);
  g.keys = Upload(keys);
  g.ldk = ldk;
  g.n = n;
  g.num_heads = heads;
  g.dim = dim;
  g.scores = Upload(std::vector<float>(want.size(), -7.0f));
  ASSERT_EQ(CheckIndexerScores(g), nullptr);
  ASSERT_EQ(LaunchIndexerScores(g, nullptr), 0);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> got = Download(g.scores, want.size());
  for (const void* ptr : {(const void*)g.q, (const void*)g.w, (const void*)g.keys, (const void*)g.scores}) {
    cudaFree(const_cast<void*>(ptr));
  }
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(F32ToBits(got[i]), F32ToBits(want[i])) << "n " << n << " key " << i;
  }
}

TEST(IndexerCuda, ScoresBitwise) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  CheckScores(5000, 64, 128, 128, 1);   // V4-Flash: 64 heads of 128
  CheckScores(300, 8, 13, 20, 2);       // a dim that is not a multiple of 8, wider rows
  CheckScores(0, 64, 128, 128, 3);      // no keys
}

void CheckTopK(const std::vector<float>& scores, int64_t k) {
  std::vector<int32_t> want(k);
  TopK(scores.data(), int64_t(scores.size()), k, want.data());
  TopKParams p;
  p.scores = Upload(scores);
  p.n = int64_t(scores.size());
  p.k = k;
  p.idx = Upload(std::vector<int32_t>(k, -1));
  ASSERT_EQ(CheckTopK(p), nullptr);
  ASSERT_EQ(LaunchTopK(p, nullptr), 0);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<int32_t> got = Download(p.idx, k);
  cudaFree(const_cast<float*>(p.scores));
  cudaFree(p.idx);
  ASSERT_EQ(got, want) << "n " << scores.size() << " k " << k;
}

TEST(IndexerCuda, TopKEqualsTheCpuSelection) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(9);
  // 256k bf16-rounded scores (many ties), a NaN, +-0 and infinities among them.
  std::vector<float> big(262144);
  std::normal_distribution<float> d(0.0f, 3.0f);
  for (auto& x : big) x = RoundBf16(d(rng));
  big[17] = std::nanf("");
  big[1000] = -0.0f;
  big[1001] = 0.0f;
  big[2000] = INFINITY;
  big[2001] = -INFINITY;
  for (int64_t k : {1, 512, 2048, 4096}) CheckTopK(big, k);
  // k = n, and every score equal (the order is the indices).
  std::vector<float> same(3000, 1.5f);
  CheckTopK(same, 3000);
  std::vector<float> small = {2.0f, std::nanf(""), -1.0f, 2.0f, 0.0f};
  CheckTopK(small, 5);
}

}  // namespace
}  // namespace flotilla::kernels::cuda
