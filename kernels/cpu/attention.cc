// Sparse attention of one token over a list of KV rows (spec §5.5).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/avx2_util.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/lane_order.h"
#include "kernels/ops.h"

namespace flotilla::kernels {
namespace {

constexpr int64_t kBlock = 64;

// blk[c] = fma chain over the block's rows in list order: blk = bf16(p_i) * row_i[c] + blk.
void BlockValuesScalar(const bf16* const* rows, const float* pb, int64_t count, int64_t dim,
                       float* blk) {
  std::fill(blk, blk + dim, 0.0f);
  for (int64_t i = 0; i < count; ++i) {
    if (rows[i] == nullptr) continue;
    for (int64_t c = 0; c < dim; ++c) blk[c] = std::fmaf(pb[i], Bf16ToF32(rows[i][c]), blk[c]);
  }
}

FLOTILLA_AVX2 void BlockValuesAvx2(const bf16* const* rows, const float* pb, int64_t count,
                                   int64_t dim, float* blk) {
  std::fill(blk, blk + dim, 0.0f);
  for (int64_t i = 0; i < count; ++i) {
    const bf16* row = rows[i];
    if (row == nullptr) continue;
    const __m256 p = _mm256_set1_ps(pb[i]);
    int64_t c = 0;
    for (; c + 8 <= dim; c += 8) {
      _mm256_storeu_ps(blk + c,
                       _mm256_fmadd_ps(p, cpu::avx2::LoadBf16(row + c), _mm256_loadu_ps(blk + c)));
    }
    for (; c < dim; ++c) blk[c] = std::fmaf(pb[i], Bf16ToF32(row[c]), blk[c]);
  }
}

void AttendHead(const SparseAttentionParams& p, int64_t h, bool avx2, float* work) {
  const int64_t dim = p.dim;
  float* o = work;  // 3 * dim + 2 * kBlock floats
  float* blk = o + dim;
  float* s = blk + dim;
  float* pb = s + kBlock;
  const bf16* q = p.q + h * dim;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  float m = neg_inf, l = 0.0f;
  std::fill(o, o + dim, 0.0f);
  for (int64_t b0 = 0; b0 < p.n; b0 += kBlock) {
    const int64_t count = std::min(kBlock, p.n - b0);
    const bf16* const* rows = p.rows + b0;
    float block_max = neg_inf;
    for (int64_t i = 0; i < count; ++i) {
      s[i] = rows[i] ? cpu::Dot(q, rows[i], dim) * p.scale : neg_inf;
      block_max = std::max(block_max, s[i]);
    }
    const float m_new = std::max(m, block_max);
    const float alpha = std::exp(m - m_new);
    float sum = 0.0f;
    for (int64_t i = 0; i < count; ++i) {
      const float pi = std::exp(s[i] - m_new);
      sum += pi;
      pb[i] = RoundBf16(pi);
    }
    l = l * alpha + sum;
    if (avx2) {
      BlockValuesAvx2(rows, pb, count, dim, blk);
    } else {
      BlockValuesScalar(rows, pb, count, dim, blk);
    }
    for (int64_t c = 0; c < dim; ++c) o[c] = o[c] * alpha + blk[c];
    m = m_new;
  }
  l = l + std::exp(p.sink[h] - m);
  bf16* out = p.out + h * dim;
  for (int64_t c = 0; c < dim; ++c) out[c] = F32ToBf16(o[c] / l);
}

}  // namespace

void SparseAttention(const SparseAttentionParams& p) {
  const bool avx2 = cpu::UseAvx2();
#pragma omp parallel if (p.num_heads > 1 && p.n * p.num_heads * p.dim >= (1 << 15))
  {
    // On the stack up to kStackDim (a pool thread may be new: no allocation per step); wider
    // heads take the heap.
    constexpr int64_t kStackDim = 1024;
    float stack_work[3 * kStackDim + 2 * kBlock];
    std::vector<float> heap_work(p.dim > kStackDim ? size_t(3 * p.dim + 2 * kBlock) : 0);
    float* work = p.dim > kStackDim ? heap_work.data() : stack_work;
#pragma omp for schedule(static)
    for (int64_t h = 0; h < p.num_heads; ++h) AttendHead(p, h, avx2, work);
  }
}

}  // namespace flotilla::kernels
