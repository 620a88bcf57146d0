#include "sharding/step_cost.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/match.h"
#include "sharding/capacity.h"

namespace flotilla {

double StepCost::Seconds(double bandwidth, double peak) const {
  return std::max(Bytes() / bandwidth, Flops() / peak);
}

namespace {

bool IsIntegerIndex(DType t) {
  return t == DType::kI32 || t == DType::kI64 || t == DType::kI16 || t == DType::kU8 ||
         t == DType::kBool;
}

// Weight values of a 2-D weight matrix's local part (packed FP4: two a byte), 0 for anything
// that is not a matrix applied to tokens (norms, biases, sinks, scales, index tables).
double MatrixValues(const TensorSlice& s) {
  if (s.local_shape.size() != 2 || IsIntegerIndex(s.dtype) || s.dtype == DType::kF8E8M0) return 0;
  if (absl::EndsWith(s.name, "scale")) return 0;
  double values = double(s.local_shape[0]) * double(s.local_shape[1]);
  if (s.dtype == DType::kI8) values *= 2;  // packed E2M1
  return values;
}

}  // namespace

StepCost EstimateStepCost(const ShardPlan& plan, const RankPlan& rank, const StepShape& shape) {
  const ModelConfig& c = plan.config();
  const Layout& layout = plan.layout();
  const double tokens = double(shape.sequences) * double(shape.tokens_per_seq);
  const double ep_tokens = shape.ep_tokens >= 0 ? double(shape.ep_tokens) : tokens * double(layout.dp());
  const double k = double(c.num_experts_per_tok), e = double(c.n_routed_experts);
  const double p_read = 1.0 - std::pow(1.0 - k / e, ep_tokens);
  // Rows each routed expert receives, in expectation.
  const double rows_per_expert = ep_tokens * k / e;
  const double tp = double(layout.tp);

  StepCost cost;
  for (const TensorSlice& s : rank.tensors) {
    if (s.layer_id >= c.num_hidden_layers && !shape.mtp) continue;
    const double bytes = double(s.bytes());
    const double values = MatrixValues(s);
    if (s.global_expert_idx >= 0) {
      cost.expert_bytes += bytes * p_read;
      cost.expert_flops += 2 * values * rows_per_expert;
      continue;
    }
    if (s.name == "embed.weight" || absl::StrContains(s.name, "tid2eid")) {
      const double row_bytes = bytes / double(std::max<int64_t>(1, s.local_shape[0]));
      cost.dense_bytes += std::min(bytes, row_bytes * tokens);
      continue;
    }
    cost.dense_bytes += bytes;
    if (s.name == "head.weight" || absl::EndsWith(s.name, ".head.weight")) {
      cost.linear_flops += 2 * values * double(shape.sequences);
    } else if (absl::StrContains(s.name, "shared_experts")) {
      cost.linear_flops += 2 * values * std::ceil(tokens / tp);
    } else {
      cost.linear_flops += 2 * values * tokens;
    }
  }

  // KV and attention, per sequence and layer. Positions attended by the step's middle token.
  const double main_entry = double(MainKvEntryBytes(c)), key = double(IndexerKeyBytes(c));
  const int64_t layers = c.num_hidden_layers + (shape.mtp ? c.num_nextn_predict_layers : 0);
  const double heads = double(rank.heads.size()), index_heads = double(rank.index_heads.size());
  const double seen = double(shape.context) + double(shape.tokens_per_seq);
  for (int64_t layer = 0; layer < layers; ++layer) {
    const int64_t m = c.RatioOf(layer);
    const double window = std::min(seen, double(c.sliding_window));
    double attended = window;  // keys per query
    double entries_read = window;
    if (m > 0) {
      const double compressed = std::floor(double(shape.context) / double(m));
      if (m == 4) {
        const double picked = std::min(double(c.index_topk), compressed);
        attended += picked;
        // A chunk's queries pick different entries: at most all of them are read.
        entries_read += std::min(compressed, picked * double(shape.tokens_per_seq));
        cost.kv_bytes += double(shape.sequences) * compressed * key;
        cost.indexer_flops +=
            tokens * index_heads * 2 * double(c.index_head_dim) * compressed;
      } else {
        attended += compressed;
        entries_read += compressed;
      }
    }
    cost.kv_bytes += double(shape.sequences) * entries_read * main_entry;
    cost.attention_flops += tokens * heads * 4 * double(c.head_dim) * attended;
  }
  return cost;
}

}  // namespace flotilla
