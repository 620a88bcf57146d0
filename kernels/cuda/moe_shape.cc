#include <algorithm>

#include "kernels/cuda/moe.h"

namespace flotilla::kernels::cuda {

const char* CheckRoute(const RouteParams& p) {
  if (p.m < 0) return "route: m must be >= 0";
  if (p.num_experts <= 0 || p.num_experts > kRouteMaxExperts) {
    return "route: num_experts must be 1 to 4096";
  }
  if (p.top_k <= 0 || p.top_k > p.num_experts || p.top_k > kRouteMaxTopK) {
    return "route: top_k must be 1 to min(num_experts, 64)";
  }
  if ((p.bias == nullptr) == (p.hash_ids == nullptr)) {
    return "route: exactly one of bias / hash_ids must be set";
  }
  if (p.hash_ids != nullptr && p.ld_hash < p.top_k) return "route: ld_hash must be >= top_k";
  if (p.m > 0 && (!p.logits || !p.expert_idx || !p.weights)) {
    return "route: logits, expert_idx and weights must be set";
  }
  if (p.m > 0x7fffffff) return "route: too many tokens for one launch";
  return nullptr;
}

int64_t RouteSharedBytes(const RouteParams& p) {
  // score and biased (f32), the chosen ids, a taken flag per expert.
  return 2 * p.num_experts * int64_t(sizeof(float)) + kRouteMaxTopK * int64_t(sizeof(int32_t)) +
         p.num_experts;
}

const char* CheckSwiGlu(const SwiGluParams& p) {
  if (p.m < 0 || p.inter < 0) return "swiglu: m and inter must be >= 0";
  if (p.ld_in < p.inter || p.ld_out < p.inter) return "swiglu: ld_in and ld_out must be >= inter";
  if (p.m > 0 && p.inter > 0 && (!p.gate || !p.up || !p.out)) {
    return "swiglu: gate, up and out must be set";
  }
  return nullptr;
}

int64_t SwiGluBlocks(const SwiGluParams& p) {
  const int64_t n = p.m * p.inter;
  return std::min<int64_t>((n + kSwiGluThreads - 1) / kSwiGluThreads, 65536);
}

}  // namespace flotilla::kernels::cuda
