// MoE permutation (spec §9): assignments grouped by expert, row gathers and scatters, and the
// fixed-order combine.
#include <algorithm>
#include <cstring>
#include <numeric>

#include "kernels/ops.h"

namespace flotilla::kernels {

void MoePermute(const MoePermuteParams& p) {
  // Counting sort over the flat index: stable, so each expert's list is in token order.
  std::fill(p.offsets, p.offsets + p.num_experts + 1, int64_t(0));
  const int64_t total = p.n * p.k;
  for (int64_t i = 0; i < total; ++i) {
    const int64_t e = int64_t(p.expert_idx[i]) - p.first_expert;
    if (e >= 0 && e < p.num_experts) ++p.offsets[e + 1];
  }
  for (int64_t e = 0; e < p.num_experts; ++e) p.offsets[e + 1] += p.offsets[e];
  // offsets[e] is used as expert e's write cursor, then restored.
  for (int64_t i = 0; i < total; ++i) {
    const int64_t e = int64_t(p.expert_idx[i]) - p.first_expert;
    if (e >= 0 && e < p.num_experts) p.order[p.offsets[e]++] = int32_t(i);
  }
  for (int64_t e = p.num_experts; e > 0; --e) p.offsets[e] = p.offsets[e - 1];
  p.offsets[0] = 0;
}

void GatherRows(const RowCopyParams& p) {
#pragma omp parallel for schedule(static) if (p.rows * p.row_bytes >= (1 << 20))
  for (int64_t i = 0; i < p.rows; ++i) {
    std::memcpy(p.dst + i * p.ld_dst, p.src + int64_t(p.index[i]) / p.divisor * p.ld_src,
                size_t(p.row_bytes));
  }
}

void ScatterRows(const RowCopyParams& p) {
#pragma omp parallel for schedule(static) if (p.rows * p.row_bytes >= (1 << 20))
  for (int64_t i = 0; i < p.rows; ++i) {
    std::memcpy(p.dst + int64_t(p.index[i]) / p.divisor * p.ld_dst, p.src + i * p.ld_src,
                size_t(p.row_bytes));
  }
}

void MoeCombine(const MoeCombineParams& p) {
#pragma omp parallel for schedule(static) if (p.n * p.d >= (1 << 14))
  for (int64_t t = 0; t < p.n; ++t) {
    int64_t order[64];
    std::iota(order, order + p.k, int64_t(0));
    const int32_t* idx = p.expert_idx + t * p.k;
    // Stable insertion sort by expert id (k is small; std::stable_sort would allocate).
    for (int64_t i = 1; i < p.k; ++i) {
      const auto v = order[i];
      int64_t j = i;
      for (; j > 0 && idx[v] < idx[order[j - 1]]; --j) order[j] = order[j - 1];
      order[j] = v;
    }
    for (int64_t c = 0; c < p.d; ++c) {
      float y = 0.0f;
      for (int64_t s = 0; s < p.k; ++s) y += Bf16ToF32(p.routed[(t * p.k + order[s]) * p.d + c]);
      if (p.shared != nullptr) y += Bf16ToF32(p.shared[t * p.d + c]);
      p.out[t * p.d + c] = F32ToBf16(y);
    }
  }
}

}  // namespace flotilla::kernels
