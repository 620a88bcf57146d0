// The shard plan: for every worker rank, its heads, output groups, indexer heads, vocabulary
// slice and experts, and the exact tensors and byte ranges it reads from the checkpoint
// (design.md §2, spec §13.1). Pure: a function of the config, the layout and the expert format.
//
// Splits (scales of FP8 128x128-block weights follow their weight; Layout::Validate guarantees
// every split falls on a 128 boundary):
//   embed.weight, head.weight              rows of the rank's vocabulary slice (tp > 1)
//   attn.wq_b (+scale), attn.attn_sink      rows of the local query heads
//   attn.wo_a (+scale)                      rows of the local output groups
//   attn.wo_b (+scale)                      columns (input dim) of the local output groups
//   attn.indexer.wq_b (+scale),
//   attn.indexer.weights_proj               rows of the local indexer heads
//   ffn.experts.E.*                         whole, only on the EP rank owning expert E
//   everything else                         whole on every rank (replicated)
// With tp = 1 every split tensor is whole, so it is reported as replicated.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/model_config.h"
#include "common/model_tensors.h"
#include "common/status.h"
#include "sharding/layout.h"

namespace flotilla {

// Bytes [offset + i * stride, offset + i * stride + length) for i in [0, count), relative to
// the start of a tensor's data. A contiguous range has count 1 and stride == length.
struct ByteRun {
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t stride = 0;
  uint64_t count = 0;
  uint64_t bytes() const { return length * count; }
  // One past the last byte read (offset when nothing is read).
  uint64_t end() const { return count == 0 ? offset : offset + (count - 1) * stride + length; }
  bool operator==(const ByteRun&) const = default;
};

std::string ByteRunString(const ByteRun& run);  // "offset 0, 4096 x 1024 B every 8192 B"

enum class SplitKind {
  kReplicated,  // whole tensor on every rank
  kRows,        // a dim-0 slice: vocabulary rows, query heads, output groups, indexer heads
  kColumns,     // a dim-1 slice: attn.wo_b's input features of the local output groups
  kExpert,      // whole tensor, only on the rank owning the routed expert
};
const char* SplitKindName(SplitKind kind);  // "replicated", "rows", "columns", "expert"

// One tensor a rank reads.
struct TensorSlice {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // the whole tensor, as stored in the checkpoint
  SplitKind split = SplitKind::kReplicated;
  IndexRange range;                  // kRows: rows taken; kColumns: columns taken; else dim 0
  std::vector<int64_t> local_shape;  // shape of the rank's part (row-major, as read)
  ByteRun run;                       // what to read, relative to the tensor's data start
  int64_t layer_id = -1;             // -1 for global tensors; num_hidden_layers + i for MTP i
  int64_t global_expert_idx = -1;    // kExpert only
  uint64_t bytes() const { return run.bytes(); }
};

struct RankPlan {
  int64_t rank = 0;        // worker rank, 0..W-1 (also the EP rank)
  int64_t dp_group = 0;    // rank / tp
  int64_t tp_rank = 0;     // rank % tp
  int64_t node = -1;       // -1 when the layout gives no nodes
  IndexRange heads;        // query heads (attn.wq_b rows / head_dim, attn_sink)
  IndexRange o_groups;     // output groups (attn.wo_a rows and attn.wo_b columns / o_lora_rank)
  IndexRange index_heads;  // lightning-indexer heads
  IndexRange vocab;        // embed.weight / head.weight rows
  IndexRange experts;      // routed experts owned, the same range in every MoE layer
  std::vector<TensorSlice> tensors;  // in checkpoint inventory order
  uint64_t weight_bytes = 0;         // sum of tensors[i].bytes()
};

class ShardPlan {
 public:
  // Validates the layout against the config (Layout::Validate) and classifies every tensor of
  // ExpectedTensors(config, experts).
  static absl::StatusOr<ShardPlan> Make(const ModelConfig& config, const Layout& layout,
                                        ExpertFormat experts);

  const ModelConfig& config() const { return config_; }
  const Layout& layout() const { return layout_; }
  ExpertFormat expert_format() const { return expert_format_; }
  const ExpertPlacement& placement() const { return placement_; }
  int64_t num_ranks() const { return layout_.num_workers; }
  const std::vector<TensorSpec>& inventory() const { return inventory_; }

  // The ranges of `rank` (0 <= rank < W); with_tensors: also the tensor list (a few thousand
  // entries for V4-Flash, built on each call).
  RankPlan Rank(int64_t rank, bool with_tensors = true) const;
  uint64_t WeightBytes(int64_t rank) const;

  uint64_t CheckpointBytes() const { return replicated_bytes_ + split_bytes_ + expert_bytes_; }
  uint64_t ReplicatedBytes() const { return replicated_bytes_; }  // held by every rank
  uint64_t SplitBytes() const { return split_bytes_; }    // whole split tensors: once per DP group
  uint64_t ExpertBytes() const { return expert_bytes_; }  // all routed experts: once overall

 private:
  enum class Axis { kNone, kVocab, kHeads, kGroups, kIndexHeads };
  struct Rule {
    SplitKind kind = SplitKind::kReplicated;
    Axis axis = Axis::kNone;
    int dim = 0;        // split dimension (kRows 0, kColumns 1)
    int64_t unit = 1;   // weight rows/columns per axis item (head_dim for wq_b, ...)
    int64_t block = 1;  // 128 for the scale of an FP8 weight, else 1
    int64_t layer_id = -1;
    int64_t expert_idx = -1;
  };

  ShardPlan(const ModelConfig& config, const Layout& layout, ExpertFormat experts);
  absl::StatusOr<Rule> Classify(const TensorSpec& spec) const;
  IndexRange AxisRange(Axis axis, int64_t tp_rank) const;
  TensorSlice Slice(size_t tensor_idx, int64_t tp_rank) const;

  ModelConfig config_;
  Layout layout_;
  ExpertFormat expert_format_;
  ExpertPlacement placement_;
  std::vector<TensorSpec> inventory_;
  std::vector<Rule> rules_;              // one per inventory_ entry
  std::vector<uint64_t> dense_bytes_;    // non-expert bytes of each tp_rank
  std::vector<uint64_t> expert_prefix_;  // [e]: bytes of experts [0, e), all layers
  uint64_t replicated_bytes_ = 0;
  uint64_t split_bytes_ = 0;
  uint64_t expert_bytes_ = 0;
};

}  // namespace flotilla
