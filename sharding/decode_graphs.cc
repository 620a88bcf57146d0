#include "sharding/decode_graphs.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace flotilla {

absl::StatusOr<DecodeGraphBuckets> DecodeGraphBuckets::Make(int64_t max_batch, int64_t stride) {
  if (max_batch < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("decode graphs: largest batch %d; expected at least 1", max_batch));
  }
  if (stride < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("decode graphs: bucket stride %d; expected at least 1", stride));
  }
  DecodeGraphBuckets b;
  for (int64_t s = 1; s < stride && s < max_batch; s *= 2) b.sizes_.push_back(s);
  for (int64_t s = stride; s < max_batch; s += stride) b.sizes_.push_back(s);
  b.sizes_.push_back(max_batch);
  return b;
}

std::optional<int64_t> DecodeGraphBuckets::BucketFor(int64_t rows) const {
  if (rows < 1) return std::nullopt;
  const auto it = std::lower_bound(sizes_.begin(), sizes_.end(), rows);
  if (it == sizes_.end()) return std::nullopt;
  return *it;
}

std::optional<GraphChoice> ChooseDecodeGraph(const StepPlan& plan, int32_t dp_group,
                                             const DecodeGraphBuckets& buckets, std::string* why) {
  int64_t rows = 0;
  for (const StepSequence& s : plan.seqs) {
    if (s.dp_group != dp_group) continue;
    if (s.start_pos == 0) {
      *why = absl::StrFormat("sequence %d starts", s.seq_id);
      return std::nullopt;
    }
    if (s.tokens.size() != 1) {
      *why = absl::StrFormat("sequence %d prefills %d tokens", s.seq_id, s.tokens.size());
      return std::nullopt;
    }
    if (!s.sample) {
      *why = absl::StrFormat("sequence %d does not sample", s.seq_id);
      return std::nullopt;
    }
    ++rows;
  }
  if (rows == 0) {
    *why = "no sequence of this group";
    return std::nullopt;
  }
  const std::optional<int64_t> bucket = buckets.BucketFor(rows);
  if (!bucket) {
    *why = absl::StrFormat("batch %d is beyond the largest graph, %d", rows, buckets.max_batch());
    return std::nullopt;
  }
  why->clear();
  return GraphChoice{*bucket, rows};
}

}  // namespace flotilla
