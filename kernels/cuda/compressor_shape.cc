#include <algorithm>

#include "kernels/cuda/compressor.h"

namespace flotilla::kernels::cuda {

const char* CheckCompressPool(const CompressPoolParams& p) {
  if (p.num_entries < 0 || p.d < 0) return "compress_pool: num_entries and d must be >= 0";
  if (p.n_slots <= 0) return "compress_pool: n_slots must be positive";
  if (p.num_entries > 0 && p.d > 0 &&
      (!p.kv || !p.score || !p.slot_offsets || !p.out || !p.error)) {
    return "compress_pool: kv, score, slot_offsets, out and error must be set";
  }
  if (p.state_elements < 0) return "compress_pool: state_elements must be >= 0";
  return nullptr;
}

int64_t CompressPoolBlocks(const CompressPoolParams& p) {
  const int64_t n = p.num_entries * p.d;
  return std::min<int64_t>((n + kCompressThreads - 1) / kCompressThreads, 65536);
}

}  // namespace flotilla::kernels::cuda
