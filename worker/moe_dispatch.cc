// Expert-parallel MoE (design.md §2): each TP rank routes 1/tp of its DP group's tokens,
// dispatches their activations to the ranks owning the chosen experts (all-to-all-v), the
// owners run their experts over what they received, the outputs come back (all-to-all-v), and
// each token's routed sum is formed in increasing expert id, as in one process. The TP group
// then all-gathers the token slices. Every result is bitwise that of a single process.
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

#include "worker/expert_exchange.h"
#include "worker/model_internal.h"

namespace flotilla {

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
  const size_t row_bytes = quantized ? size_t(d + d / 128) : size_t(2 * d);
  std::vector<uint8_t> rows_out(ns * row_bytes);
  if (quantized && ns > 0) {
    QuantizeActs(xs, d, ns, d, &xq);
    for (int64_t t = 0; t < ns; ++t) {
      std::memcpy(&rows_out[t * row_bytes], xq.row(t), d);
      std::memcpy(&rows_out[t * row_bytes + d], xq.row_scale(t), d / 128);
    }
  } else if (ns > 0) {
    std::memcpy(rows_out.data(), xs, ns * row_bytes);
  }
  ExpertExchange ex;
  RETURN_IF_ERROR(ex.Dispatch(*par_.ep, par_.placement, idx.data(), weights.data(), ns, k,
                              rows_out.data(), row_bytes, step_));

  // Expert compute over the received entries, grouped by local expert in arrival order; every
  // row's arithmetic is independent of its group.
  const int64_t num_local = int64_t(mw.experts.size());
  ASSIGN_OR_RETURN(auto by_expert, ex.ByLocalExpert(num_local));
  std::vector<bf16> reply(ex.num_received() * d);
  // Each expert's list runs in passes of at most expert_rows rows (rows are independent).
  const int64_t pass_rows = ws.layout.expert_rows;
  for (int64_t le = 0; le < num_local; ++le) {
    const auto& all_rows = by_expert[le];
    for (size_t p0 = 0; p0 < all_rows.size(); p0 += size_t(pass_rows)) {
      const int64_t m = std::min<int64_t>(pass_rows, int64_t(all_rows.size() - p0));
      const int64_t* list = all_rows.data() + p0;
      float* w = Use(ws.expert_weights, m);
      bf16* xe = Use(ws.expert_in, quantized ? 0 : m * d);
      bf16* ye = Use(ws.expert_out, m * d);
      QuantizedActs& qe = ws.expert_acts;
      if (quantized) {
        qe.m = m;
        qe.k = d;
        Use(qe.q, m * d);
        Use(qe.scale, m * (d / 128));
      }
      for (int64_t i = 0; i < m; ++i) {
        w[i] = ex.header(list[i]).weight;
        const uint8_t* p = ex.payload(list[i]);
        if (quantized) {
          std::memcpy(qe.q.data() + i * d, p, d);
          std::memcpy(qe.scale.data() + i * (d / 128), p + d, d / 128);
        } else {
          std::memcpy(xe + i * d, p, 2 * d);
        }
      }
      ExpertForward(mw.experts[le], quantized ? &qe : nullptr, xe, m, w, limit, ye, d, ws);
      for (int64_t i = 0; i < m; ++i) std::copy_n(ye + i * d, d, &reply[list[i] * d]);
    }
  }
  std::vector<bf16> routed(ns * k * d);
  RETURN_IF_ERROR(ex.Combine(*par_.ep, reinterpret_cast<const uint8_t*>(reply.data()), 2 * d,
                             reinterpret_cast<uint8_t*>(routed.data()), step_));

  std::vector<bf16> shared;
  if (mw.has_shared && ns > 0) {
    shared.resize(ns * d);
    const bool sq = mw.shared.w1.TakesQuantizedInput();
    ExpertForward(mw.shared, sq ? &xq : nullptr, xs, ns, nullptr, limit, shared.data(), d, ws);
  }
  std::vector<bf16> ys(ns * d);
  CombineExperts(mw, idx.data(), routed.data(), shared.empty() ? nullptr : shared.data(), ns, k, d,
                 ys.data());

  // The TP group all-gathers its token slices (padded to the widest slice).
  if (par_.tp_size == 1) {
    std::copy(ys.begin(), ys.end(), out);
    return absl::OkStatus();
  }
  const int64_t widest = SplitEvenly(n, par_.tp_size, 0).size();
  ys.resize(widest * d);
  std::vector<bf16> all(par_.tp_size * widest * d);
  RETURN_IF_ERROR(par_.tp->AllGather(ys.data(), ys.size() * 2, all.data(),
                                     Site("moe token-slice all-gather")));
  for (int64_t t = 0; t < par_.tp_size; ++t) {
    const IndexRange sl = SplitEvenly(n, par_.tp_size, t);
    std::copy_n(&all[t * widest * d], sl.size() * d, out + sl.begin * d);
  }
  return absl::OkStatus();
}

}  // namespace flotilla
