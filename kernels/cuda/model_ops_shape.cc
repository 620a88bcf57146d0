// Launch checks of the model ops (model_ops.h), compiled without nvcc so CI tests them.
#include <algorithm>

#include "kernels/cuda/model_ops.h"

namespace flotilla::kernels::cuda {

const char* CheckEmbedRows(const EmbedRowsParams& p) {
  if (p.n < 0 || p.d < 0 || p.num_rows < 0 || p.first < 0) return "sizes must be >= 0";
  if (p.n == 0 || p.d == 0) return nullptr;
  if (p.tokens == nullptr || p.out == nullptr) return "tokens and out must be set";
  if (p.num_rows > 0 && p.table == nullptr) return "table must be set";
  return nullptr;
}

const char* CheckRepeatRows(const RepeatRowsParams& p) {
  if (p.n < 0 || p.d < 0 || p.copies < 1) return "n, d >= 0 and copies >= 1";
  if (p.n == 0 || p.d == 0) return nullptr;
  if (p.x == nullptr || p.out == nullptr) return "x and out must be set";
  return nullptr;
}

const char* CheckBroadcastAdd(const BroadcastAddParams& p) {
  if (p.n < 0 || p.d < 0 || p.copies < 1) return "n, d >= 0 and copies >= 1";
  if (p.n == 0 || p.d == 0) return nullptr;
  if (p.a == nullptr || p.b == nullptr || p.out == nullptr) return "a, b and out must be set";
  return nullptr;
}

const char* CheckConvert(const void* x, const void* y, int64_t count) {
  if (count < 0) return "count must be >= 0";
  if (count > 0 && (x == nullptr || y == nullptr)) return "x and y must be set";
  return nullptr;
}

const char* CheckInterleaveRows(const InterleaveRowsParams& p) {
  if (p.blocks < 0 || p.rows < 0 || p.row_bytes < 0) return "sizes must be >= 0";
  if (p.blocks == 0 || p.rows == 0 || p.row_bytes == 0) return nullptr;
  if (p.src == nullptr || p.dst == nullptr) return "src and dst must be set";
  return nullptr;
}

int64_t ModelOpBlocks(int64_t elements) {
  return std::clamp<int64_t>((elements + kModelOpThreads - 1) / kModelOpThreads, 1, 65536);
}

}  // namespace flotilla::kernels::cuda
