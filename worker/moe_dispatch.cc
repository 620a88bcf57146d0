// Expert-parallel MoE (design.md §2): each TP rank routes 1/tp of its DP group's tokens,
// dispatches their activations to the ranks owning the chosen experts (all-to-all-v), the
// owners run their experts over what they received, the outputs come back (all-to-all-v), and
// each token's routed sum is formed in increasing expert id, as in one process. The TP group
// then all-gathers the token slices. Every result is bitwise that of a single process.
#include <algorithm>
#include <cstddef>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "worker/expert_exchange.h"
#include "worker/model_internal.h"

namespace flotilla {

namespace {

// This rank's experts over what arrived in one round, grouped by local expert in arrival order:
// the replies, in arrival order, into ws.exchange_replies.
absl::Status ExpertsOnReceived(const MoeWeights& mw, bool quantized, const ExpertExchange& ex,
                               StepWorkspace& ws, int64_t d, float limit) {
  const int64_t num_local = int64_t(mw.experts.size());
  int64_t* offsets = Use(ws.expert_offsets, num_local + 1);
  int32_t* order = Use(ws.exchange_order, ex.num_received());
  RETURN_IF_ERROR(ex.GroupByLocalExpert(num_local, offsets, order));
  bf16* reply = Use(ws.exchange_replies, ex.num_received() * d);
  // The records: header (token, slot, local expert, weight), then the payload.
  const uint8_t* records = ex.records();
  const int64_t rec = ex.record_bytes();
  ExpertRows in;
  if (quantized) {
    in.q = records + ExchangeLayout::kHeaderBytes;
    in.ld_q = rec;
    in.scale = records + ExchangeLayout::kHeaderBytes + d;
    in.ld_scale = rec;
  } else {
    in.x = records + ExchangeLayout::kHeaderBytes;
    in.ld_x = rec;
  }
  in.weight = records + offsetof(ExpertExchange::Header, weight);
  in.ld_weight = rec;
  GroupedExperts(mw.experts, in, order, offsets, ex.num_received(), limit, reply, d, ws);
  return absl::OkStatus();
}

}  // namespace

absl::Status Model::MoeDistributed(const MoeWeights& mw, const Rows& rows, const bf16* x,
                                   bf16* out) const {
  const ModelConfig& c = config_;
  const int64_t n = rows.n, d = c.hidden_size, k = top_k_;
  const float limit = float(c.swiglu_limit);

  // This TP rank's slice of the group's tokens.
  const IndexRange slice = SplitEvenly(n, par_.tp_size, par_.tp_rank);
  const int64_t ns = slice.size();
  const bf16* xs = x + slice.begin * d;
  StepWorkspace& ws = *ws_;
  std::vector<int32_t>& idx = ws.route_idx;
  std::vector<float>& weights = ws.route_weights;
  RouteTokens(c, mw, rows.token.data() + slice.begin, rows.experts.data() + slice.begin, ns, k, xs,
              &ws.router_logits, &ws.hash_ids, &idx, &weights);

  // Activations travel as FP8 codes + UE8M0 scales (quantised experts) or bf16.
  const bool quantized = c.Quantized();  // FP8 checkpoints carry FP4 or FP8 experts
  QuantizedActs& xq = ws.block_acts;
  ExpertExchange::Piece pieces[2];
  int64_t num_pieces = 1;
  if (quantized) {
    if (ns > 0) QuantizeActs(xs, d, ns, d, &xq);
    pieces[0] = {reinterpret_cast<const uint8_t*>(xq.q.data()), d, d};
    pieces[1] = {reinterpret_cast<const uint8_t*>(xq.scale.data()), d / 128, d / 128};
    num_pieces = 2;
  } else {
    pieces[0] = {reinterpret_cast<const uint8_t*>(xs), 2 * d, 2 * d};
  }
  bf16* routed = Use(ws.routed, ns * k * d);
  // Rounds of at most rows_per_round rows; every rank runs as many as the busiest needs (a rank
  // out of rows takes part with none).
  ExpertExchange& ex = ws.exchange;
  const int64_t round_rows = ws.layout.exchange.rows_per_round;
  for (int64_t r0 = 0;; r0 += round_rows) {
    const int64_t m = std::clamp<int64_t>(ns - r0, 0, round_rows);
    ExpertExchange::Piece round[2];
    for (int64_t i = 0; i < num_pieces; ++i) {
      round[i] = pieces[i];
      if (m > 0) round[i].data += r0 * pieces[i].ld;
    }
    const int64_t first = std::min(r0, ns) * k;
    RETURN_IF_ERROR(ex.Dispatch(*par_.ep, par_.placement, idx.data() + first,
                                weights.data() + first, m, k, std::span(round, size_t(num_pieces)),
                                r0 + m < ns, step_));
    RETURN_IF_ERROR(ExpertsOnReceived(mw, quantized, ex, ws, d, limit));
    RETURN_IF_ERROR(ex.Combine(*par_.ep,
                               reinterpret_cast<const uint8_t*>(ws.exchange_replies.data()),
                               reinterpret_cast<uint8_t*>(routed + first * d), step_));
    if (!ex.any_more()) break;
  }

  bf16* shared = nullptr;
  if (mw.has_shared && ns > 0) {
    shared = Use(ws.shared_out, ns * d);
    const bool sq = mw.shared.w1.TakesQuantizedInput();
    ExpertForward(mw.shared, sq ? &xq : nullptr, xs, ns, nullptr, limit, shared, d, ws);
  }
  // The TP group all-gathers its token slices (padded to the widest slice).
  if (par_.tp_size == 1) {
    CombineExperts(mw, idx.data(), routed, shared, ns, k, d, out);
    return absl::OkStatus();
  }
  const int64_t widest = SplitEvenly(n, par_.tp_size, 0).size();
  bf16* ys = Use(ws.moe_slice, widest * d);
  CombineExperts(mw, idx.data(), routed, shared, ns, k, d, ys);
  bf16* all = Use(ws.moe_gather, par_.tp_size * widest * d);
  RETURN_IF_ERROR(par_.tp->AllGather(ys, widest * d * 2, all, Site("moe token-slice all-gather")));
  for (int64_t t = 0; t < par_.tp_size; ++t) {
    const IndexRange sl = SplitEvenly(n, par_.tp_size, t);
    std::copy_n(all + t * widest * d, sl.size() * d, out + sl.begin * d);
  }
  return absl::OkStatus();
}

}  // namespace flotilla
