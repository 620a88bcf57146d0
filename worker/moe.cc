// Mixture of experts (spec §9): router, grouped expert compute, fixed-order combine.
#include <algorithm>
#include <array>

#include "kernels/ops.h"
#include "worker/model_internal.h"

namespace flotilla {

// out = w2( bf16( weight * silu(min(w1 x, L)) * clamp(w3 x, ±L) ) ) for the gathered rows.
void ExpertForward(const ExpertWeights& e, const QuantizedActs* xq, const bf16* x, int64_t m,
                   const float* row_weight, float limit, bf16* out, int64_t d, StepWorkspace& ws) {
  const int64_t inter = e.w1.out;
  std::vector<bf16>& gu = ws.expert_gate_up;
  std::vector<bf16>& act = ws.expert_act;
  Use(gu, m * 2 * inter);
  Use(act, m * inter);
  if (xq != nullptr) {
    LinearForwardQuantized(e.w1, xq->q.data(), xq->scale.data(), m, gu.data(), 2 * inter);
    LinearForwardQuantized(e.w3, xq->q.data(), xq->scale.data(), m, gu.data() + inter, 2 * inter);
  } else {
    LinearForward(e.w1, x, d, m, gu.data(), 2 * inter, &ws.linear_acts);
    LinearForward(e.w3, x, d, m, gu.data() + inter, 2 * inter, &ws.linear_acts);
  }
  kernels::SwiGluParams p;
  p.gate = gu.data();
  p.up = gu.data() + inter;
  p.ld_in = 2 * inter;
  p.row_weight = row_weight;
  p.m = m;
  p.inter = inter;
  p.limit = limit;
  p.out = act.data();
  p.ld_out = inter;
  kernels::SwiGlu(p);
  LinearForward(e.w2, act.data(), inter, m, out, d, &ws.linear_acts);
}

void RouteTokens(const ModelConfig& c, const MoeWeights& mw, const int32_t* tokens,
                 const int32_t* experts, int64_t n, int64_t k, const bf16* x,
                 std::vector<float>* logits_buf, std::vector<int64_t>* hash_buf,
                 std::vector<int32_t>* idx, std::vector<float>* weights) {
  const int64_t d = c.hidden_size, num_experts = c.n_routed_experts;
  idx->resize(n * k);
  weights->resize(n * k);
  if (n == 0) return;
  std::vector<float>& logits = *logits_buf;
  Use(logits, n * num_experts);
  kernels::GemmF32Params p;
  p.a_bf16 = x;
  p.lda = d;
  p.w_bf16 = mw.gate;
  p.ldw = d;
  p.c = logits.data();
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
      rp.logits = logits.data() + t * num_experts;
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
        std::copy_n(mw.tid2eid.data() + int64_t(tokens[t]) * mw.tid2eid_cols, kt, hash_ids.data());
        rp.hash_ids = hash_ids.data();
        rp.ld_hash = kt;
      } else {
        rp.bias = mw.bias;
      }
      kernels::Route(rp);
      for (int64_t s = 0; s < k; ++s) {
        (*idx)[t * k + s] = s < kt ? row_idx[s] : row_idx[0];
        (*weights)[t * k + s] = s < kt ? row_weights[s] : 0.0f;
      }
    }
    return;
  }
  kernels::RouterParams rp;
  rp.logits = logits.data();
  rp.m = n;
  rp.num_experts = num_experts;
  rp.top_k = k;
  rp.route_scale = float(c.routed_scaling_factor);
  rp.expert_idx = idx->data();
  rp.weights = weights->data();
  if (!mw.tid2eid.empty()) {
    Use(hash_ids, n * k);
    for (int64_t t = 0; t < n; ++t) {
      std::copy_n(mw.tid2eid.data() + int64_t(tokens[t]) * mw.tid2eid_cols, k,
                  hash_ids.data() + t * k);
    }
    rp.hash_ids = hash_ids.data();
    rp.ld_hash = k;
  } else {
    rp.bias = mw.bias;
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

absl::Status Model::Moe(const MoeWeights& mw, const Rows& rows, const bf16* x, bf16* out) const {
  if (par_.distributed()) return MoeDistributed(mw, rows, x, out);
  const ModelConfig& c = config_;
  const int64_t n = rows.n, d = c.hidden_size, num_experts = c.n_routed_experts, k = top_k_;
  const float limit = float(c.swiglu_limit);
  StepWorkspace& ws = *ws_;
  std::vector<int32_t>& idx = ws.route_idx;
  std::vector<float>& weights = ws.route_weights;
  RouteTokens(c, mw, rows.token.data(), rows.experts.data(), n, k, x, &ws.router_logits,
              &ws.hash_ids, &idx, &weights);

  // Activations are quantised once (act_quant is per row) and gathered per expert.
  const bool quantized = mw.experts[0].w1.TakesQuantizedInput();
  QuantizedActs& xq = ws.block_acts;
  if (quantized) QuantizeActs(x, d, n, d, &xq);

  // Expert e's assignments (token * k + slot, token order): order[offsets[e], offsets[e + 1]).
  int64_t* offsets = Use(ws.expert_offsets, num_experts + 1);
  int32_t* order = Use(ws.expert_order, n * k);
  kernels::MoePermuteParams pp;
  pp.expert_idx = idx.data();
  pp.n = n;
  pp.k = k;
  pp.first_expert = 0;
  pp.num_experts = num_experts;
  pp.offsets = offsets;
  pp.order = order;
  kernels::MoePermute(pp);

  // An expert's list runs in passes of at most expert_rows rows (each row's arithmetic is its
  // own, so the passes give the rows what one pass would).
  bf16* routed = Use(ws.routed, n * k * d);
  const int64_t pass_rows = ws.layout.expert_rows;
  QuantizedActs& qe = ws.expert_acts;
  for (int64_t e = 0; e < num_experts; ++e) {
    for (int64_t p0 = offsets[e]; p0 < offsets[e + 1]; p0 += pass_rows) {
      const int32_t* list = order + p0;
      const int64_t m = std::min(pass_rows, offsets[e + 1] - p0);
      float* w = Use(ws.expert_weights, m);
      bf16* ye = Use(ws.expert_out, m * d);
      for (int64_t i = 0; i < m; ++i) w[i] = weights[list[i]];
      if (quantized) {
        qe.m = m;
        qe.k = d;
        Use(qe.q, m * d);
        Use(qe.scale, m * (d / 128));
        for (int64_t i = 0; i < m; ++i) {
          const int64_t t = list[i] / k;
          std::copy_n(xq.row(t), d, qe.q.data() + i * d);
          std::copy_n(xq.row_scale(t), d / 128, qe.scale.data() + i * (d / 128));
        }
      } else {
        bf16* xe = Use(ws.expert_in, m * d);
        for (int64_t i = 0; i < m; ++i) std::copy_n(x + (list[i] / k) * d, d, xe + i * d);
      }
      ExpertForward(mw.experts[e - mw.first_expert], quantized ? &qe : nullptr, ws.expert_in.data(),
                    m, w, limit, ye, d, ws);
      for (int64_t i = 0; i < m; ++i) std::copy_n(ye + i * d, d, routed + list[i] * d);
    }
  }

  bf16* shared = nullptr;
  if (mw.has_shared) {
    shared = Use(ws.shared_out, n * d);
    const bool sq = mw.shared.w1.TakesQuantizedInput();
    if (sq && !quantized) QuantizeActs(x, d, n, d, &xq);
    ExpertForward(mw.shared, sq ? &xq : nullptr, x, n, nullptr, limit, shared, d, ws);
  }
  // Combine (§9.3): per token, the routed outputs in increasing expert id, then the shared one;
  // f32 sums, one rounding. The order depends on neither arrival nor rank layout.
  CombineExperts(mw, idx.data(), routed, shared, n, k, d, out);
  return absl::OkStatus();
}

}  // namespace flotilla
