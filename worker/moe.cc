// Mixture of experts (spec §9): router, grouped expert compute, fixed-order combine, as Backend
// ops on the model's queue. The host reads nothing back: the expert grouping's offsets stay in
// backend memory and the grouped GEMMs read them there.
#include <algorithm>

#include "worker/model_internal.h"

namespace flotilla {
namespace {

using kernels::In;
using kernels::Out;

// The per-expert lists of layer `which` (0: w1, 1: w3, 2: w2) as the grouped GEMMs take them.
const Linear& LayerOf(const ExpertWeights& e, int which) {
  return which == 0 ? e.w1 : which == 1 ? e.w3 : e.w2;
}

// y rows of every group inside the window [row_begin, row_begin + rows) of the grouping
// (offsets), from quantised rows (q, scale) or bf16 rows (x, row stride ldx): the grouped GEMM
// of the experts' precision.
absl::Status GroupedLinear(kernels::Backend& backend, kernels::Queue& queue, const MoeWeights& mw,
                           int which, In<int64_t> offsets, int64_t row_begin, int64_t rows,
                           const QuantizedActs* xq, In<bf16> x, int64_t ldx, Out<bf16> y,
                           int64_t ldy) {
  const ExpertLists& lists = mw.lists;
  const Linear& l = LayerOf(mw.experts[0], which);
  switch (l.kind) {
    case Linear::Kind::kFp4: {
      kernels::GroupedGemmFp8Fp4Args a;
      a.a = xq->q;
      a.a_scale = xq->scale;
      a.w = lists.w4[which];
      a.w_scale = lists.scale[which];
      a.offsets = offsets;
      a.row_begin = row_begin;
      a.rows = rows;
      a.c = y;
      a.ldc = ldy;
      a.n = l.out;
      a.k = l.in;
      RETURN_IF_BACKEND_ERROR(backend.GroupedGemmFp8Fp4(queue, a));
      return absl::OkStatus();
    }
    case Linear::Kind::kFp8:
    case Linear::Kind::kFp8F32Scale: {
      kernels::GroupedGemmFp8Args a;
      a.a = xq->q;
      a.a_scale = xq->scale;
      a.w = lists.w8[which];
      if (l.kind == Linear::Kind::kFp8) {
        a.w_scale = lists.scale[which];
      } else {
        a.w_scale_f32 = lists.scale_f32[which];
      }
      a.offsets = offsets;
      a.row_begin = row_begin;
      a.rows = rows;
      a.c = y;
      a.ldc = ldy;
      a.n = l.out;
      a.k = l.in;
      RETURN_IF_BACKEND_ERROR(backend.GroupedGemmFp8(queue, a));
      return absl::OkStatus();
    }
    case Linear::Kind::kBf16: {
      kernels::GroupedGemmBf16Args a;
      a.a = x;
      a.lda = ldx;
      a.w = lists.wb[which];
      a.offsets = offsets;
      a.row_begin = row_begin;
      a.rows = rows;
      a.c = y;
      a.ldc = ldy;
      a.n = l.out;
      a.k = l.in;
      RETURN_IF_BACKEND_ERROR(backend.GroupedGemmBf16(queue, a));
      return absl::OkStatus();
    }
  }
  return absl::InternalError("moe: unknown expert weight kind");
}

// dst row i = src row (index[i] / divisor), rows of row_bytes.
absl::Status Gather(kernels::Backend& backend, kernels::Queue& queue, In<uint8_t> src,
                    int64_t ld_src, In<int32_t> index, int64_t divisor, int64_t row_bytes,
                    Out<uint8_t> dst) {
  kernels::RowCopyArgs a;
  a.src = src;
  a.ld_src = ld_src;
  a.index = index;
  a.rows = index.size();
  a.divisor = divisor;
  a.row_bytes = row_bytes;
  a.dst = dst;
  a.ld_dst = row_bytes;
  RETURN_IF_BACKEND_ERROR(backend.GatherRows(queue, a));
  return absl::OkStatus();
}

}  // namespace

void MakeExpertLists(MoeWeights& mw) {
  ExpertLists& l = mw.lists;
  for (int which = 0; which < 3; ++which) {
    l.w4[which].clear();
    l.w8[which].clear();
    l.scale[which].clear();
    l.scale_f32[which].clear();
    l.wb[which].clear();
    for (const ExpertWeights& e : mw.experts) {
      const Linear& lin = LayerOf(e, which);
      l.w4[which].push_back(lin.w4);
      l.w8[which].push_back(lin.w8);
      l.scale[which].push_back(lin.scale);
      l.scale_f32[which].push_back(lin.scale_f32);
      l.wb[which].push_back(lin.wb);
    }
  }
}

// out = w2( bf16( weight * silu(min(w1 x, L)) * clamp(w3 x, ±L) ) ) for the gathered rows.
absl::Status ExpertForward(kernels::Backend& backend, kernels::Queue& queue, const ExpertWeights& e,
                           const QuantizedActs* xq, In<bf16> x, int64_t m, In<float> row_weight,
                           float limit, Out<bf16> out, int64_t d, StepWorkspace& ws) {
  if (m == 0) return absl::OkStatus();
  const int64_t inter = e.w1.out;
  const Out<bf16> gu = ws.Use(ws.expert_gate_up, m * 2 * inter);
  const Out<bf16> act = ws.Use(ws.expert_act, m * inter);
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
  kernels::SwiGluArgs p;
  p.gate = gu;
  p.up = gu.subspan(inter);
  p.ld_in = 2 * inter;
  p.row_weight = row_weight;
  p.m = m;
  p.inter = inter;
  p.limit = limit;
  p.out = act;
  p.ld_out = inter;
  RETURN_IF_BACKEND_ERROR(backend.SwiGlu(queue, p));
  return LinearForward(backend, queue, e.w2, act, inter, m, out, d, ws.linear_acts);
}

absl::Status GroupedExperts(kernels::Backend& backend, kernels::Queue& queue, const MoeWeights& mw,
                            const ExpertRows& in, In<int32_t> order, In<int64_t> offsets,
                            int64_t total, float limit, Out<bf16> out, int64_t d,
                            StepWorkspace& ws) {
  if (mw.experts.empty() || total == 0) return absl::OkStatus();
  const int64_t inter = mw.experts[0].w1.out;
  const bool quantized = mw.experts[0].w1.TakesQuantizedInput();
  const bool quantized_w2 = mw.experts[0].w2.TakesQuantizedInput();
  const int64_t pass_rows = ws.layout.expert_rows;
  for (int64_t p0 = 0; p0 < total; p0 += pass_rows) {
    const int64_t m = std::min(pass_rows, total - p0);
    const In<int32_t> list = order.subspan(p0, m);
    const Out<float> w = ws.Use(ws.expert_weights, m);
    RETURN_IF_ERROR(Gather(backend, queue, in.weight, in.ld_weight, list, 1, sizeof(float),
                           w.as_writable_bytes()));
    QuantizedActs& qe = ws.expert_acts;
    Out<bf16> xe;
    if (quantized) {
      qe.m = m;
      qe.k = d;
      RETURN_IF_ERROR(Gather(backend, queue, in.q, in.ld_q, list, in.divisor, d,
                             qe.q.first(m * d).as_writable_bytes()));
      RETURN_IF_ERROR(Gather(backend, queue, in.scale, in.ld_scale, list, in.divisor, d / 128,
                             qe.scale.first(m * (d / 128)).as_writable_bytes()));
    } else {
      xe = ws.expert_in.span().first(m * d);
      RETURN_IF_ERROR(
          Gather(backend, queue, in.x, in.ld_x, list, in.divisor, 2 * d, xe.as_writable_bytes()));
    }
    const Out<bf16> gu = ws.Use(ws.expert_gate_up, m * 2 * inter);
    const Out<bf16> act = ws.Use(ws.expert_act, m * inter);
    const Out<bf16> ye = ws.Use(ws.expert_out, m * d);
    RETURN_IF_ERROR(
        GroupedLinear(backend, queue, mw, 0, offsets, p0, m, &qe, xe, d, gu, 2 * inter));
    RETURN_IF_ERROR(GroupedLinear(backend, queue, mw, 1, offsets, p0, m, &qe, xe, d,
                                  gu.subspan(inter), 2 * inter));
    kernels::SwiGluArgs sp;
    sp.gate = gu;
    sp.up = gu.subspan(inter);
    sp.ld_in = 2 * inter;
    sp.row_weight = w;
    sp.m = m;
    sp.inter = inter;
    sp.limit = limit;
    sp.out = act;
    sp.ld_out = inter;
    RETURN_IF_BACKEND_ERROR(backend.SwiGlu(queue, sp));
    QuantizedActs& qa = ws.linear_acts;
    if (quantized_w2) RETURN_IF_ERROR(QuantizeActs(backend, queue, act, inter, m, inter, qa));
    RETURN_IF_ERROR(GroupedLinear(backend, queue, mw, 2, offsets, p0, m, &qa, act, inter, ye, d));
    // Each entry's output to its row of `out`.
    kernels::RowCopyArgs sc;
    sc.src = ye.as_bytes();
    sc.ld_src = 2 * d;
    sc.index = list;
    sc.rows = m;
    sc.row_bytes = 2 * d;
    sc.dst = out.as_writable_bytes();
    sc.ld_dst = 2 * d;
    RETURN_IF_BACKEND_ERROR(backend.ScatterRows(queue, sc));
  }
  return absl::OkStatus();
}

absl::Status RouteTokens(kernels::Backend& backend, kernels::Queue& queue, const ModelConfig& c,
                         const MoeWeights& mw, In<int32_t> tokens, In<int32_t> experts,
                         const int32_t* experts_host, int64_t n, int64_t k, In<bf16> x,
                         StepWorkspace& ws, Out<int32_t> idx, Out<float> weights) {
  const int64_t d = c.hidden_size, num_experts = c.n_routed_experts;
  if (n == 0) return absl::OkStatus();
  const Out<float> logits = ws.router_logits.span().first(n * num_experts);
  kernels::GemmF32Args g;
  g.a_bf16 = x;
  g.lda = d;
  g.w_bf16 = mw.gate;
  g.ldw = d;
  g.c = logits;
  g.ldc = num_experts;
  g.m = n;
  g.n = num_experts;
  g.k = d;
  RETURN_IF_BACKEND_ERROR(backend.GemmF32(queue, g));
  // Hash layers: the tokens' tid2eid rows, their first k ids (a row with a smaller K reads the
  // first K of them), gathered on the queue.
  In<int64_t> hash_ids;
  if (mw.tid2eid.arena() != nullptr) {
    const Out<int64_t> h = ws.hash_ids.span().first(n * k);
    RETURN_IF_ERROR(Gather(backend, queue, mw.tid2eid.as_bytes(),
                           mw.tid2eid_cols * int64_t(sizeof(int64_t)), tokens, 1,
                           k * int64_t(sizeof(int64_t)), h.as_writable_bytes()));
    hash_ids = h;
  }
  const float scale = float(c.routed_scaling_factor);
  // Rows with a K of their own route with it (routing is per row, so a row's result is the one
  // a batch of rows with that K would give it); the host knows the rows' K.
  auto fill = [&](auto& r) {  // RouteArgs and RoutePerRowKArgs share these fields
    r.logits = logits;
    r.bias = hash_ids.arena() == nullptr ? mw.bias : In<float>{};
    r.hash_ids = hash_ids;
    r.ld_hash = k;
    r.m = n;
    r.num_experts = num_experts;
    r.top_k = k;
    r.route_scale = scale;
    r.expert_idx = idx;
    r.weights = weights;
  };
  if (std::any_of(experts_host, experts_host + n, [&](int32_t e) { return e != k; })) {
    kernels::RoutePerRowKArgs r;
    fill(r);
    r.row_top_k = experts;
    RETURN_IF_BACKEND_ERROR(backend.RoutePerRowK(queue, r));
    return absl::OkStatus();
  }
  kernels::RouteArgs r;
  fill(r);
  RETURN_IF_BACKEND_ERROR(backend.Route(queue, r));
  return absl::OkStatus();
}

absl::Status Model::Moe(const MoeWeights& mw, const Rows& rows, In<bf16> x, Out<bf16> out) const {
  if (par_.distributed()) return MoeDistributed(mw, rows, x, out);
  const ModelConfig& c = config_;
  const int64_t n = rows.n, d = c.hidden_size, num_experts = c.n_routed_experts, k = top_k_;
  const float limit = float(c.swiglu_limit);
  StepWorkspace& ws = *ws_;
  kernels::Backend& backend = *backend_;
  kernels::Queue& queue = *queue_;
  if (n == 0) return absl::OkStatus();
  const Out<int32_t> idx = ws.route_idx.span().first(n * k);
  const Out<float> weights = ws.route_weights.span().first(n * k);
  RETURN_IF_ERROR(RouteTokens(backend, queue, c, mw, rows.token_dev, rows.experts_dev,
                              rows.experts.data(), n, k, x, ws, idx, weights));

  // Activations are quantised once (act_quant is per row) and gathered per expert pass.
  const bool quantized = mw.experts[0].w1.TakesQuantizedInput();
  QuantizedActs& xq = ws.block_acts;
  if (quantized) RETURN_IF_ERROR(QuantizeActs(backend, queue, x, d, n, d, xq));

  // Expert e's assignments (token * k + slot, token order): order[offsets[e], offsets[e + 1]),
  // in backend memory only.
  const Out<int64_t> offsets = ws.expert_offsets.span().first(num_experts + 1);
  const Out<int32_t> order = ws.expert_order.span().first(n * k);
  kernels::MoePermuteArgs pp;
  pp.expert_idx = idx;
  pp.n = n;
  pp.k = k;
  pp.first_expert = 0;
  pp.num_experts = num_experts;
  pp.offsets = offsets;
  pp.order = order;
  RETURN_IF_BACKEND_ERROR(backend.MoePermute(queue, pp));

  // The permuted list runs in passes of at most expert_rows rows (each row's arithmetic is its
  // own, so the passes give the rows what one pass would); every assignment's output lands in
  // its row of `routed` (token * k + slot).
  const Out<bf16> routed = ws.routed.span().first(n * k * d);
  ExpertRows in;
  in.divisor = k;
  if (quantized) {
    in.q = xq.q.first(n * d).as_bytes();
    in.ld_q = d;
    in.scale = xq.scale.first(n * (d / 128)).as_bytes();
    in.ld_scale = d / 128;
  } else {
    in.x = x.first(n * d).as_bytes();
    in.ld_x = 2 * d;
  }
  in.weight = weights.as_bytes();
  in.ld_weight = sizeof(float);
  RETURN_IF_ERROR(
      GroupedExperts(backend, queue, mw, in, order, offsets, n * k, limit, routed, d, ws));

  Out<bf16> shared;
  if (mw.has_shared) {
    shared = ws.shared_out.span().first(n * d);
    const bool sq = mw.shared.w1.TakesQuantizedInput();
    if (sq && !quantized) RETURN_IF_ERROR(QuantizeActs(backend, queue, x, d, n, d, xq));
    RETURN_IF_ERROR(ExpertForward(backend, queue, mw.shared, sq ? &xq : nullptr, x, n, {}, limit,
                                  shared, d, ws));
  }
  // Combine (§9.3): per token, the routed outputs in increasing expert id, then the shared one;
  // f32 sums, one rounding. The order depends on neither arrival nor rank layout.
  kernels::MoeCombineArgs cb;
  cb.expert_idx = idx;
  cb.routed = routed;
  cb.shared = shared;
  cb.n = n;
  cb.k = k;
  cb.d = d;
  cb.out = out.first(n * d);
  RETURN_IF_BACKEND_ERROR(backend.MoeCombine(queue, cb));
  return absl::OkStatus();
}

}  // namespace flotilla
