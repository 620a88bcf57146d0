// Lightning indexer pieces (spec §7): Walsh-Hadamard rotation, head-weighted scores, top-k.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/cpu/avx2_util.h"
#include "kernels/cpu/gemm_dense.h"
#include "kernels/ops.h"

namespace flotilla::kernels {
namespace {

// scores[j] = Σ_h bf16(relu(bf16(dots[h][j])) * w[h]) in head order, for j < count (<= 8);
// dots is [heads][kDenseTileN].
void HeadSumScalar(const float* dots, const float* w, int64_t heads, int64_t count, float* scores) {
  for (int64_t j = 0; j < count; ++j) {
    float acc = 0.0f;
    for (int64_t h = 0; h < heads; ++h) {
      const float d = RoundBf16(dots[h * cpu::kDenseTileN + j]);
      const float relu = d > 0.0f ? d : 0.0f;
      acc += RoundBf16(relu * w[h]);
    }
    scores[j] = acc;
  }
}

FLOTILLA_AVX2_INLINE __m256 RoundBf16x8(__m256 x) {
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(cpu::avx2::F32ToBf16x8(x)), 16));
}

// The same sums, eight keys at once (one lane per key; per lane the scalar operation sequence).
FLOTILLA_AVX2 void HeadSumAvx2(const float* dots, const float* w, int64_t heads, int64_t count,
                               float* scores) {
  static_assert(cpu::kDenseTileN == 8);
  const __m256 zero = _mm256_setzero_ps();
  __m256 acc = zero;
  for (int64_t h = 0; h < heads; ++h) {
    const __m256 d = RoundBf16x8(_mm256_loadu_ps(dots + h * cpu::kDenseTileN));
    const __m256 relu = _mm256_and_ps(_mm256_cmp_ps(d, zero, _CMP_GT_OQ), d);  // NaN -> +0
    acc = _mm256_add_ps(acc, RoundBf16x8(_mm256_mul_ps(relu, _mm256_set1_ps(w[h]))));
  }
  if (count == 8) {
    _mm256_storeu_ps(scores, acc);
  } else {
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, acc);
    std::copy(lanes, lanes + count, scores);
  }
}

}  // namespace

void HadamardRotateBf16(bf16* x, int64_t rows, int64_t dim) {
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
#pragma omp parallel if (rows * dim >= (1 << 15))
  {
    static thread_local std::vector<float> v;  // grows once per thread, then reused
    v.assign(size_t(dim), 0.0f);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      bf16* row = x + r * dim;
      for (int64_t i = 0; i < dim; ++i) v[i] = Bf16ToF32(row[i]);
      for (int64_t s = 1; s < dim; s <<= 1) {
        for (int64_t i = 0; i < dim; ++i) {
          if (i & s) continue;
          const float a = v[i], b = v[i + s];
          v[i] = a + b;
          v[i + s] = a - b;
        }
      }
      for (int64_t i = 0; i < dim; ++i) row[i] = F32ToBf16(v[i] * scale);
    }
  }
}

void IndexerScores(const IndexerScoreParams& p) {
  if (p.n <= 0) return;
  const cpu::DenseA q(cpu::DenseOperand{nullptr, p.q, p.dim}, p.num_heads, p.dim);
  const cpu::DenseOperand keys{nullptr, p.keys, p.ldk};
  static thread_local std::vector<float> w_storage;  // threads below read it by reference
  std::vector<float>& w = w_storage;
  w.assign(size_t(p.num_heads), 0.0f);
  for (int64_t h = 0; h < p.num_heads; ++h) w[h] = Bf16ToF32(p.w[h]);
  const int64_t tiles = (p.n + cpu::kDenseTileN - 1) / cpu::kDenseTileN;
#pragma omp parallel if (p.n * p.num_heads * p.dim >= (1 << 16))
  {
    // Zeroed once: lanes past a short last tile hold zeros, not stale values.
    static thread_local std::vector<float> dots;
    dots.assign(size_t(p.num_heads * cpu::kDenseTileN), 0.0f);
#pragma omp for schedule(static)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t j0 = tile * cpu::kDenseTileN;
      const int64_t j1 = std::min(p.n, j0 + cpu::kDenseTileN);
      cpu::DenseTile(q, 0, p.num_heads, keys, j0, j1, dots.data(), cpu::kDenseTileN);
      if (q.avx2()) {
        HeadSumAvx2(dots.data(), w.data(), p.num_heads, j1 - j0, p.scores + j0);
      } else {
        HeadSumScalar(dots.data(), w.data(), p.num_heads, j1 - j0, p.scores + j0);
      }
    }
  }
}

void TopK(const float* scores, int64_t n, int64_t k, int32_t* idx) {
  if (k <= 0) return;
  // Total order: larger score first, NaN after every number, ties to the lower index. The k
  // first under a strict total order are one set in one order, however they are found.
  const auto before = [scores](int32_t a, int32_t b) {
    const float x = scores[a], y = scores[b];
    const bool xn = std::isnan(x), yn = std::isnan(y);
    if (xn != yn) return yn;
    if (!xn && x != y) return x > y;
    return a < b;
  };
  // One pass in index order keeps candidates in a buffer of at most `cap`; when it fills, it is
  // cut to its k first and the k-th becomes the threshold that later indices must come before
  // (a later index never ties: equal scores order by index). O(n) at any position; the buffer
  // grows once per thread and is reused.
  static thread_local std::vector<int32_t> cand;
  const size_t cap = size_t(std::max<int64_t>(4 * k, 256));
  cand.clear();
  cand.reserve(cap);
  bool cut = false;
  int32_t threshold = 0;
  for (int64_t j = 0; j < n; ++j) {
    if (cut && !before(int32_t(j), threshold)) continue;
    cand.push_back(int32_t(j));
    if (cand.size() == cap) {
      std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end(), before);
      threshold = cand[size_t(k - 1)];
      cand.resize(size_t(k));
      cut = true;
    }
  }
  if (int64_t(cand.size()) > k) {
    std::nth_element(cand.begin(), cand.begin() + k, cand.end(), before);
    cand.resize(size_t(k));
  }
  std::sort(cand.begin(), cand.end(), before);
  std::copy(cand.begin(), cand.end(), idx);
}

}  // namespace flotilla::kernels
