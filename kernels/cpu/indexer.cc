// Lightning indexer pieces (spec §7): Walsh-Hadamard rotation, head-weighted scores, top-k.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/cpu/gemm_dense.h"
#include "kernels/ops.h"

namespace flotilla::kernels {

void HadamardRotateBf16(bf16* x, int64_t rows, int64_t dim) {
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
#pragma omp parallel if (rows * dim >= (1 << 15))
  {
    std::vector<float> v(dim);
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
  std::vector<float> w(p.num_heads);
  for (int64_t h = 0; h < p.num_heads; ++h) w[h] = Bf16ToF32(p.w[h]);
  const int64_t tiles = (p.n + cpu::kDenseTileN - 1) / cpu::kDenseTileN;
#pragma omp parallel if (p.n * p.num_heads * p.dim >= (1 << 16))
  {
    std::vector<float> dots(p.num_heads * cpu::kDenseTileN);
#pragma omp for schedule(static)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t j0 = tile * cpu::kDenseTileN;
      const int64_t j1 = std::min(p.n, j0 + cpu::kDenseTileN);
      cpu::DenseTile(q, 0, p.num_heads, keys, j0, j1, dots.data(), cpu::kDenseTileN);
      for (int64_t j = j0; j < j1; ++j) {
        float acc = 0.0f;
        for (int64_t h = 0; h < p.num_heads; ++h) {
          const float d = RoundBf16(dots[h * cpu::kDenseTileN + (j - j0)]);
          const float relu = d > 0.0f ? d : 0.0f;
          acc += RoundBf16(relu * w[h]);
        }
        p.scores[j] = acc;
      }
    }
  }
}

void TopK(const float* scores, int64_t n, int64_t k, int32_t* idx) {
  // Total order: larger score first, NaN after every number, ties to the lower index.
  const auto before = [scores](int32_t a, int32_t b) {
    const float x = scores[a], y = scores[b];
    const bool xn = std::isnan(x), yn = std::isnan(y);
    if (xn != yn) return yn;
    if (!xn && x != y) return x > y;
    return a < b;
  };
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  if (k < n) std::nth_element(order.begin(), order.begin() + k, order.end(), before);
  std::sort(order.begin(), order.begin() + k, before);
  std::copy(order.begin(), order.begin() + k, idx);
}

}  // namespace flotilla::kernels
