#include <algorithm>

#include "kernels/cuda/fill.h"

namespace flotilla::kernels::cuda {

const char* CheckFill(int64_t count, int64_t element_bytes) {
  if (count < 0) return "fill: count must be >= 0";
  if (element_bytes != 1 && element_bytes != 2 && element_bytes != 4 && element_bytes != 8) {
    return "fill: elements of 1, 2, 4 or 8 bytes";
  }
  return nullptr;
}

int64_t FillBlocks(int64_t count) {
  return std::min<int64_t>((count + kFillThreads - 1) / kFillThreads, 65536);
}

}  // namespace flotilla::kernels::cuda
