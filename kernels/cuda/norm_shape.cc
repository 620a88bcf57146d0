#include "kernels/cuda/norm.h"

namespace flotilla::kernels::cuda {

const char* CheckRmsNorm(const RmsNormParams& p) {
  if (!p.x || !p.w || !p.y) return "rms_norm: x, w and y must all be set";
  if (p.m < 0 || p.d <= 0) return "rms_norm: d must be positive and m non-negative";
  if (p.ldx < p.d || p.ldy < p.d) return "rms_norm: ldx and ldy must be at least d";
  if (p.x == p.y && p.ldx != p.ldy) return "rms_norm: in place needs ldx == ldy";
  if (NormBlocks(p.m) > 0x7fffffff) return "rms_norm: too many rows for one launch";
  return nullptr;
}

const char* CheckHeadRmsNorm(const HeadRmsNormParams& p) {
  if (!p.q) return "head_rms_norm: q must be set";
  if (p.rows < 0 || p.dim <= 0) return "head_rms_norm: dim must be positive and rows non-negative";
  if (NormBlocks(p.rows) > 0x7fffffff) return "head_rms_norm: too many rows for one launch";
  return nullptr;
}

int64_t NormBlocks(int64_t rows) { return (rows + kNormRowsPerBlock - 1) / kNormRowsPerBlock; }

}  // namespace flotilla::kernels::cuda
