#include "sharding/step_workspace.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "sharding/capacity.h"

namespace flotilla {
namespace {

constexpr int64_t kCsaRatio = 4;  // ratio 4 = CSA (overlapping compressor + indexer)

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

uint64_t StepWorkspaceLayout::Bytes() const {
  uint64_t b = 0;
  b += 2 * uint64_t(5 * streams + 6 * hidden + 2 * mtp_streams + q_lora + query + kv + index_query +
                    index_weights + gather + gather_stage + ring + entries + block_keys + attn_out +
                    wo_a_out + compressed + routed + expert_in + expert_out + shared_out +
                    expert_gate_up + expert_act);
  // tp_sum twice: in backend memory and its host staging.
  b += 4 * uint64_t(hc_post + hc_comb + 2 * tp_sum + head_part + head_stage + head_all +
                    2 * compressor_kv + 2 * compressor_state + pooled + pick_scores +
                    router_logits + route_weights + expert_rows);
  // Rows: 8 int32 on the host (token, chunk and experts of the step and MTP rows, picks per row,
  // the picked rows) and 5 in backend memory (token and experts of the step and MTP rows, the
  // picked rows); 2 int64 on the host (positions of the step and MTP rows) and 3 in backend
  // memory (positions of the step and MTP rows, entry positions).
  b += 4 * uint64_t((8 + 5) * row_i32 + picks + entry_slot + page_ids + route_idx + expert_order);
  b += 8 * uint64_t((2 + 3) * row_i64 + expert_offsets + route_idx);  // + tid2eid rows (int64)
  b += uint64_t(2 * limits.sequences * kChunkRecordBytes);
  b += uint64_t(3 * (act_q + act_scale) + packed);
  if (limits.ep_size > 1) {
    b += exchange.HostExchangeBytes() + exchange.dispatch_recv_bytes;
    b += 2 * uint64_t(2 * exchange_replies + exchange_routed + moe_slice + moe_gather);
    b += 4 * uint64_t(2 * exchange_order + 2 * exchange_copies) + 8 * uint64_t(expert_offsets);
    b += uint64_t(exchange_send);
  }
  return b;
}

absl::StatusOr<StepWorkspaceLayout> MakeStepWorkspaceLayout(const ModelConfig& c,
                                                            const StepLimits& limits) {
  StepWorkspaceLayout w;
  StepLimits& l = w.limits;
  l = limits;
  if (l.max_context == 0) l.max_context = c.max_position_embeddings;
  if (l.experts_per_token == 0) l.experts_per_token = c.num_experts_per_tok;
  const std::pair<const char*, int64_t> checks[] = {{"tokens per step", l.tokens},
                                                    {"sequences per step", l.sequences},
                                                    {"logit rows per pass", l.logit_rows},
                                                    {"indexer block keys", l.indexer_block_keys},
                                                    {"longest context", l.max_context},
                                                    {"experts per token", l.experts_per_token},
                                                    {"tensor-parallel size", l.tp_size},
                                                    {"expert-parallel size", l.ep_size},
                                                    {"exchange rows per round", l.exchange_rows}};
  for (const auto& [name, value] : checks) {
    if (value < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("step workspace: ", name, " is ", value, "; expected at least 1"));
    }
  }
  l.logit_rows = std::min(l.logit_rows, l.tokens);
  if (l.sequences > l.tokens) {
    return absl::InvalidArgumentError(absl::StrCat("step workspace: sequences per step (",
                                                   l.sequences, ") exceed tokens per step (",
                                                   l.tokens, ")"));
  }
  const int64_t T = l.tokens, K = l.experts_per_token, tp = l.tp_size;
  const int64_t d = c.hidden_size, hc = c.hc_mult, hd = c.head_dim, ihd = c.index_head_dim;
  const int64_t ctx = l.max_context, topk = c.index_topk;
  w.heads = CeilDiv(c.num_attention_heads, tp);
  w.o_groups = CeilDiv(c.o_groups, tp);
  w.index_heads = CeilDiv(c.index_n_heads, tp);
  w.vocab = CeilDiv(c.vocab_size, tp);

  const int64_t layers = c.num_hidden_layers + c.num_nextn_predict_layers;
  for (int64_t i = 0; i < layers; ++i) {
    const int64_t m = c.RatioOf(i);
    if (m == 0) continue;
    const bool csa = m == kCsaRatio;
    w.compressed_read = std::max(w.compressed_read, csa ? std::min(ctx / m, T * topk) : ctx / m);
    const int64_t width = csa ? 2 * hd : hd, rows = csa ? 2 * m : m;
    w.compressor_width = std::max(w.compressor_width, width);
    w.compressor_rows = std::max(w.compressor_rows, rows);
    w.compressor_state = std::max(w.compressor_state, rows * width);
    if (csa) {
      w.compressor_width = std::max(w.compressor_width, 2 * ihd);
      w.compressor_state = std::max(w.compressor_state, 2 * m * 2 * ihd);
    }
  }
  w.expert_rows = T;
  const int64_t inter = c.moe_intermediate_size * std::max<int64_t>(1, c.n_shared_experts);

  w.streams = T * hc * d;
  w.hidden = T * d;
  w.mtp_streams = c.num_nextn_predict_layers > 0 ? T * hc * d : 0;
  w.q_lora = T * c.q_lora_rank;
  w.query = T * w.heads * hd;
  w.kv = T * hd;
  w.index_query = T * c.index_n_heads * ihd;
  w.index_weights = T * c.index_n_heads;
  w.gather = tp > 1 ? tp * T * std::max(w.index_heads * ihd, w.o_groups * c.o_lora_rank) : 0;
  w.gather_stage = tp > 1 ? w.gather + w.gather / tp : 0;
  w.ring = c.sliding_window * hd;
  w.entries = w.compressed_read * hd;
  w.block_keys = l.indexer_block_keys * ihd;
  w.attn_out = T * w.heads * hd;
  w.wo_a_out = T * tp * w.o_groups * c.o_lora_rank;
  w.compressed = T * std::max(hd, ihd);
  w.routed = T * K * d;
  w.expert_in = w.expert_rows * d;
  w.expert_out = w.expert_rows * d;
  w.shared_out = T * d;
  w.expert_gate_up = w.expert_rows * 2 * inter;
  w.expert_act = w.expert_rows * inter;

  w.hc_post = T * hc;
  w.hc_comb = T * hc * hc;
  w.tp_sum = tp > 1 ? T * d : 0;
  w.head_part = l.logit_rows * w.vocab;
  w.head_stage = tp > 1 ? l.logit_rows * w.vocab : 0;
  w.head_all = tp > 1 ? tp * l.logit_rows * w.vocab : 0;
  w.compressor_kv = T * w.compressor_width;
  w.pooled = T * std::max(hd, ihd);
  w.pick_scores = T * topk;
  w.router_logits = T * c.n_routed_experts;
  w.route_weights = T * K + K;

  w.row_i32 = T;
  w.row_i64 = T;
  w.picks = T * topk;
  w.entry_slot = ctx / kCsaRatio + w.compressed_read + 1;
  w.page_ids = ctx / kCsaRatio;  // a page holds at least one entry
  w.route_idx = T * K + K;
  w.expert_order = T * K;
  w.expert_offsets = c.n_routed_experts + 1;

  // The widest input of a linear layer that quantises its input, times its most rows: the MTP
  // h_proj runs on hc rows per token.
  const int64_t linear_in =
      std::max({hc * d, c.q_lora_rank, inter, tp * w.o_groups * c.o_lora_rank});
  w.act_q = T * linear_in;
  w.act_scale = w.act_q / 128;
  w.packed = std::max({c.sliding_window, w.compressed_read, T}) * MainKvEntryBytes(c);
  w.packed = std::max(w.packed, std::max(l.indexer_block_keys, T) * IndexerKeyBytes(c));
  if (l.ep_size > 1) {
    const ExpertPlacement placement(c.n_routed_experts, l.ep_size);
    absl::StatusOr<ExchangeLayout> ex =
        ExchangeLayout::Make(c, placement, l.ep_rank, std::min(l.exchange_rows, CeilDiv(T, tp)), K);
    if (!ex.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("step workspace: ", ex.status().message()));
    }
    w.exchange = *ex;
    const int64_t received = l.ep_size * w.exchange.recv_capacity_per_source;
    w.exchange_replies = received * d;
    w.exchange_order = received;
    w.exchange_send = CeilDiv(T, tp) * w.exchange.payload_bytes;
    w.exchange_copies = CeilDiv(T, tp) * K;
    w.exchange_routed = w.exchange.rows_per_round * K * d;
    w.moe_slice = tp > 1 ? CeilDiv(T, tp) * d : 0;
    w.moe_gather = tp > 1 ? tp * CeilDiv(T, tp) * d : 0;
  }
  return w;
}

}  // namespace flotilla
