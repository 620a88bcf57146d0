// Token sampling on the GPU (a block per sequence), the algorithm of worker/sampler.cc
// (docs/numerics.md, "Sampling"): greedy is the argmax (ties to the lowest id; a NaN first logit
// gives 0, as the sequential scan does); temperature sampling is defined on the candidates in
// descending logit order (ties to the lower id, NaN never a candidate): softmax at temperature T
// in double summed in that order, top-k keeps the first k, top-p the shortest prefix whose
// normalised mass reaches top_p, and the draw u picks the first candidate whose running mass
// exceeds u × (kept mass). Without a sort of the vocabulary: only the candidates that can change
// a sum (scaled logit >= -37.5) are compacted and sorted (bitonic, in the row's workspace), the
// rest add less than half an ulp to every running sum; when that pruning cannot be shown exact
// for a draw, the row is redone over every candidate, as the CPU sampler does.
//
// The exp is hd::ExpD (common/hd_math.h), as in worker/sampler.cc: the same tokens for the same
// draws.
// The draws come from the host (each request's splitmix64 stream), one per row. Plain C++ header.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "common/hd_math.h"

struct CUstream_st;

namespace flotilla::kernels::cuda {

// One sequence's sampling parameters and draw (device memory, one per row).
struct SampleRow {
  double uniform = 0.0;      // [0, 1): the request's next draw
  float temperature = 1.0f;  // <= 0: greedy
  float top_p = 1.0f;        // (0, 1]
  int32_t top_k = 0;         // 0: all
  int32_t greedy = 0;        // non-zero: argmax
};

struct SampleParams {
  const float* logits = nullptr;  // [rows, vocab] device, row stride ld
  int64_t ld = 0;
  int64_t rows = 0, vocab = 0;
  const SampleRow* row_params = nullptr;  // [rows] device
  uint64_t* workspace = nullptr;          // [rows, SampleWorkspaceElements(vocab)] device
  int32_t* tokens = nullptr;              // [rows] device
};

constexpr int kSampleThreads = 512;  // 128 registers a thread: the double exp and the sums fit
constexpr int64_t kSampleMaxVocab = int64_t(1) << 20;
// A candidate whose scaled logit (l - max) / T is below this adds nothing (worker/sampler.cc).
constexpr double kSampleNegligibleScaledLogit = -37.5;

// Per row: the sorted candidate keys and their probabilities, each padded to a power of two.
FLOTILLA_HD int64_t SampleWorkspaceElements(int64_t vocab) {
  int64_t pow2 = 1;
  while (pow2 < vocab) pow2 <<= 1;
  return 2 * pow2;  // keys, then as many doubles
}
const char* CheckSample(const SampleParams& p);
int LaunchSample(const SampleParams& p, CUstream_st* stream);

// ---- the pieces the kernel shares with the host (FLOTILLA_HD)

// A candidate as one integer whose ascending order is descending logit order, ties to the lower
// id (-0 and +0 equal): the descending key of the logit above the id.
FLOTILLA_HD uint64_t SamplePackedKey(float logit, int64_t id) {
  uint32_t u = F32ToBits(logit);
  if ((u & 0x7fffffffu) == 0) u = 0;  // -0 as +0
  const uint32_t ascending = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return uint64_t(~ascending) << 32 | uint64_t(uint32_t(id));
}

// The pick among the first n = min(k, m) sorted candidates `cand` (ids in the low 32 bits) with
// probabilities p (unnormalised, exp((l - max) / T)), k the top-k count and m how many candidates
// `cand` holds; -1 when the prefix cannot decide (the caller redoes the row over every candidate).
// worker/sampler.cc's Distribute, operation for operation.
FLOTILLA_HD int32_t SampleDistribute(const uint64_t* cand, const double* p, int64_t k, int64_t m,
                                     float top_p, double uniform) {
  const int64_t n = k < m ? k : m;
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum = hd::DAdd(sum, p[i]);
  int64_t keep = k;
  if (top_p < 1.0f) {
    double acc = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      acc = hd::DAdd(acc, hd::DDiv(p[i], sum));
      if (acc >= double(top_p)) {
        keep = i + 1;
        break;
      }
    }
    if (keep == k && n < k) return -1;
  }
  const int64_t summed = keep < n ? keep : n;
  double kept = 0.0;
  for (int64_t i = 0; i < summed; ++i) kept = hd::DAdd(kept, p[i]);
  const double u = hd::DMul(uniform, kept);
  double acc = 0.0;
  for (int64_t i = 0; i < summed; ++i) {
    acc = hd::DAdd(acc, p[i]);
    if (u < acc) return int32_t(uint32_t(cand[i]));
  }
  if (keep > n) return -1;
  return int32_t(uint32_t(cand[keep - 1]));
}

}  // namespace flotilla::kernels::cuda
