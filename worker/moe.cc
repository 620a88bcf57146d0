// Mixture of experts (spec §9): router, grouped expert compute, fixed-order combine.
#include <algorithm>
#include <array>
#include <span>

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
  // Hash layers: the tokens' tid2eid rows, their first k ids (a row with a smaller K reads the
  // first K of them).
  const int64_t* hash_ids = nullptr;
  if (!mw.tid2eid.empty()) {
    int64_t* h = Use(*hash_buf, n * k);
    kernels::RowCopyParams g;
    g.src = reinterpret_cast<const uint8_t*>(mw.tid2eid.data());
    g.ld_src = mw.tid2eid_cols * int64_t(sizeof(int64_t));
    g.index = tokens;
    g.rows = n;
    g.row_bytes = k * int64_t(sizeof(int64_t));
    g.dst = reinterpret_cast<uint8_t*>(h);
    g.ld_dst = g.row_bytes;
    kernels::GatherRows(g);
    hash_ids = h;
  }
  kernels::RouterParams rp;
  rp.logits = logits.data();
  rp.m = n;
  rp.num_experts = num_experts;
  rp.top_k = k;
  rp.route_scale = float(c.routed_scaling_factor);
  rp.hash_ids = hash_ids;
  rp.ld_hash = k;
  rp.bias = hash_ids == nullptr ? mw.bias : nullptr;
  if (experts != nullptr && std::any_of(experts, experts + n, [&](int32_t e) { return e != k; })) {
    // Rows route one at a time, each with its own K (routing is per row, so a row's result is
    // the one a batch of rows with that K would give it).
    std::array<int32_t, 64> row_idx;  // K <= 64 (Model::FromSource)
    std::array<float, 64> row_weights;
    for (int64_t t = 0; t < n; ++t) {
      const int64_t kt = experts[t];
      kernels::RouterParams r = rp;
      r.logits = logits.data() + t * num_experts;
      r.hash_ids = hash_ids == nullptr ? nullptr : hash_ids + t * k;
      r.m = 1;
      r.top_k = kt;
      r.expert_idx = row_idx.data();
      r.weights = row_weights.data();
      kernels::Route(r);
      for (int64_t s = 0; s < k; ++s) {
        (*idx)[t * k + s] = s < kt ? row_idx[s] : row_idx[0];
        (*weights)[t * k + s] = s < kt ? row_weights[s] : 0.0f;
      }
    }
    return;
  }
  rp.expert_idx = idx->data();
  rp.weights = weights->data();
  kernels::Route(rp);
}

namespace {

// The rows of `l`'s groups: y rows [first, first + count) of each group g inside the window of
// rows [row_begin, row_begin + rows) of the grouping (offsets), from quantised rows (q, scale)
// or bf16 rows (x, row stride ldx). Each row's arithmetic is that of the layer on that row alone.
template <typename Layer>
void GroupedLinear(std::span<const ExpertWeights> experts, Layer layer, const int64_t* offsets,
                   int64_t row_begin, int64_t rows, const fp8* q, const e8m0* scale, const bf16* x,
                   int64_t ldx, bf16* y, int64_t ldy) {
  for (size_t g = 0; g < experts.size(); ++g) {
    const int64_t lo = std::clamp<int64_t>(offsets[g] - row_begin, 0, rows);
    const int64_t hi = std::clamp<int64_t>(offsets[g + 1] - row_begin, 0, rows);
    if (hi <= lo) continue;
    const Linear& l = layer(experts[g]);
    if (l.TakesQuantizedInput()) {
      LinearForwardQuantized(l, q + lo * l.in, scale + lo * (l.in / 128), hi - lo, y + lo * ldy,
                             ldy);
    } else {
      LinearForward(l, x + lo * ldx, ldx, hi - lo, y + lo * ldy, ldy);
    }
  }
}

void Gather(const uint8_t* src, int64_t ld_src, const int32_t* index, int64_t rows, int64_t divisor,
            int64_t row_bytes, void* dst) {
  kernels::RowCopyParams p;
  p.src = src;
  p.ld_src = ld_src;
  p.index = index;
  p.rows = rows;
  p.divisor = divisor;
  p.row_bytes = row_bytes;
  p.dst = static_cast<uint8_t*>(dst);
  p.ld_dst = row_bytes;
  kernels::GatherRows(p);
}

}  // namespace

void GroupedExperts(std::span<const ExpertWeights> experts, const ExpertRows& in,
                    const int32_t* order, const int64_t* offsets, int64_t total, float limit,
                    bf16* out, int64_t d, StepWorkspace& ws) {
  if (experts.empty() || total == 0) return;
  const int64_t inter = experts[0].w1.out;
  const bool quantized = experts[0].w1.TakesQuantizedInput();
  const bool quantized_w2 = experts[0].w2.TakesQuantizedInput();
  const int64_t pass_rows = ws.layout.expert_rows;
  for (int64_t p0 = 0; p0 < total; p0 += pass_rows) {
    const int64_t m = std::min(pass_rows, total - p0);
    const int32_t* list = order + p0;
    float* w = Use(ws.expert_weights, m);
    Gather(in.weight, in.ld_weight, list, m, 1, sizeof(float), w);
    QuantizedActs& qe = ws.expert_acts;
    bf16* xe = nullptr;
    if (quantized) {
      qe.m = m;
      qe.k = d;
      Use(qe.q, m * d);
      Use(qe.scale, m * (d / 128));
      Gather(in.q, in.ld_q, list, m, in.divisor, d, qe.q.data());
      Gather(in.scale, in.ld_scale, list, m, in.divisor, d / 128, qe.scale.data());
    } else {
      xe = Use(ws.expert_in, m * d);
      Gather(in.x, in.ld_x, list, m, in.divisor, 2 * d, xe);
    }
    bf16* gu = Use(ws.expert_gate_up, m * 2 * inter);
    bf16* act = Use(ws.expert_act, m * inter);
    bf16* ye = Use(ws.expert_out, m * d);
    const fp8* q = quantized ? qe.q.data() : nullptr;
    const e8m0* qs = quantized ? qe.scale.data() : nullptr;
    GroupedLinear(
        experts, [](const ExpertWeights& e) -> const Linear& { return e.w1; }, offsets, p0, m, q,
        qs, xe, d, gu, 2 * inter);
    GroupedLinear(
        experts, [](const ExpertWeights& e) -> const Linear& { return e.w3; }, offsets, p0, m, q,
        qs, xe, d, gu + inter, 2 * inter);
    kernels::SwiGluParams sp;
    sp.gate = gu;
    sp.up = gu + inter;
    sp.ld_in = 2 * inter;
    sp.row_weight = w;
    sp.m = m;
    sp.inter = inter;
    sp.limit = limit;
    sp.out = act;
    sp.ld_out = inter;
    kernels::SwiGlu(sp);
    QuantizedActs& qa = ws.linear_acts;
    if (quantized_w2) QuantizeActs(act, inter, m, inter, &qa);
    GroupedLinear(
        experts, [](const ExpertWeights& e) -> const Linear& { return e.w2; }, offsets, p0, m,
        quantized_w2 ? qa.q.data() : nullptr, quantized_w2 ? qa.scale.data() : nullptr, act, inter,
        ye, d);
    kernels::RowCopyParams sc;
    sc.src = reinterpret_cast<const uint8_t*>(ye);
    sc.ld_src = 2 * d;
    sc.index = list;
    sc.rows = m;
    sc.row_bytes = 2 * d;
    sc.dst = reinterpret_cast<uint8_t*>(out);
    sc.ld_dst = 2 * d;
    kernels::ScatterRows(sc);
  }
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

  // Activations are quantised once (act_quant is per row) and gathered per expert pass.
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

  // The permuted list runs in passes of at most expert_rows rows (each row's arithmetic is its
  // own, so the passes give the rows what one pass would); every assignment's output lands in
  // its row of `routed` (token * k + slot).
  bf16* routed = Use(ws.routed, n * k * d);
  ExpertRows in;
  in.divisor = k;
  if (quantized) {
    in.q = reinterpret_cast<const uint8_t*>(xq.q.data());
    in.ld_q = d;
    in.scale = reinterpret_cast<const uint8_t*>(xq.scale.data());
    in.ld_scale = d / 128;
  } else {
    in.x = reinterpret_cast<const uint8_t*>(x);
    in.ld_x = 2 * d;
  }
  in.weight = reinterpret_cast<const uint8_t*>(weights.data());
  in.ld_weight = sizeof(float);
  GroupedExperts(mw.experts, in, order, offsets, n * k, limit, routed, d, ws);

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
