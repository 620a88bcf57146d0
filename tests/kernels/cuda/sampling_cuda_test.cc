// GPU sampling against the sampling definition computed on the host in full (every valid
// candidate sorted, no pruning, probabilities by the same hd::ExpD, SampleDistribute over all of
// them): the same token for every row and draw (label cuda; skips without a GPU). Rows cover
// greedy, temperatures from 0.05 to 20, top-k from 1 past the vocabulary, top-p from 0.05 to 1,
// NaN and ±inf logits, ties, all-equal rows and a V4-Flash-size vocabulary (a sample of the
// combinations there).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "common/hd_math.h"
#include "kernels/cuda/sampling.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace flotilla::kernels::cuda {
namespace {

using testing::Download;
using testing::HaveGpu;
using testing::Upload;

int32_t Argmax(const float* l, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (l[i] > l[best]) best = i;
  return int32_t(best);
}

int32_t Reference(const float* l, int64_t vocab, const SampleRow& r) {
  if (r.greedy || !(r.temperature > 0.0f)) return Argmax(l, vocab);
  float top = -std::numeric_limits<float>::infinity();
  std::vector<uint64_t> cand;
  for (int64_t i = 0; i < vocab; ++i) {
    if (std::isnan(l[i])) continue;
    top = top < l[i] ? l[i] : top;
    cand.push_back(SamplePackedKey(l[i], i));
  }
  if (std::isinf(top)) return Argmax(l, vocab);
  std::sort(cand.begin(), cand.end());
  const int64_t valid = int64_t(cand.size());
  const int64_t k = r.top_k > 0 && r.top_k < valid ? r.top_k : valid;
  const double inv_t = 1.0 / double(r.temperature);
  std::vector<double> p(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) {
    p[size_t(i)] = hd::ExpD((double(l[uint32_t(cand[size_t(i)])]) - double(top)) * inv_t);
  }
  const int32_t id = SampleDistribute(cand.data(), p.data(), k, valid, r.top_p, r.uniform);
  EXPECT_GE(id, 0) << "over every candidate the definition always picks";
  return id;
}

TEST(SampleCuda, MatchesTheDefinition) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  for (int64_t vocab : {7, 1000, 129280}) {
    std::mt19937 rng{uint32_t(vocab)};
    std::vector<SampleRow> rows;
    const float temps[] = {0.05f, 0.6f, 1.0f, 1.7f, 20.0f};
    const float top_ps[] = {0.05f, 0.5f, 0.9f, 0.95f, 1.0f};
    const int32_t top_ks[] = {0, 1, 5, 50, 1024, 5000, int32_t(vocab) + 3};
    // At V4-Flash's vocabulary every 9th combination (a row sorts up to 2^17 candidates: kept
    // few so that the compute-sanitizer run of launch/gpu-check stays short).
    int combination = 0;
    for (float t : temps)
      for (float tp : top_ps)
        for (int32_t tk : top_ks) {
          if (vocab > 1000 && combination++ % 9 != 0) continue;
          SampleRow r;
          r.temperature = t;
          r.top_p = tp;
          r.top_k = tk;
          r.uniform = double(rng() >> 5) * 0x1p-27;
          rows.push_back(r);
        }
    SampleRow greedy;
    greedy.greedy = 1;
    rows.push_back(greedy);
    SampleRow zero_t;
    zero_t.temperature = 0.0f;
    rows.push_back(zero_t);
    SampleRow edge_u;  // the largest draw below 1
    edge_u.uniform = 1.0 - 0x1p-53;
    edge_u.top_p = 0.9f;
    rows.push_back(edge_u);
    const int64_t n_rows = int64_t(rows.size());
    std::vector<float> logits(size_t(n_rows * vocab));
    std::normal_distribution<float> d(0.0f, 3.0f);
    for (auto& x : logits) x = d(rng);
    for (int64_t r = 0; r < n_rows; ++r) {
      float* l = logits.data() + r * vocab;
      switch (r % 7) {
        case 0:
          l[0] = std::nanf("");
          break;  // NaN first
        case 1:
          l[vocab / 2] = std::nanf(""), l[1] = 12.0f;
          break;  // NaN inside
        case 2:
          for (int64_t i = 0; i < vocab; ++i) l[i] = 1.0f;
          break;  // all tied
        case 3:
          l[2] = l[3] = 40.0f;
          break;  // a tied top
        case 4:
          l[vocab - 1] = -std::numeric_limits<float>::infinity();
          break;
        case 5:
          l[0] = -0.0f, l[1] = 0.0f;
          break;
        default:
          break;
      }
    }
    // Rows whose top is +inf, and whose logits are all NaN: argmax.
    std::vector<float> extra_inf(size_t(vocab), 0.5f), extra_nan(size_t(vocab), std::nanf(""));
    extra_inf[vocab - 1] = std::numeric_limits<float>::infinity();
    logits.insert(logits.end(), extra_inf.begin(), extra_inf.end());
    logits.insert(logits.end(), extra_nan.begin(), extra_nan.end());
    rows.push_back(rows[0]);
    rows.push_back(rows[1]);
    const int64_t all_rows = int64_t(rows.size());

    float* dl = Upload(logits);
    SampleRow* dr = Upload(rows);
    std::vector<uint64_t> ws(size_t(all_rows * SampleWorkspaceElements(vocab)), 0);
    uint64_t* dw = Upload(ws);
    int32_t* dt = Upload(std::vector<int32_t>(size_t(all_rows), -5));
    SampleParams p;
    p.logits = dl;
    p.ld = vocab;
    p.rows = all_rows;
    p.vocab = vocab;
    p.row_params = dr;
    p.workspace = dw;
    p.tokens = dt;
    ASSERT_EQ(CheckSample(p), nullptr);
    ASSERT_EQ(LaunchSample(p, nullptr), 0);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<int32_t> got = Download(dt, size_t(all_rows));
    cudaFree(dl);
    cudaFree(dr);
    cudaFree(dw);
    cudaFree(dt);
    for (int64_t r = 0; r < all_rows; ++r) {
      const SampleRow& rp = rows[size_t(r)];
      ASSERT_EQ(got[size_t(r)], Reference(logits.data() + r * vocab, vocab, rp))
          << "vocab " << vocab << " row " << r << " T " << rp.temperature << " top_p " << rp.top_p
          << " top_k " << rp.top_k << " u " << rp.uniform;
    }
  }
}

}  // namespace
}  // namespace flotilla::kernels::cuda
