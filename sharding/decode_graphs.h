// Which steps a GPU worker replays as a captured CUDA graph, and at what batch size
// (docs/gpu-model.md). Pure; unit-tested on the CPU.
//
// A decode step is captured once per batch-size bucket and replayed with new inputs (token ids,
// positions, page tables, sampling parameters, each row's experts-per-token) copied into the
// graph's fixed input buffers first. A batch of n rows replays the smallest bucket >= n; the
// bucket's extra rows are padding: they read a scratch page, write their KV to it, route with
// weight zero and their sampled tokens are dropped, so real rows see exactly what an eager step
// of n rows computes (every op's rows are independent, and the FP8 GEMMs pin one algorithm per
// weight shape, so the row count does not change a row's result). Buckets: the powers of two up
// to `stride`, then multiples of `stride`, then the largest batch itself.
// Prefill chunks, a sequence's first step and batches beyond the largest bucket run eagerly.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/step_plan.h"

namespace flotilla {

class DecodeGraphBuckets {
 public:
  // max_batch: most decode rows a worker runs in one step (the scheduler's
  // max_running_per_group); stride: spacing of the buckets above it. INVALID_ARGUMENT names the
  // value when either is below 1.
  static absl::StatusOr<DecodeGraphBuckets> Make(int64_t max_batch, int64_t stride = 8);

  const std::vector<int64_t>& sizes() const { return sizes_; }
  int64_t max_batch() const { return sizes_.back(); }
  // The smallest bucket holding `rows` rows; nullopt for 0 rows or more than max_batch().
  std::optional<int64_t> BucketFor(int64_t rows) const;

 private:
  std::vector<int64_t> sizes_;
};

// The graph a DP group's part of `plan` replays: its bucket and the rows it holds.
struct GraphChoice {
  int64_t bucket = 0;
  int64_t rows = 0;
  int64_t padding() const { return bucket - rows; }
};

// nullopt with `*why` set when the group's part of the step runs eagerly; `why` names the
// sequence and the reason ("sequence 7 prefills 512 tokens", "sequence 3 starts", "batch 80
// is beyond the largest graph, 64", "no sequence of this group").
std::optional<GraphChoice> ChooseDecodeGraph(const StepPlan& plan, int32_t dp_group,
                                             const DecodeGraphBuckets& buckets, std::string* why);

}  // namespace flotilla
