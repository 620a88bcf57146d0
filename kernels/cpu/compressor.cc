// Softmax pooling of one compressed KV entry (spec §6).
#include <cmath>
#include <vector>

#include "common/hd_math.h"
#include "kernels/ops.h"

namespace flotilla::kernels {

void CompressPool(const float* const* k_rows, const float* const* g_rows, int64_t n_slots,
                  int64_t d, float* out) {
  static thread_local std::vector<float> scratch;
  scratch.resize((n_slots + 2) * d);
  float* mx = scratch.data();
  float* sum = mx + d;
  float* e = sum + d;  // [n_slots][d]
  for (int64_t c = 0; c < d; ++c) mx[c] = g_rows[0][c];
  for (int64_t s = 1; s < n_slots; ++s)
    for (int64_t c = 0; c < d; ++c) mx[c] = std::fmax(mx[c], g_rows[s][c]);
  for (int64_t c = 0; c < d; ++c) sum[c] = 0.0f;
  for (int64_t s = 0; s < n_slots; ++s) {
    for (int64_t c = 0; c < d; ++c) {
      e[s * d + c] = hd::ExpF(g_rows[s][c] - mx[c]);  // a -inf slot gives exactly 0
      sum[c] += e[s * d + c];
    }
  }
  for (int64_t c = 0; c < d; ++c) out[c] = 0.0f;
  for (int64_t s = 0; s < n_slots; ++s) {
    for (int64_t c = 0; c < d; ++c) out[c] = out[c] + (e[s * d + c] / sum[c]) * k_rows[s][c];
  }
}

}  // namespace flotilla::kernels
