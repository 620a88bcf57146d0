#include "kernels/cuda/act_quant.h"

namespace flotilla::kernels::cuda {

const char* CheckActQuantFp8(const ActQuantFp8Params& p) {
  if (!p.x || !p.q || !p.scale) return "act_quant: x, q and scale must all be set";
  if (p.block != 32 && p.block != 64 && p.block != 128) return "act_quant: block must be 32, 64 or 128";
  if (p.m < 0 || p.k <= 0 || p.k % p.block != 0) {
    return "act_quant: k must be a positive multiple of block and m non-negative";
  }
  if (p.ldx < p.k) return "act_quant: ldx must be at least k";
  if (ActQuantFp8Blocks(p) > 0x7fffffff) return "act_quant: too many groups for one launch";
  return nullptr;
}

int64_t ActQuantFp8Blocks(const ActQuantFp8Params& p) {
  const int64_t groups = p.m * (p.k / p.block), warps = kActQuantThreads / 32;
  return (groups + warps - 1) / warps;
}

}  // namespace flotilla::kernels::cuda
