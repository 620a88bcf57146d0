#include "kernels/cuda/rope.h"

namespace flotilla::kernels::cuda {

const char* CheckRope(const RopeParams& p) {
  if (p.num_tokens < 0 || p.num_heads < 0) return "rope: num_tokens and num_heads must be >= 0";
  if (p.rope_dim <= 0 || p.rope_dim % 2 != 0) return "rope: rope_dim must be positive and even";
  if (p.rope_offset < 0 || p.head_stride < 0 || p.ld < 0) {
    return "rope: rope_offset, head_stride and ld must be >= 0";
  }
  if (p.num_tokens > 0 && p.num_heads > 0 && (!p.x || !p.positions || !p.freqs)) {
    return "rope: x, positions and freqs must be set";
  }
  if (p.num_tokens > 0x7fffffff) return "rope: too many tokens for one launch";
  return nullptr;
}

int64_t RopeBlocks(const RopeParams& p) { return p.num_heads > 0 ? p.num_tokens : 0; }

}  // namespace flotilla::kernels::cuda
