#include <algorithm>
#include <cstdint>

#include "kernels/cuda/moe_permute.h"

namespace flotilla::kernels::cuda {

const char* CheckMoePermute(const MoePermuteParams& p) {
  if (p.n < 0 || p.k < 0) return "moe_permute: n and k must be >= 0";
  if (p.num_experts < 0 || p.num_experts > kMoePermuteMaxExperts) {
    return "moe_permute: num_experts must be 0 to 8192";
  }
  if (p.n * p.k > 0x7fffffff) return "moe_permute: n * k must fit an int32 index";
  if (!p.offsets || (p.n * p.k > 0 && (!p.expert_idx || !p.order))) {
    return "moe_permute: offsets (and with assignments expert_idx and order) must be set";
  }
  return nullptr;
}

const char* CheckRowCopy(const RowCopyParams& p) {
  if (p.rows < 0 || p.row_bytes < 0) return "row_copy: rows and row_bytes must be >= 0";
  if (p.divisor <= 0) return "row_copy: divisor must be positive";
  if (p.ld_src < p.row_bytes || p.ld_dst < p.row_bytes) {
    return "row_copy: ld_src and ld_dst must be at least row_bytes";
  }
  if (p.indexed_rows < 0) return "row_copy: indexed_rows must be >= 0";
  if (p.rows > 0 && p.row_bytes > 0 && (!p.src || !p.dst || !p.index || !p.error)) {
    return "row_copy: src, dst, index and error must be set";
  }
  return nullptr;
}

bool RowCopyVectorized(const RowCopyParams& p) {
  const auto aligned = [](uint64_t v) { return v % 16 == 0; };
  return aligned(reinterpret_cast<uintptr_t>(p.src)) &&
         aligned(reinterpret_cast<uintptr_t>(p.dst)) && aligned(uint64_t(p.ld_src)) &&
         aligned(uint64_t(p.ld_dst)) && aligned(uint64_t(p.row_bytes));
}

int64_t RowCopyBlocks(const RowCopyParams& p) {
  return p.row_bytes > 0 ? std::min<int64_t>(p.rows, 65535) : 0;
}

const char* CheckMoeCombine(const MoeCombineParams& p) {
  if (p.n < 0 || p.d < 0) return "moe_combine: n and d must be >= 0";
  if (p.k < 0 || p.k > kMoeCombineMaxK) return "moe_combine: k must be 0 to 64";
  if (p.n > 0x7fffffff) return "moe_combine: too many tokens for one launch";
  if (p.n > 0 && p.d > 0 && (!p.out || (p.k > 0 && (!p.expert_idx || !p.routed)))) {
    return "moe_combine: out (and with k > 0 expert_idx and routed) must be set";
  }
  return nullptr;
}

}  // namespace flotilla::kernels::cuda
