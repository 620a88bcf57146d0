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

int64_t CompressorEntries(int64_t start_pos, int64_t n, int64_t ratio) {
  if (ratio <= 0 || n <= 0) return 0;
  // Positions p in [start_pos, start_pos + n) with (p + 1) % ratio == 0.
  return (start_pos + n) / ratio - start_pos / ratio;
}

const char* CheckCompressorUpdate(const CompressorUpdateParams& p) {
  if (p.n < 0 || p.start_pos < 0) return "compressor_update: n and start_pos must be >= 0";
  if (p.ratio <= 0 || p.d <= 0) return "compressor_update: ratio and d must be positive";
  if (p.width != (p.overlap ? 2 * p.d : p.d)) {
    return "compressor_update: width must be 2 d with overlap, d without";
  }
  if (p.n > 0 && (!p.k || !p.g || !p.ape || !p.state_kv || !p.state_score ||
                  (CompressorEntries(p.start_pos, p.n, p.ratio) > 0 && !p.pooled))) {
    return "compressor_update: k, g, ape, the state and (when entries complete) pooled must be set";
  }
  return nullptr;
}

int64_t CompressPoolBlocks(const CompressPoolParams& p) {
  const int64_t n = p.num_entries * p.d;
  return std::min<int64_t>((n + kCompressThreads - 1) / kCompressThreads, 65536);
}

}  // namespace flotilla::kernels::cuda
