#include "sharding/layout.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace flotilla {
namespace {

bool HasCsaLayer(const ModelConfig& c) {
  for (int64_t l = 0; l < c.num_hidden_layers + c.num_nextn_predict_layers; ++l) {
    if (c.RatioOf(l) == 4) return true;
  }
  return false;
}

// `units` heads or groups of `unit` rows (or columns) each of an FP8 128x128-block weight, split
// `tp` ways: "" when every rank's part starts on a scale block, else the problem.
std::string BlockProblem(const char* linear, const char* dim_name, const char* unit_name,
                         int64_t units, int64_t unit, int64_t tp) {
  const int64_t per_rank = units / tp * unit;
  if (per_rank % 128 == 0) return "";
  return absl::StrCat("tensor layers.L.", linear, ".weight: tp ", tp, " gives each rank ",
                      units / tp, " ", unit_name, " = ", per_rank, " ", dim_name,
                      ", not a multiple of 128, so its FP8 128x128 scale blocks (", linear,
                      ".scale) cannot be split there");
}

// Problems of one tp degree against the model (tp >= 1), without the W-related checks.
std::vector<std::string> TpProblems(const ModelConfig& c, int64_t tp) {
  std::vector<std::string> out;
  auto divides = [&](const char* field, int64_t value) {
    if (value % tp != 0) {
      out.push_back(absl::StrCat("tp ", tp, " does not divide ", field, " (", value, ")"));
    }
  };
  const bool csa = HasCsaLayer(c);
  divides("num_attention_heads", c.num_attention_heads);
  divides("o_groups", c.o_groups);
  divides("index_n_heads", c.index_n_heads);
  if (c.vocab_size < tp) {
    out.push_back(absl::StrCat("tp ", tp, " exceeds vocab_size (", c.vocab_size,
                               "): a rank would hold no vocabulary rows"));
  }
  if (!out.empty() || !c.Quantized()) return out;
  for (const std::string& p :
       {BlockProblem("attn.wq_b", "rows", "query heads", c.num_attention_heads, c.head_dim, tp),
        BlockProblem("attn.wo_a", "rows", "output groups", c.o_groups, c.o_lora_rank, tp),
        csa ? BlockProblem("attn.indexer.wq_b", "rows", "indexer heads", c.index_n_heads,
                           c.index_head_dim, tp)
            : std::string()}) {
    if (!p.empty()) out.push_back(p);
  }
  return out;
}

}  // namespace

std::string RangeString(const IndexRange& range) {
  return absl::StrCat("[", range.begin, ", ", range.end, ")");
}

IndexRange SplitEvenly(int64_t total, int64_t num_parts, int64_t part_idx) {
  FLOTILLA_CHECK(num_parts >= 1 && part_idx >= 0 && part_idx < num_parts && total >= 0);
  const int64_t base = total / num_parts, extra = total % num_parts;
  const int64_t begin = part_idx * base + std::min(part_idx, extra);
  return {begin, begin + base + (part_idx < extra ? 1 : 0)};
}

Layout Layout::ForCluster(int64_t nodes, int64_t gpus_per_node, int64_t tp) {
  Layout l;
  l.num_workers = nodes * gpus_per_node;
  l.tp = tp;
  l.nodes = nodes;
  l.gpus_per_node = gpus_per_node;
  return l;
}

absl::Status Layout::Validate(const ModelConfig& c) const {
  std::vector<std::string> problems;
  if (num_workers < 1) {
    problems.push_back(absl::StrCat("num_workers is ", num_workers, "; expected >= 1"));
  }
  if (tp < 1) problems.push_back(absl::StrCat("tp is ", tp, "; expected >= 1"));
  if (nodes < 0 || gpus_per_node < 0 || (nodes == 0) != (gpus_per_node == 0)) {
    problems.push_back(absl::StrCat("nodes ", nodes, " and gpus_per_node ", gpus_per_node,
                                    "; expected both > 0, or both 0 (not given)"));
  } else if (nodes > 0 && nodes * gpus_per_node != num_workers) {
    problems.push_back(absl::StrCat("num_workers is ", num_workers, "; expected nodes x ",
                                    "gpus_per_node = ", nodes, " x ", gpus_per_node, " = ",
                                    nodes * gpus_per_node));
  }
  if (tp >= 1) {
    if (num_workers >= 1 && num_workers % tp != 0) {
      problems.push_back(absl::StrCat("num_workers ", num_workers, " is not a multiple of tp ", tp,
                                      " (W = dp x tp)"));
    }
    std::vector<std::string> model = TpProblems(c, tp);
    if (!model.empty()) {
      std::vector<int64_t> valid;
      const int64_t limit = std::max<int64_t>(c.num_attention_heads, 1);
      for (int64_t t = 1; t <= limit; ++t) {
        if (TpProblems(c, t).empty()) valid.push_back(t);
      }
      model.back() += absl::StrCat("; valid tp for this model: {", absl::StrJoin(valid, ", "), "}");
      problems.insert(problems.end(), model.begin(), model.end());
    }
  }
  if (problems.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("layout ", ToString(), ": ", absl::StrJoin(problems, "; ")));
}

std::string Layout::ToString() const {
  std::string s = absl::StrCat("W=", num_workers);
  if (tp >= 1 && num_workers % tp == 0)
    absl::StrAppend(&s, " (dp ", dp(), " x tp ", tp, ")");
  else
    absl::StrAppend(&s, " (tp ", tp, ")");
  if (nodes > 0) {
    absl::StrAppend(&s, ", ", nodes, nodes == 1 ? " node x " : " nodes x ", gpus_per_node,
                    gpus_per_node == 1 ? " GPU" : " GPUs");
  }
  return s;
}

ExpertPlacement::ExpertPlacement(int64_t num_experts, int64_t num_ranks)
    : num_experts_(num_experts), num_ranks_(num_ranks) {
  FLOTILLA_CHECK(num_experts >= 0 && num_ranks >= 1);
  base_ = num_experts / num_ranks;
  extra_ = num_experts % num_ranks;
}

IndexRange ExpertPlacement::ExpertsOf(int64_t rank) const {
  return SplitEvenly(num_experts_, num_ranks_, rank);
}

ExpertSlot ExpertPlacement::Locate(int64_t global_expert_idx) const {
  FLOTILLA_CHECK(global_expert_idx >= 0 && global_expert_idx < num_experts_);
  const int64_t boundary = extra_ * (base_ + 1);  // experts owned by the larger ranks
  if (global_expert_idx < boundary) {
    return {global_expert_idx / (base_ + 1), global_expert_idx % (base_ + 1)};
  }
  const int64_t rest = global_expert_idx - boundary;  // base_ > 0 here
  return {extra_ + rest / base_, rest % base_};
}

int64_t ExpertPlacement::GlobalExpertIdx(int64_t rank, int64_t local_expert_idx) const {
  const IndexRange mine = ExpertsOf(rank);
  FLOTILLA_CHECK(local_expert_idx >= 0 && local_expert_idx < mine.size());
  return mine.begin + local_expert_idx;
}

}  // namespace flotilla
