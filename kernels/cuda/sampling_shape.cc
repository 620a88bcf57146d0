#include "kernels/cuda/sampling.h"

namespace flotilla::kernels::cuda {

const char* CheckSample(const SampleParams& p) {
  if (p.rows < 0) return "sample: rows must be >= 0";
  if (p.vocab <= 0 || p.vocab > kSampleMaxVocab) return "sample: vocab must be 1 to 2^20";
  if (p.ld < p.vocab) return "sample: ld must be at least vocab";
  if (p.rows > 0x7fffffff) return "sample: too many rows for one launch";
  if (p.rows > 0 && (!p.logits || !p.row_params || !p.workspace || !p.tokens)) {
    return "sample: logits, row_params, workspace and tokens must be set";
  }
  return nullptr;
}

}  // namespace flotilla::kernels::cuda
