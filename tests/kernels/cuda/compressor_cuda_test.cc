// The compressor state update on the GPU against the CPU's (worker/attention.cc's loop, written
// out here over kernels::CompressPool, the CPU backend's op): the pooled entries and the state
// after every chunk, bit for bit, for the main compressor (overlap, ratio 4) and the indexer's
// (no overlap, ratio 128), chunks that start and end mid-block, single tokens, and scores with
// -inf and NaN (label cuda; skips without a GPU).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cuda/compressor.h"
#include "kernels/ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace flotilla::kernels::cuda {
namespace {

using testing::Download;
using testing::HaveGpu;
using testing::Upload;

struct HostState {
  std::vector<float> kv, score;
};

// The CPU: worker/attention.cc's per-token loop.
std::vector<float> CpuUpdate(const std::vector<float>& k, const std::vector<float>& g,
                             const std::vector<float>& ape, int64_t n, int64_t width, int64_t d,
                             int64_t m, bool overlap, int64_t start, HostState* st) {
  std::vector<float> pooled;
  std::vector<const float*> k_rows(overlap ? 2 * m : m), g_rows(k_rows.size());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = start + i;
    const int64_t slot = (overlap ? m : 0) + p % m;
    for (int64_t c = 0; c < width; ++c) {
      st->kv[slot * width + c] = k[i * width + c];
      st->score[slot * width + c] = g[i * width + c] + ape[(p % m) * width + c];
    }
    if ((p + 1) % m != 0) continue;
    for (int64_t s = 0; s < m; ++s) {
      k_rows[s] = st->kv.data() + s * width;
      g_rows[s] = st->score.data() + s * width;
      if (overlap) {
        k_rows[m + s] = st->kv.data() + (m + s) * width + d;
        g_rows[m + s] = st->score.data() + (m + s) * width + d;
      }
    }
    pooled.resize(pooled.size() + d);
    CompressPool(k_rows.data(), g_rows.data(), int64_t(k_rows.size()), d,
                 pooled.data() + pooled.size() - d);
    if (overlap) {
      std::copy(st->kv.begin() + m * width, st->kv.end(), st->kv.begin());
      std::copy(st->score.begin() + m * width, st->score.end(), st->score.begin());
    }
  }
  return pooled;
}

bool SameBits(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, 4) == 0;
}

void Check(int64_t d, int64_t m, bool overlap, const std::vector<int64_t>& chunks, uint32_t seed) {
  const int64_t width = overlap ? 2 * d : d, rows = (overlap ? 2 : 1) * m;
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::vector<float> ape(size_t(m * width));
  for (auto& v : ape) v = dist(rng);
  HostState host{std::vector<float>(size_t(rows * width), 0.0f),
                 std::vector<float>(size_t(rows * width), 0.0f)};
  // The overlap's first "previous block" is empty: -inf scores weigh nothing.
  if (overlap) {
    for (int64_t j = 0; j < m * width; ++j) host.score[size_t(j)] = -INFINITY;
  }
  float* dkv = Upload(host.kv);
  float* dsc = Upload(host.score);
  float* dape = Upload(ape);
  int64_t pos = 0;
  for (int64_t n : chunks) {
    std::vector<float> k(size_t(n * width)), g(size_t(n * width));
    for (auto& v : k) v = dist(rng);
    for (auto& v : g) v = dist(rng);
    if (n > 2) {
      g[size_t(width + 1)] = -INFINITY;
      g[size_t(2 * width + 2)] = std::nanf("");
    }
    const std::vector<float> want = CpuUpdate(k, g, ape, n, width, d, m, overlap, pos, &host);
    float* dk = Upload(k);
    float* dg = Upload(g);
    const int64_t entries = CompressorEntries(pos, n, m);
    ASSERT_EQ(entries * d, int64_t(want.size()));
    float* dout = Upload(std::vector<float>(size_t(std::max<int64_t>(entries, 1) * d), 0.0f));
    CompressorUpdateParams p;
    p.k = dk;
    p.g = dg;
    p.ape = dape;
    p.n = n;
    p.width = width;
    p.d = d;
    p.ratio = m;
    p.overlap = overlap;
    p.start_pos = pos;
    p.state_kv = dkv;
    p.state_score = dsc;
    p.pooled = dout;
    ASSERT_EQ(CheckCompressorUpdate(p), nullptr);
    ASSERT_EQ(LaunchCompressorUpdate(p, nullptr), 0);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<float> got = Download(dout, want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_TRUE(SameBits(got[i], want[i])) << "entry value " << i << " at position " << pos;
    }
    const std::vector<float> kv = Download(dkv, host.kv.size()),
                             sc = Download(dsc, host.score.size());
    for (size_t i = 0; i < kv.size(); ++i) {
      ASSERT_TRUE(SameBits(kv[i], host.kv[i])) << "state kv " << i;
      ASSERT_TRUE(SameBits(sc[i], host.score[i])) << "state score " << i;
    }
    cudaFree(dk);
    cudaFree(dg);
    cudaFree(dout);
    pos += n;
  }
  cudaFree(dkv);
  cudaFree(dsc);
  cudaFree(dape);
}

TEST(CompressorUpdateCuda, MainCompressorWithOverlapBitwise) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  Check(512, 4, true, {1, 2, 9, 4, 3, 64, 1}, 1);
}

TEST(CompressorUpdateCuda, IndexerCompressorBitwise) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  Check(128, 128, false, {100, 28, 1, 300, 127}, 2);
}

}  // namespace
}  // namespace flotilla::kernels::cuda
