// MoE gate (spec §9.1) and the clamped SwiGLU with the routing weight (§9.2).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "common/hd_math.h"
#include "kernels/ops.h"

namespace flotilla::kernels {

void Route(const RouterParams& p) {
#pragma omp parallel if (p.m * p.num_experts >= (1 << 14))
  {
    static thread_local std::vector<float> score, biased;  // grow once per thread
    static thread_local std::vector<int32_t> order;
    score.assign(size_t(p.num_experts), 0.0f);
    biased.assign(size_t(p.num_experts), 0.0f);
    order.assign(size_t(p.num_experts), 0);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < p.m; ++t) {
      const float* z = p.logits + t * p.num_experts;
      for (int64_t e = 0; e < p.num_experts; ++e) {
        score[e] = hd::SqrtSoftplusF(z[e]);  // the CUDA router's bits (common/hd_math.h)
      }
      int32_t* idx = p.expert_idx + t * p.top_k;
      if (p.hash_ids != nullptr) {
        for (int64_t i = 0; i < p.top_k; ++i)
          idx[i] = static_cast<int32_t>(p.hash_ids[t * p.ld_hash + i]);
      } else {
        for (int64_t e = 0; e < p.num_experts; ++e) biased[e] = score[e] + p.bias[e];
        const auto before = [&](int32_t a, int32_t b) {
          const float x = biased[a], y = biased[b];
          const bool xn = std::isnan(x), yn = std::isnan(y);
          if (xn != yn) return yn;
          if (!xn && x != y) return x > y;
          return a < b;
        };
        std::iota(order.begin(), order.end(), 0);
        std::partial_sort(order.begin(), order.begin() + p.top_k, order.end(), before);
        std::copy(order.begin(), order.begin() + p.top_k, idx);
      }
      float sum = 0.0f;
      for (int64_t i = 0; i < p.top_k; ++i) sum += score[idx[i]];
      float* w = p.weights + t * p.top_k;
      for (int64_t i = 0; i < p.top_k; ++i) w[i] = (score[idx[i]] / sum) * p.route_scale;
    }
  }
}

void SwiGlu(const SwiGluParams& p) {
#pragma omp parallel for schedule(static) if (p.m * p.inter >= (1 << 16))
  for (int64_t r = 0; r < p.m; ++r) {
    const bf16* gate = p.gate + r * p.ld_in;
    const bf16* up = p.up + r * p.ld_in;
    bf16* out = p.out + r * p.ld_out;
    for (int64_t i = 0; i < p.inter; ++i) {
      const float g = std::min(Bf16ToF32(gate[i]), p.limit);
      const float u = std::clamp(Bf16ToF32(up[i]), -p.limit, p.limit);
      float a = (g / (1.0f + hd::ExpF(-g))) * u;  // the CUDA kernel's bits
      if (p.row_weight != nullptr) a = p.row_weight[r] * a;
      out[i] = F32ToBf16(a);
    }
  }
}

}  // namespace flotilla::kernels
