// Expert-parallel MoE (design.md §2): each TP rank routes 1/tp of its DP group's tokens,
// dispatches their activations to the ranks owning the chosen experts (all-to-all-v), the
// owners run their experts over what they received, the outputs come back (all-to-all-v), and
// each token's routed sum is formed in increasing expert id, as in one process. The TP group
// then all-gathers the token slices. Every result is bitwise that of a single process.
//
// The compute is Backend ops on the model's queue; the exchange moves host memory (MPI), so the
// MoE stages through the step workspace's host buffers and the host waits where it needs values:
// the slice's routing and payload rows before a dispatch, the replies before a combine, the
// token slice before the TP all-gather (docs/backend.md). Nothing is allocated per step.
#include <algorithm>
#include <cstddef>

#include "worker/expert_exchange.h"
#include "worker/model_internal.h"

namespace flotilla {
namespace {

using kernels::In;
using kernels::Out;

// Host elements [0, n) of a workspace staging vector as a span (reserved at start).
template <typename T>
std::span<T> Staging(std::vector<T>& v, int64_t n) {
  return std::span<T>(Use(v, n), size_t(n));
}

// This rank's experts over what arrived in one round, grouped by local expert in arrival order
// (the grouping is made on the host, which holds the records, and uploaded with them): the
// replies, in arrival order, into ws.exchange_replies (host), the host waiting for them.
absl::Status ExpertsOnReceived(kernels::Backend& backend, kernels::Queue& queue,
                               const MoeWeights& mw, bool quantized, const ExpertExchange& ex,
                               StepWorkspace& ws, int64_t d, float limit) {
  const int64_t num_local = int64_t(mw.experts.size()), received = ex.num_received();
  const int64_t rec = ex.record_bytes();
  int64_t* offsets = Use(ws.exchange_offsets, num_local + 1);
  int32_t* order = Use(ws.exchange_order, received);
  RETURN_IF_ERROR(ex.GroupByLocalExpert(num_local, offsets, order));
  bf16* replies = Use(ws.exchange_replies, received * d);
  // Nothing arrived: still wait for the queue, so that the host staging the previous round
  // uploaded from may be written again.
  if (received == 0) {
    RETURN_IF_BACKEND_ERROR(queue.Synchronize());
    return absl::OkStatus();
  }
  const Out<uint8_t> records = ws.exchange_records.span().first(received * rec);
  const Out<int64_t> offsets_dev = ws.expert_offsets.span().first(num_local + 1);
  const Out<int32_t> order_dev = ws.exchange_order_dev.span().first(received);
  RETURN_IF_BACKEND_ERROR(backend.Upload(
      queue, std::span<const uint8_t>(ex.records(), size_t(received * rec)), records));
  RETURN_IF_BACKEND_ERROR(
      backend.Upload(queue, std::span<const int64_t>(offsets, size_t(num_local + 1)), offsets_dev));
  RETURN_IF_BACKEND_ERROR(
      backend.Upload(queue, std::span<const int32_t>(order, size_t(received)), order_dev));
  // The records: header (token, slot, local expert, weight), then the payload.
  const In<uint8_t> bytes = records;
  ExpertRows in;
  if (quantized) {
    in.q = bytes.subspan(ExchangeLayout::kHeaderBytes);
    in.ld_q = rec;
    in.scale = bytes.subspan(ExchangeLayout::kHeaderBytes + d);
    in.ld_scale = rec;
  } else {
    in.x = bytes.subspan(ExchangeLayout::kHeaderBytes);
    in.ld_x = rec;
  }
  in.weight = bytes.subspan(offsetof(ExpertExchange::Header, weight));
  in.ld_weight = rec;
  const Out<bf16> replies_dev = ws.exchange_replies_dev.span().first(received * d);
  RETURN_IF_ERROR(GroupedExperts(backend, queue, mw, in, order_dev, offsets_dev, received, limit,
                                 replies_dev, d, ws));
  RETURN_IF_BACKEND_ERROR(backend.Download(queue, In<bf16>(replies_dev),
                                           std::span<bf16>(replies, size_t(received * d))));
  RETURN_IF_BACKEND_ERROR(queue.Synchronize());
  return absl::OkStatus();
}

}  // namespace

absl::Status Model::MoeDistributed(const MoeWeights& mw, const Rows& rows, In<bf16> x,
                                   Out<bf16> out) const {
  const ModelConfig& c = config_;
  const int64_t n = rows.n, d = c.hidden_size, k = top_k_;
  const float limit = float(c.swiglu_limit);
  StepWorkspace& ws = *ws_;
  kernels::Backend& backend = *backend_;
  kernels::Queue& queue = *queue_;

  // This TP rank's slice of the group's tokens.
  const IndexRange slice = SplitEvenly(n, par_.tp_size, par_.tp_rank);
  const int64_t ns = slice.size();
  const In<bf16> xs = ns > 0 ? x.subspan(slice.begin * d, ns * d) : In<bf16>{};
  const Out<int32_t> idx = ws.route_idx.span().first(ns * k);
  const Out<float> weights = ws.route_weights.span().first(ns * k);
  if (ns > 0) {
    RETURN_IF_ERROR(RouteTokens(backend, queue, c, mw, rows.token_dev.subspan(slice.begin, ns),
                                rows.experts_dev.subspan(slice.begin, ns),
                                rows.experts.data() + slice.begin, ns, k, xs, ws, idx, weights));
  }

  // Activations travel as FP8 codes + UE8M0 scales (quantised experts) or bf16: the slice's rows
  // and routing come to the host for the exchange.
  const bool quantized = c.Quantized();  // FP8 checkpoints carry FP4 or FP8 experts
  QuantizedActs& xq = ws.block_acts;
  const int64_t payload = quantized ? d + d / 128 : 2 * d;
  uint8_t* send = Use(ws.exchange_send, ns * payload);
  ExpertExchange::Piece pieces[2];
  int64_t num_pieces = 1;
  const std::span<int32_t> idx_host = Staging(ws.exchange_idx, ns * k);
  const std::span<float> weights_host = Staging(ws.exchange_weights, ns * k);
  if (quantized) {
    pieces[0] = {send, d, d};
    pieces[1] = {send + ns * d, d / 128, d / 128};
    num_pieces = 2;
  } else {
    pieces[0] = {send, 2 * d, 2 * d};
  }
  if (ns > 0) {
    if (quantized) {
      RETURN_IF_ERROR(QuantizeActs(backend, queue, xs, d, ns, d, xq));
      RETURN_IF_BACKEND_ERROR(
          backend.Download(queue, In<fp8>(xq.q.first(ns * d)),
                           std::span<fp8>(reinterpret_cast<fp8*>(send), size_t(ns * d))));
      RETURN_IF_BACKEND_ERROR(backend.Download(
          queue, In<e8m0>(xq.scale.first(ns * (d / 128))),
          std::span<e8m0>(reinterpret_cast<e8m0*>(send + ns * d), size_t(ns * (d / 128)))));
    } else {
      RETURN_IF_BACKEND_ERROR(backend.Download(
          queue, xs, std::span<bf16>(reinterpret_cast<bf16*>(send), size_t(ns * d))));
    }
    RETURN_IF_BACKEND_ERROR(backend.Download(queue, In<int32_t>(idx), idx_host));
    RETURN_IF_BACKEND_ERROR(backend.Download(queue, In<float>(weights), weights_host));
    RETURN_IF_BACKEND_ERROR(queue.Synchronize());
  }

  // Rounds of at most rows_per_round rows; every rank runs as many as the busiest needs (a rank
  // out of rows takes part with none). A round's routed rows come back to the host and go up to
  // `routed` (token * k + slot rows).
  const Out<bf16> routed = ws.routed.span().first(ns * k * d);
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
    RETURN_IF_ERROR(ex.Dispatch(*par_.ep, par_.placement, idx_host.data() + first,
                                weights_host.data() + first, m, k,
                                std::span(round, size_t(num_pieces)), r0 + m < ns, step_));
    RETURN_IF_ERROR(ExpertsOnReceived(backend, queue, mw, quantized, ex, ws, d, limit));
    bf16* back = Use(ws.exchange_routed, m * k * d);
    RETURN_IF_ERROR(ex.Combine(*par_.ep,
                               reinterpret_cast<const uint8_t*>(ws.exchange_replies.data()),
                               reinterpret_cast<uint8_t*>(back), step_));
    if (m > 0) {
      RETURN_IF_BACKEND_ERROR(backend.Upload(queue, std::span<const bf16>(back, size_t(m * k * d)),
                                             routed.subspan(first * d, m * k * d)));
    }
    if (!ex.any_more()) break;
  }

  Out<bf16> shared;
  if (mw.has_shared && ns > 0) {
    shared = ws.shared_out.span().first(ns * d);
    const bool sq = mw.shared.w1.TakesQuantizedInput();
    if (sq && !quantized) RETURN_IF_ERROR(QuantizeActs(backend, queue, xs, d, ns, d, xq));
    RETURN_IF_ERROR(ExpertForward(backend, queue, mw.shared, sq ? &xq : nullptr, xs, ns, {}, limit,
                                  shared, d, ws));
  }
  kernels::MoeCombineArgs cb;
  cb.expert_idx = idx;
  cb.routed = routed;
  cb.shared = shared;
  cb.n = ns;
  cb.k = k;
  cb.d = d;
  if (par_.tp_size == 1) {
    if (ns == 0) return absl::OkStatus();
    cb.out = out.first(ns * d);
    RETURN_IF_BACKEND_ERROR(backend.MoeCombine(queue, cb));
    return absl::OkStatus();
  }
  // The TP group all-gathers its token slices (padded to the widest slice) through the host.
  const int64_t widest = SplitEvenly(n, par_.tp_size, 0).size();
  bf16* ys = Use(ws.moe_slice, widest * d);
  if (ns > 0) {
    const Out<bf16> combined = ws.expert_out.span().first(ns * d);
    cb.out = combined;
    RETURN_IF_BACKEND_ERROR(backend.MoeCombine(queue, cb));
    RETURN_IF_BACKEND_ERROR(
        backend.Download(queue, In<bf16>(combined), std::span<bf16>(ys, size_t(ns * d))));
  }
  // The host waits for its slice, and (with or without one) for the uploads the last layer
  // issued from the staging written next.
  RETURN_IF_BACKEND_ERROR(queue.Synchronize());
  bf16* all = Use(ws.moe_gather, par_.tp_size * widest * d);
  RETURN_IF_ERROR(par_.tp->AllGather(ys, widest * d * 2, all, Site("moe token-slice all-gather")));
  for (int64_t t = 0; t < par_.tp_size; ++t) {
    const IndexRange sl = SplitEvenly(n, par_.tp_size, t);
    if (sl.size() == 0) continue;
    RETURN_IF_BACKEND_ERROR(
        backend.Upload(queue, std::span<const bf16>(all + t * widest * d, size_t(sl.size() * d)),
                       out.subspan(sl.begin * d, sl.size() * d)));
  }
  return absl::OkStatus();
}

}  // namespace flotilla
