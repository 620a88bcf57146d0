// Expert-parallel MoE (design.md §2): each TP rank routes 1/tp of its DP group's tokens,
// dispatches their activations to the ranks owning the chosen experts (all-to-all-v), the
// owners run their experts over what they received, the outputs come back (all-to-all-v), and
// each token's routed sum is formed in increasing expert id, as in one process. The TP group
// then all-gathers the token slices. Every result is bitwise that of a single process.
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "worker/expert_exchange.h"
#include "worker/host_bridge.h"
#include "worker/model_internal.h"

namespace flotilla {

absl::Status Model::MoeDistributed(const MoeWeights& mw, const Rows& rows, kernels::In<bf16> x,
                                   kernels::Out<bf16> out_span) const {
  const ModelConfig& c = config_;
  const int64_t n = rows.n, d = c.hidden_size, k = top_k_;
  const float limit = float(c.swiglu_limit);

  // This TP rank's slice of the group's tokens.
  const IndexRange slice = SplitEvenly(n, par_.tp_size, par_.tp_rank);
  const int64_t ns = slice.size();
  const kernels::In<bf16> xs_span = x.subspan(slice.begin * d, ns * d);
  const bf16* xs = HostOf(xs_span);
  bf16* out = HostOf(out_span);
  StepWorkspace& ws = *ws_;
  kernels::Backend& backend = *backend_;
  kernels::Queue& queue = *queue_;
  int32_t* idx = HostOf(ws.Use(ws.route_idx, ns * k));
  float* weights = HostOf(ws.Use(ws.route_weights, ns * k));
  RouteTokens(c, mw, rows.token.data() + slice.begin, rows.experts.data() + slice.begin, ns, k, xs,
              HostOf(ws.router_logits.span()), &ws.hash_ids, idx, weights);

  // Activations travel as FP8 codes + UE8M0 scales (quantised experts) or bf16.
  const bool quantized = c.Quantized();  // FP8 checkpoints carry FP4 or FP8 experts
  QuantizedActs& xq = ws.block_acts;
  const size_t row_bytes = quantized ? size_t(d + d / 128) : size_t(2 * d);
  std::vector<uint8_t> rows_out(ns * row_bytes);
  if (quantized && ns > 0) {
    RETURN_IF_ERROR(QuantizeActs(backend, queue, xs_span, d, ns, d, xq));
    for (int64_t t = 0; t < ns; ++t) {
      std::memcpy(&rows_out[t * row_bytes], HostOf(xq.q) + t * d, d);
      std::memcpy(&rows_out[t * row_bytes + d], HostOf(xq.scale) + t * (d / 128), d / 128);
    }
  } else if (ns > 0) {
    std::memcpy(rows_out.data(), xs, ns * row_bytes);
  }
  ExpertExchange ex;
  RETURN_IF_ERROR(ex.Dispatch(*par_.ep, par_.placement, idx, weights, ns, k, rows_out.data(),
                              row_bytes, step_));

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
      const kernels::Out<float> w_span = ws.Use(ws.expert_weights, m);
      const kernels::Out<bf16> xe_span = ws.Use(ws.expert_in, quantized ? 0 : m * d);
      const kernels::Out<bf16> ye_span = ws.Use(ws.expert_out, m * d);
      float* w = HostOf(w_span);
      bf16* xe = HostOf(xe_span);
      const bf16* ye = HostOf(ye_span);
      QuantizedActs& qe = ws.expert_acts;
      if (quantized) {  // rows [0, m) of the pass are all written below
        qe.m = m;
        qe.k = d;
      }
      for (int64_t i = 0; i < m; ++i) {
        w[i] = ex.header(list[i]).weight;
        const uint8_t* p = ex.payload(list[i]);
        if (quantized) {
          std::memcpy(HostOf(qe.q) + i * d, p, d);
          std::memcpy(HostOf(qe.scale) + i * (d / 128), p + d, d / 128);
        } else {
          std::memcpy(xe + i * d, p, 2 * d);
        }
      }
      RETURN_IF_ERROR(ExpertForward(backend, queue, mw.experts[le], quantized ? &qe : nullptr,
                                    xe_span, m, w_span, limit, ye_span, d, ws));
      for (int64_t i = 0; i < m; ++i) std::copy_n(ye + i * d, d, &reply[list[i] * d]);
    }
  }
  std::vector<bf16> routed(ns * k * d);
  RETURN_IF_ERROR(ex.Combine(*par_.ep, reinterpret_cast<const uint8_t*>(reply.data()), 2 * d,
                             reinterpret_cast<uint8_t*>(routed.data()), step_));

  const bf16* shared = nullptr;
  if (mw.has_shared && ns > 0) {
    const kernels::Out<bf16> shared_span = ws.Use(ws.shared_out, ns * d);
    shared = HostOf(shared_span);
    const bool sq = mw.shared.w1.TakesQuantizedInput();
    RETURN_IF_ERROR(ExpertForward(backend, queue, mw.shared, sq ? &xq : nullptr, xs_span, ns, {},
                                  limit, shared_span, d, ws));
  }
  std::vector<bf16> ys(ns * d);
  CombineExperts(mw, idx, routed.data(), shared, ns, k, d, ys.data());

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
