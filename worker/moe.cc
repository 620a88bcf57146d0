// Mixture of experts (spec §9): router, grouped expert compute, fixed-order combine.
#include <algorithm>
#include <array>

#include "kernels/ops.h"
#include "worker/host_bridge.h"
#include "worker/model_internal.h"

namespace flotilla {

// out = w2( bf16( weight * silu(min(w1 x, L)) * clamp(w3 x, ±L) ) ) for the gathered rows.
absl::Status ExpertForward(kernels::Backend& backend, kernels::Queue& queue, const ExpertWeights& e,
                           const QuantizedActs* xq, kernels::In<bf16> x, int64_t m,
                           kernels::In<float> row_weight, float limit, kernels::Out<bf16> out,
                           int64_t d, StepWorkspace& ws) {
  if (m == 0) return absl::OkStatus();
  const int64_t inter = e.w1.out;
  const kernels::Out<bf16> gu = ws.Use(ws.expert_gate_up, m * 2 * inter);
  const kernels::Out<bf16> act = ws.Use(ws.expert_act, m * inter);
  if (xq != nullptr) {
    RETURN_IF_ERROR(
        LinearForwardQuantized(backend, queue, e.w1, xq->q, xq->scale, m, gu, 2 * inter));
    RETURN_IF_ERROR(LinearForwardQuantized(backend, queue, e.w3, xq->q, xq->scale, m,
                                           gu.subspan(inter), 2 * inter));
  } else {
    RETURN_IF_ERROR(LinearForward(backend, queue, e.w1, x, d, m, gu, 2 * inter, ws.linear_acts));
    RETURN_IF_ERROR(
        LinearForward(backend, queue, e.w3, x, d, m, gu.subspan(inter), 2 * inter, ws.linear_acts));
  }
  kernels::SwiGluParams p;
  p.gate = HostOf(gu);
  p.up = HostOf(gu) + inter;
  p.ld_in = 2 * inter;
  p.row_weight = HostOf(row_weight);
  p.m = m;
  p.inter = inter;
  p.limit = limit;
  p.out = HostOf(act);
  p.ld_out = inter;
  kernels::SwiGlu(p);
  return LinearForward(backend, queue, e.w2, act, inter, m, out, d, ws.linear_acts);
}

void RouteTokens(const ModelConfig& c, const MoeWeights& mw, const int32_t* tokens,
                 const int32_t* experts, int64_t n, int64_t k, const bf16* x, float* logits,
                 std::vector<int64_t>* hash_buf, int32_t* idx, float* weights) {
  const int64_t d = c.hidden_size, num_experts = c.n_routed_experts;
  if (n == 0) return;
  const int64_t* tid2eid = HostOf(mw.tid2eid);
  kernels::GemmF32Params p;
  p.a_bf16 = x;
  p.lda = d;
  p.w_bf16 = HostOf(mw.gate);
  p.ldw = d;
  p.c = logits;
  p.ldc = num_experts;
  p.m = n;
  p.n = num_experts;
  p.k = d;
  kernels::GemmF32(p);
  std::vector<int64_t>& hash_ids = *hash_buf;
  if (experts != nullptr && std::any_of(experts, experts + n, [&](int32_t e) { return e != k; })) {
    // Rows route one at a time, each with its own K (routing is per row, so a row's result is
    // the one a batch of rows with that K would give it).
    std::array<int32_t, 64> row_idx;  // K <= 64 (Model::FromSource)
    std::array<float, 64> row_weights;
    for (int64_t t = 0; t < n; ++t) {
      const int64_t kt = experts[t];
      kernels::RouterParams rp;
      rp.logits = logits + t * num_experts;
      rp.m = 1;
      rp.num_experts = num_experts;
      rp.top_k = kt;
      rp.route_scale = float(c.routed_scaling_factor);
      std::fill_n(row_idx.begin(), kt, 0);
      std::fill_n(row_weights.begin(), kt, 0.0f);
      rp.expert_idx = row_idx.data();
      rp.weights = row_weights.data();
      if (!mw.tid2eid.empty()) {
        Use(hash_ids, kt);
        std::copy_n(tid2eid + int64_t(tokens[t]) * mw.tid2eid_cols, kt, hash_ids.data());
        rp.hash_ids = hash_ids.data();
        rp.ld_hash = kt;
      } else {
        rp.bias = HostOf(mw.bias);
      }
      kernels::Route(rp);
      for (int64_t s = 0; s < k; ++s) {
        idx[t * k + s] = s < kt ? row_idx[s] : row_idx[0];
        weights[t * k + s] = s < kt ? row_weights[s] : 0.0f;
      }
    }
    return;
  }
  kernels::RouterParams rp;
  rp.logits = logits;
  rp.m = n;
  rp.num_experts = num_experts;
  rp.top_k = k;
  rp.route_scale = float(c.routed_scaling_factor);
  rp.expert_idx = idx;
  rp.weights = weights;
  if (!mw.tid2eid.empty()) {
    Use(hash_ids, n * k);
    for (int64_t t = 0; t < n; ++t) {
      std::copy_n(tid2eid + int64_t(tokens[t]) * mw.tid2eid_cols, k, hash_ids.data() + t * k);
    }
    rp.hash_ids = hash_ids.data();
    rp.ld_hash = k;
  } else {
    rp.bias = HostOf(mw.bias);
  }
  kernels::Route(rp);
}

void CombineExperts(const MoeWeights& mw, const int32_t* idx, const bf16* routed,
                    const bf16* shared, int64_t n, int64_t k, int64_t d, bf16* out) {
  kernels::MoeCombineParams p;
  p.expert_idx = idx;
  p.routed = routed;
  p.shared = shared;
  p.n = n;
  p.k = k;
  p.d = d;
  p.out = out;
  kernels::MoeCombine(p);
}

absl::Status Model::Moe(const MoeWeights& mw, const Rows& rows, kernels::In<bf16> x_span,
                        kernels::Out<bf16> out) const {
  if (par_.distributed()) return MoeDistributed(mw, rows, x_span, out);
  const ModelConfig& c = config_;
  const int64_t n = rows.n, d = c.hidden_size, num_experts = c.n_routed_experts, k = top_k_;
  const float limit = float(c.swiglu_limit);
  StepWorkspace& ws = *ws_;
  kernels::Backend& backend = *backend_;
  kernels::Queue& queue = *queue_;
  const bf16* x = HostOf(x_span);
  int32_t* idx = HostOf(ws.Use(ws.route_idx, n * k));
  float* weights = HostOf(ws.Use(ws.route_weights, n * k));
  RouteTokens(c, mw, rows.token.data(), rows.experts.data(), n, k, x,
              HostOf(ws.router_logits.span()), &ws.hash_ids, idx, weights);

  // Activations are quantised once (act_quant is per row) and gathered per expert.
  const bool quantized = mw.experts[0].w1.TakesQuantizedInput();
  QuantizedActs& xq = ws.block_acts;
  if (quantized) RETURN_IF_ERROR(QuantizeActs(backend, queue, x_span, d, n, d, xq));

  // Expert e's assignments (token * k + slot, token order): order[offsets[e], offsets[e + 1]).
  int64_t* offsets = Use(ws.expert_offsets, num_experts + 1);
  int32_t* order = Use(ws.expert_order, n * k);
  kernels::MoePermuteParams pp;
  pp.expert_idx = idx;
  pp.n = n;
  pp.k = k;
  pp.first_expert = 0;
  pp.num_experts = num_experts;
  pp.offsets = offsets;
  pp.order = order;
  kernels::MoePermute(pp);

  // An expert's list runs in passes of at most expert_rows rows (each row's arithmetic is its
  // own, so the passes give the rows what one pass would).
  bf16* routed = HostOf(ws.Use(ws.routed, n * k * d));
  const int64_t pass_rows = ws.layout.expert_rows;
  QuantizedActs& qe = ws.expert_acts;
  for (int64_t e = 0; e < num_experts; ++e) {
    for (int64_t p0 = offsets[e]; p0 < offsets[e + 1]; p0 += pass_rows) {
      const int32_t* list = order + p0;
      const int64_t m = std::min(pass_rows, offsets[e + 1] - p0);
      const kernels::Out<float> w_span = ws.Use(ws.expert_weights, m);
      const kernels::Out<bf16> ye_span = ws.Use(ws.expert_out, m * d);
      float* w = HostOf(w_span);
      const bf16* ye = HostOf(ye_span);
      for (int64_t i = 0; i < m; ++i) w[i] = weights[list[i]];
      if (quantized) {
        qe.m = m;
        qe.k = d;
        // Rows [0, m) of the pass are all written.
        for (int64_t i = 0; i < m; ++i) {
          const int64_t t = list[i] / k;
          std::copy_n(HostOf(xq.q) + t * d, d, HostOf(qe.q) + i * d);
          std::copy_n(HostOf(xq.scale) + t * (d / 128), d / 128, HostOf(qe.scale) + i * (d / 128));
        }
      } else {
        bf16* xe = HostOf(ws.Use(ws.expert_in, m * d));
        for (int64_t i = 0; i < m; ++i) std::copy_n(x + (list[i] / k) * d, d, xe + i * d);
      }
      RETURN_IF_ERROR(ExpertForward(backend, queue, mw.experts[e - mw.first_expert],
                                    quantized ? &qe : nullptr, ws.expert_in.span(), m, w_span,
                                    limit, ye_span, d, ws));
      for (int64_t i = 0; i < m; ++i) std::copy_n(ye + i * d, d, routed + list[i] * d);
    }
  }

  bf16* shared = nullptr;
  if (mw.has_shared) {
    const kernels::Out<bf16> shared_span = ws.Use(ws.shared_out, n * d);
    shared = HostOf(shared_span);
    const bool sq = mw.shared.w1.TakesQuantizedInput();
    if (sq && !quantized) RETURN_IF_ERROR(QuantizeActs(backend, queue, x_span, d, n, d, xq));
    RETURN_IF_ERROR(ExpertForward(backend, queue, mw.shared, sq ? &xq : nullptr, x_span, n, {},
                                  limit, shared_span, d, ws));
  }
  // Combine (§9.3): per token, the routed outputs in increasing expert id, then the shared one;
  // f32 sums, one rounding. The order depends on neither arrival nor rank layout.
  CombineExperts(mw, idx, routed, shared, n, k, d, HostOf(out));
  return absl::OkStatus();
}

}  // namespace flotilla
