#include "sharding/shard_plan.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace flotilla {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

uint64_t NumBytes(const TensorSpec& spec) {
  uint64_t n = DTypeSize(spec.dtype);
  for (int64_t d : spec.shape) n *= uint64_t(d);
  return n;
}

// Bytes of one index along `dim` (the product of the later dimensions times the element size).
uint64_t InnerBytes(const TensorSpec& spec, int dim) {
  uint64_t n = DTypeSize(spec.dtype);
  for (size_t d = size_t(dim) + 1; d < spec.shape.size(); ++d) n *= uint64_t(spec.shape[d]);
  return n;
}

// The part [begin, end) of `spec` along `dim` (0 or 1) as a byte run.
ByteRun RunAlong(const TensorSpec& spec, int dim, IndexRange range) {
  const uint64_t inner = InnerBytes(spec, dim);
  ByteRun run;
  run.offset = uint64_t(range.begin) * inner;
  run.length = uint64_t(range.size()) * inner;
  run.count = 1;
  if (dim == 1) {
    run.count = uint64_t(spec.shape[0]);
    run.stride = uint64_t(spec.shape[1]) * inner;
  }
  if (run.count == 1 || run.stride == run.length) {  // contiguous: one run
    run.length *= run.count;
    run.count = 1;
    run.stride = run.length;
  }
  return run;
}

IndexRange WholeDim0(const TensorSpec& spec) { return {0, spec.shape.empty() ? 1 : spec.shape[0]}; }

}  // namespace

std::string ByteRunString(const ByteRun& run) {
  if (run.count == 1) return absl::StrCat("offset ", run.offset, ", ", run.length, " B");
  return absl::StrCat("offset ", run.offset, ", ", run.count, " x ", run.length, " B every ",
                      run.stride, " B");
}

const char* SplitKindName(SplitKind kind) {
  switch (kind) {
    case SplitKind::kReplicated:
      return "replicated";
    case SplitKind::kRows:
      return "rows";
    case SplitKind::kColumns:
      return "columns";
    case SplitKind::kExpert:
      return "expert";
  }
  return "?";
}

ShardPlan::ShardPlan(const ModelConfig& config, const Layout& layout, ExpertFormat experts)
    : config_(config),
      layout_(layout),
      expert_format_(experts),
      placement_(config.n_routed_experts, layout.num_workers) {}

absl::StatusOr<ShardPlan> ShardPlan::Make(const ModelConfig& config, const Layout& layout,
                                          ExpertFormat experts) {
  RETURN_IF_ERROR(config.Validate());
  RETURN_IF_ERROR(layout.Validate(config));
  ShardPlan plan(config, layout, experts);
  plan.inventory_ = ExpectedTensors(config, experts);
  plan.rules_.reserve(plan.inventory_.size());
  const int64_t tp = layout.tp;
  plan.dense_bytes_.assign(size_t(tp), 0);
  std::vector<uint64_t> per_expert(size_t(config.n_routed_experts), 0);
  for (size_t i = 0; i < plan.inventory_.size(); ++i) {
    const TensorSpec& spec = plan.inventory_[i];
    ASSIGN_OR_RETURN(Rule rule, plan.Classify(spec));
    plan.rules_.push_back(rule);
    const uint64_t bytes = NumBytes(spec);
    switch (rule.kind) {
      case SplitKind::kReplicated:
        plan.replicated_bytes_ += bytes;
        for (uint64_t& b : plan.dense_bytes_) b += bytes;
        break;
      case SplitKind::kExpert:
        plan.expert_bytes_ += bytes;
        per_expert[size_t(rule.expert_idx)] += bytes;
        break;
      case SplitKind::kRows:
      case SplitKind::kColumns:
        plan.split_bytes_ += bytes;
        for (int64_t t = 0; t < tp; ++t) {
          const IndexRange items = plan.AxisRange(rule.axis, t);
          if ((items.begin * rule.unit) % rule.block != 0) {
            return absl::InternalError(absl::StrCat(
                "tensor ", spec.name, ": tp rank ", t, " starts at ", SplitKindName(rule.kind), " ",
                items.begin * rule.unit, ", not on a ", rule.block, "-wide scale block"));
          }
          plan.dense_bytes_[size_t(t)] += plan.Slice(i, t).bytes();
        }
        break;
    }
  }
  plan.expert_prefix_.assign(per_expert.size() + 1, 0);
  for (size_t e = 0; e < per_expert.size(); ++e) {
    plan.expert_prefix_[e + 1] = plan.expert_prefix_[e] + per_expert[e];
  }
  return plan;
}

absl::StatusOr<ShardPlan::Rule> ShardPlan::Classify(const TensorSpec& spec) const {
  Rule rule;
  absl::string_view suffix = spec.name;
  const bool main_layer = absl::ConsumePrefix(&suffix, "layers.");
  if (main_layer || absl::ConsumePrefix(&suffix, "mtp.")) {
    const size_t dot = suffix.find('.');
    int64_t idx = -1;
    if (dot == absl::string_view::npos || !absl::SimpleAtoi(suffix.substr(0, dot), &idx) ||
        idx < 0) {
      return absl::InternalError(absl::StrCat("tensor ", spec.name, ": no layer index"));
    }
    rule.layer_id = main_layer ? idx : config_.num_hidden_layers + idx;
    suffix.remove_prefix(dot + 1);
  }

  if (rule.layer_id >= 0 && absl::ConsumePrefix(&suffix, "ffn.experts.")) {
    const size_t dot = suffix.find('.');
    if (dot == absl::string_view::npos ||
        !absl::SimpleAtoi(suffix.substr(0, dot), &rule.expert_idx) || rule.expert_idx < 0 ||
        rule.expert_idx >= config_.n_routed_experts) {
      return absl::InternalError(absl::StrCat("tensor ", spec.name, ": expert index not in [0, ",
                                              config_.n_routed_experts, ")"));
    }
    rule.kind = SplitKind::kExpert;
    return rule;
  }

  // The linear (or parameter) a tensor belongs to, and whether it is its 128x128 block scale.
  absl::string_view base = suffix;
  const bool scale = absl::ConsumeSuffix(&base, ".scale");
  if (!scale) absl::ConsumeSuffix(&base, ".weight");
  int64_t axis_total = 0;
  if (rule.layer_id < 0) {
    if (base == "embed" || base == "head") {
      rule.axis = Axis::kVocab;
      axis_total = config_.vocab_size;
    }
  } else if (base == "attn.wq_b" || base == "attn.attn_sink") {
    rule.axis = Axis::kHeads;
    axis_total = config_.num_attention_heads;
    rule.unit = base == "attn.wq_b" ? config_.head_dim : 1;
  } else if (base == "attn.wo_a") {
    // wo_b stays whole on every rank: the TP group all-gathers the wo_a outputs and applies the
    // full wo_b, which keeps tp > 1 bitwise equal to one process (docs/numerics.md).
    rule.axis = Axis::kGroups;
    axis_total = config_.o_groups;
    rule.unit = config_.o_lora_rank;
  } else if (base == "attn.indexer.wq_b" || base == "attn.indexer.weights_proj") {
    rule.axis = Axis::kIndexHeads;
    axis_total = config_.index_n_heads;
    rule.unit = base == "attn.indexer.wq_b" ? config_.index_head_dim : 1;
  }
  if (rule.axis == Axis::kNone || layout_.tp == 1) {
    rule.axis = Axis::kNone;
    return rule;  // replicated
  }
  rule.kind = rule.dim == 0 ? SplitKind::kRows : SplitKind::kColumns;
  rule.block = scale ? 128 : 1;
  const int64_t expected = CeilDiv(axis_total * rule.unit, rule.block);
  if (int64_t(spec.shape.size()) <= rule.dim || spec.shape[size_t(rule.dim)] != expected) {
    return absl::InternalError(absl::StrCat("tensor ", spec.name, " ", ShapeString(spec.shape),
                                            ": dim ", rule.dim, " expected ", expected,
                                            " to split it by ", axis_total, " parts"));
  }
  return rule;
}

IndexRange ShardPlan::AxisRange(Axis axis, int64_t tp_rank) const {
  switch (axis) {
    case Axis::kNone:
      return {0, 1};
    case Axis::kVocab:
      return SplitEvenly(config_.vocab_size, layout_.tp, tp_rank);
    case Axis::kHeads:
      return SplitEvenly(config_.num_attention_heads, layout_.tp, tp_rank);
    case Axis::kGroups:
      return SplitEvenly(config_.o_groups, layout_.tp, tp_rank);
    case Axis::kIndexHeads:
      return SplitEvenly(config_.index_n_heads, layout_.tp, tp_rank);
  }
  return {0, 0};
}

TensorSlice ShardPlan::Slice(size_t tensor_idx, int64_t tp_rank) const {
  const TensorSpec& spec = inventory_[tensor_idx];
  const Rule& rule = rules_[tensor_idx];
  TensorSlice s;
  s.name = spec.name;
  s.dtype = spec.dtype;
  s.shape = spec.shape;
  s.split = rule.kind;
  s.layer_id = rule.layer_id;
  s.global_expert_idx = rule.expert_idx;
  s.local_shape = spec.shape;
  if (rule.kind == SplitKind::kRows || rule.kind == SplitKind::kColumns) {
    const IndexRange items = AxisRange(rule.axis, tp_rank);
    const int64_t extent = spec.shape[size_t(rule.dim)];
    s.range = {items.begin * rule.unit / rule.block,
               std::min(extent, CeilDiv(items.end * rule.unit, rule.block))};
    s.local_shape[size_t(rule.dim)] = s.range.size();
    s.run = RunAlong(spec, rule.dim, s.range);
  } else {
    s.range = WholeDim0(spec);
    s.run = RunAlong(spec, 0, s.range);
  }
  return s;
}

RankPlan ShardPlan::Rank(int64_t rank, bool with_tensors) const {
  FLOTILLA_CHECK(rank >= 0 && rank < layout_.num_workers);
  RankPlan p;
  p.rank = rank;
  p.dp_group = layout_.DpGroupOf(rank);
  p.tp_rank = layout_.TpRankOf(rank);
  p.node = layout_.NodeOf(rank);
  p.heads = SplitEvenly(config_.num_attention_heads, layout_.tp, p.tp_rank);
  p.o_groups = SplitEvenly(config_.o_groups, layout_.tp, p.tp_rank);
  p.index_heads = SplitEvenly(config_.index_n_heads, layout_.tp, p.tp_rank);
  p.vocab = SplitEvenly(config_.vocab_size, layout_.tp, p.tp_rank);
  p.experts = placement_.ExpertsOf(rank);
  p.weight_bytes = WeightBytes(rank);
  if (!with_tensors) return p;
  for (size_t i = 0; i < inventory_.size(); ++i) {
    if (rules_[i].kind == SplitKind::kExpert && !p.experts.Contains(rules_[i].expert_idx)) {
      continue;
    }
    p.tensors.push_back(Slice(i, p.tp_rank));
  }
  return p;
}

uint64_t ShardPlan::WeightBytes(int64_t rank) const {
  FLOTILLA_CHECK(rank >= 0 && rank < layout_.num_workers);
  const IndexRange experts = placement_.ExpertsOf(rank);
  return dense_bytes_[size_t(layout_.TpRankOf(rank))] +
         (expert_prefix_[size_t(experts.end)] - expert_prefix_[size_t(experts.begin)]);
}

}  // namespace flotilla
