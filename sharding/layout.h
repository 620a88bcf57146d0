// The rank layout of the workers (design.md §2): W = dp x tp workers; worker rank r is in DP
// (attention) group r / tp at TP rank r % tp; every worker is also one EP rank (ep = W).
//
// Worker ranks here are 0..W-1 (the MPI world rank of a worker is 1 + its worker rank: rank 0
// is the coordinator). Everything in this file is a pure function of the config and the layout.
#pragma once

#include <cstdint>
#include <string>

#include "common/model_config.h"
#include "common/status.h"

namespace flotilla {

// A half-open index range [begin, end).
struct IndexRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
  bool empty() const { return end <= begin; }
  bool Contains(int64_t idx) const { return idx >= begin && idx < end; }
  bool operator==(const IndexRange&) const = default;
};

// "[begin, end)"
std::string RangeString(const IndexRange& range);

// Part `part_idx` of `total` items cut into `num_parts` contiguous parts; the first
// total % num_parts parts get one more item. Requires num_parts >= 1, 0 <= part_idx < num_parts.
IndexRange SplitEvenly(int64_t total, int64_t num_parts, int64_t part_idx);

struct Layout {
  int64_t num_workers = 1;    // W: worker ranks (GPUs, or CPU processes)
  int64_t tp = 1;             // tensor-parallel degree (attention heads, vocab)
  int64_t nodes = 0;          // 0: not given
  int64_t gpus_per_node = 0;  // 0: not given

  // W = nodes x gpus_per_node.
  static Layout ForCluster(int64_t nodes, int64_t gpus_per_node, int64_t tp);

  // Refuses impossible layouts with a message saying what was expected: W >= 1, tp >= 1,
  // W a multiple of tp, tp dividing num_attention_heads, o_groups, index_n_heads and at most
  // vocab_size, W == nodes x gpus_per_node when those are given, and, for FP8 checkpoints,
  // every head/group split falling on a 128-row (or column) scale-block boundary.
  absl::Status Validate(const ModelConfig& config) const;

  int64_t dp() const { return num_workers / tp; }  // DP (attention) groups
  int64_t ep() const { return num_workers; }       // EP ranks
  int64_t DpGroupOf(int64_t rank) const { return rank / tp; }
  int64_t TpRankOf(int64_t rank) const { return rank % tp; }
  int64_t RankOf(int64_t dp_group, int64_t tp_rank) const { return dp_group * tp + tp_rank; }
  // Node of a worker rank (ranks fill nodes in order); -1 when gpus_per_node is not given.
  int64_t NodeOf(int64_t rank) const { return gpus_per_node > 0 ? rank / gpus_per_node : -1; }

  std::string ToString() const;  // "W=32 (dp 4 x tp 8), 4 nodes x 8 GPUs"
};

// Where a routed expert lives: one contiguous range of every MoE layer's experts per EP rank
// (the same range in every layer, MTP included). n_routed_experts need not be a multiple of W:
// the first E % W ranks own one expert more; when W > E the last W - E ranks own none.
struct ExpertSlot {
  int64_t rank = 0;              // EP rank = worker rank
  int64_t local_expert_idx = 0;  // index among the rank's own experts
  bool operator==(const ExpertSlot&) const = default;
};

class ExpertPlacement {
 public:
  ExpertPlacement(int64_t num_experts, int64_t num_ranks);

  int64_t num_experts() const { return num_experts_; }
  int64_t num_ranks() const { return num_ranks_; }
  IndexRange ExpertsOf(int64_t rank) const;  // global expert indices owned by `rank`
  ExpertSlot Locate(int64_t global_expert_idx) const;
  int64_t GlobalExpertIdx(int64_t rank, int64_t local_expert_idx) const;

 private:
  int64_t num_experts_;
  int64_t num_ranks_;
  int64_t base_;   // E / W
  int64_t extra_;  // E % W: ranks [0, extra_) own base_ + 1
};

}  // namespace flotilla
