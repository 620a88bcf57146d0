// Attention of every layer kind (spec §5–§7): query and KV paths, compressors with incremental
// state, the lightning indexer, and sparse attention over window + compressed rows. Every op is
// a Backend op on the model's queue over backend memory (weights, the step workspace, the KV
// pool); the host only cuts spans and page runs from metadata it holds (positions, chunk records,
// page tables). It waits only to stage tensor-parallel all-gathers through host memory.
#include <algorithm>
#include <cmath>
#include <span>

#include "worker/model_internal.h"

namespace flotilla {
namespace {

kernels::RopeArgs Rope(kernels::Out<bf16> x, int64_t ld, int64_t head_stride, int64_t tokens,
                       int64_t heads, int64_t offset, int64_t rope_dim,
                       kernels::In<int64_t> positions, kernels::In<float> freqs, bool inverse) {
  return {.x = x,
          .ld = ld,
          .head_stride = head_stride,
          .num_tokens = tokens,
          .num_heads = heads,
          .rope_offset = offset,
          .rope_dim = rope_dim,
          .positions = positions,
          .freqs = freqs,
          .inverse = inverse};
}

}  // namespace

// Feeds the chunk's tokens through a compressor's state in position order (CompressorUpdate),
// appending every completed entry (pooled, bf16, RMSNorm, RoPE at j*m, then FP8 simulation of
// the non-RoPE dims for the main compressor or Hadamard + FP4 simulation for the indexer's) to
// the cache. The state is read from the pool only when a block completes in the chunk; otherwise
// only the slots the chunk fills are written back.
absl::Status Model::Compress(const CompressorWeights& cw, const AttentionWeights& a, Rows& rows,
                             kernels::In<bf16> x, bool indexer) const {
  const int64_t d_model = config_.hidden_size, width = cw.width(), d = cw.dim, m = cw.ratio;
  const int64_t rope = config_.qk_rope_head_dim;
  const PagedKv::Compressor which =
      indexer ? PagedKv::Compressor::kIndexer : PagedKv::Compressor::kMain;
  StepWorkspace& ws = *ws_;
  kernels::Backend& backend = *backend_;
  kernels::Queue& queue = *queue_;
  const kernels::Out<float> k = ws.compressor_k.span().first(rows.n * width);
  const kernels::Out<float> g = ws.compressor_g.span().first(rows.n * width);
  for (const auto& [w, c] : {std::pair{cw.wkv, k}, std::pair{cw.wgate, g}}) {
    RETURN_IF_BACKEND_ERROR(backend.GemmF32(queue, {.a_bf16 = x,
                                                    .lda = d_model,
                                                    .w_bf16 = w,
                                                    .ldw = d_model,
                                                    .c = c,
                                                    .ldc = width,
                                                    .m = rows.n,
                                                    .n = width,
                                                    .k = d_model}));
  }

  const int64_t state = kv_->StateRows(a.layer_id, which) * width;
  const kernels::Out<float> st_kv = ws.state_kv.span().first(state);
  const kernels::Out<float> st_score = ws.state_score.span().first(state);
  for (const auto& ch : rows.chunks) {
    const SequencePageTables& tables = ch.seq->pages_;
    const int64_t first_entry = ch.start_pos / m;
    const int64_t n_new = kernels::CompressorEntries(ch.start_pos, ch.n, m);
    if (n_new > 0) RETURN_IF_ERROR(kv_->ReadState(tables, a.layer_id, which, st_kv, st_score));
    const kernels::Out<float> pooled = ws.pooled.span().first(n_new * d);
    const kernels::Out<int64_t> entry_pos = ws.entry_pos.span().first(n_new);
    RETURN_IF_BACKEND_ERROR(
        backend.CompressorUpdate(queue, {.k = k.subspan(ch.first_row * width, ch.n * width),
                                         .g = g.subspan(ch.first_row * width, ch.n * width),
                                         .ape = cw.ape,
                                         .n = ch.n,
                                         .width = width,
                                         .d = d,
                                         .ratio = m,
                                         .overlap = cw.overlap,
                                         .start_pos = ch.start_pos,
                                         .state_kv = st_kv,
                                         .state_score = st_score,
                                         .pooled = pooled,
                                         .entry_pos = entry_pos}));
    if (n_new > 0) {
      RETURN_IF_ERROR(kv_->WriteState(tables, a.layer_id, which, st_kv, st_score));
    } else {  // the chunk filled slots [start % m, + n) of the current block
      RETURN_IF_ERROR(kv_->WriteStateRows(tables, a.layer_id, which, st_kv, st_score,
                                          (cw.overlap ? m : 0) + ch.start_pos % m, ch.n));
      continue;
    }
    const kernels::Out<bf16> e = ws.compressed.span().first(n_new * d);
    RETURN_IF_BACKEND_ERROR(
        backend.ConvertF32ToBf16(queue, {.x = pooled, .count = n_new * d, .y = e}));
    RETURN_IF_BACKEND_ERROR(backend.RmsNorm(queue, {.x = e,
                                                    .ldx = d,
                                                    .w = cw.norm,
                                                    .m = n_new,
                                                    .d = d,
                                                    .eps = float(config_.rms_norm_eps),
                                                    .y = e,
                                                    .ldy = d}));
    RETURN_IF_BACKEND_ERROR(
        backend.ApplyRope(queue, Rope(e, d, d, n_new, 1, d - rope, rope, entry_pos, a.freqs,
                                      /*inverse=*/false)));
    if (indexer) {
      RETURN_IF_BACKEND_ERROR(backend.HadamardRotateBf16(queue, {.x = e, .rows = n_new, .dim = d}));
      RETURN_IF_BACKEND_ERROR(
          backend.Fp4SimulateInPlace(queue, {.x = e, .rows = n_new, .ld = d, .n = d, .block = 32}));
      RETURN_IF_ERROR(kv_->WriteKeys(tables, a.layer_id, first_entry, n_new, e));
    } else {
      // FP8 round trip of the non-RoPE dims in groups of 64 (a shorter last group is its own).
      RETURN_IF_BACKEND_ERROR(backend.Fp8SimulateInPlace(
          queue, {.x = e, .rows = n_new, .ld = d, .n = d - rope, .block = 64}));
      RETURN_IF_ERROR(kv_->WriteMain(tables, a.layer_id, first_entry, n_new, e));
    }
  }
  return absl::OkStatus();
}

absl::Status Model::KvPath(const AttentionWeights& a, const Rows& rows, kernels::In<bf16> x,
                           kernels::Out<bf16> kv) const {
  const int64_t d = config_.hidden_size, hd = config_.head_dim, rope = config_.qk_rope_head_dim;
  kernels::Backend& backend = *backend_;
  kernels::Queue& queue = *queue_;
  RETURN_IF_ERROR(LinearForward(backend, queue, a.wkv, x, d, rows.n, kv, hd, ws_->linear_acts));
  RETURN_IF_BACKEND_ERROR(backend.RmsNorm(queue, {.x = kv,
                                                  .ldx = hd,
                                                  .w = a.kv_norm,
                                                  .m = rows.n,
                                                  .d = hd,
                                                  .eps = float(config_.rms_norm_eps),
                                                  .y = kv,
                                                  .ldy = hd}));
  RETURN_IF_BACKEND_ERROR(backend.ApplyRope(
      queue, Rope(kv, hd, hd, rows.n, 1, hd - rope, rope, rows.pos_dev, a.freqs, false)));
  return FromBackend(backend.Fp8SimulateInPlace(
      queue, {.x = kv, .rows = rows.n, .ld = hd, .n = hd - rope, .block = 64}));
}

// The ring slots of each chunk's last min(n, W) positions.
absl::Status Model::WriteWindow(const Rows& rows, const AttentionWeights& a,
                                kernels::In<bf16> kv) const {
  const int64_t hd = config_.head_dim, w = config_.sliding_window;
  for (const auto& ch : rows.chunks) {
    const int64_t first = std::max<int64_t>(0, ch.n - w);
    for (int64_t i = first; i < ch.n;) {  // runs that do not wrap around the ring
      const int64_t slot = (ch.start_pos + i) % w;
      const int64_t run = std::min(ch.n - i, w - slot);
      RETURN_IF_ERROR(kv_->WriteWindow(ch.seq->pages_, a.layer_id, slot, run,
                                       kv.subspan((ch.first_row + i) * hd, run * hd)));
      i += run;
    }
  }
  return absl::OkStatus();
}

// With tensor parallelism this rank holds its query heads, sinks and output groups; the KV path
// and the compressors are computed on every rank (one KV head).
absl::Status Model::Attention(const BlockWeights& b, Rows& rows, kernels::In<bf16> x,
                              kernels::Out<bf16> out) const {
  const AttentionWeights& a = b.attn;
  const ModelConfig& c = config_;
  const int64_t n = rows.n, d = c.hidden_size, h = par_.heads.size(), hd = c.head_dim;
  const int64_t rope = c.qk_rope_head_dim, nope = hd - rope, qlr = c.q_lora_rank;
  const float eps = float(c.rms_norm_eps);
  StepWorkspace& ws = *ws_;
  kernels::Backend& backend = *backend_;
  kernels::Queue& queue = *queue_;

  // Every buffer below is written whole before it is read (no zeroing needed).
  // Query path (§5.1).
  const kernels::Out<bf16> qr = ws.q_lora.span().first(n * qlr);
  const kernels::Out<bf16> q = ws.query.span().first(n * h * hd);
  RETURN_IF_ERROR(LinearForward(backend, queue, a.wq_a, x, d, n, qr, qlr, ws.linear_acts));
  RETURN_IF_BACKEND_ERROR(backend.RmsNorm(
      queue,
      {.x = qr, .ldx = qlr, .w = a.q_norm, .m = n, .d = qlr, .eps = eps, .y = qr, .ldy = qlr}));
  RETURN_IF_ERROR(LinearForward(backend, queue, a.wq_b, qr, qlr, n, q, h * hd, ws.linear_acts));
  RETURN_IF_BACKEND_ERROR(
      backend.HeadRmsNormBf16(queue, {.q = q, .rows = n * h, .dim = hd, .eps = eps}));
  RETURN_IF_BACKEND_ERROR(backend.ApplyRope(
      queue, Rope(q, h * hd, hd, n, h, nope, rope, rows.pos_dev, a.freqs, false)));

  // KV path (§5.2); compressors (§6) run over the whole chunk before anyone attends, and a
  // query sees entry j only when j < floor((p+1)/m).
  const kernels::Out<bf16> kv = ws.kv.span().first(n * hd);
  RETURN_IF_ERROR(KvPath(a, rows, x, kv));
  if (a.compressor) RETURN_IF_ERROR(Compress(*a.compressor, a, rows, x, /*indexer=*/false));

  // Indexer queries and weights (§7 steps 1–5); the weights' scale 1/sqrt(ihd)/sqrt(ih) is
  // applied (rounded to bf16) where they are used, in IndexerTopK.
  const int64_t ih = c.index_n_heads, ih_local = par_.index_heads.size(), ihd = c.index_head_dim;
  if (a.indexer) {
    const IndexerWeights& ix = *a.indexer;
    RETURN_IF_ERROR(Compress(ix.compressor, a, rows, x, /*indexer=*/true));
    const kernels::Out<bf16> qi = ws.index_query.span().first(n * ih_local * ihd);
    RETURN_IF_ERROR(
        LinearForward(backend, queue, ix.wq_b, qr, qlr, n, qi, ih_local * ihd, ws.linear_acts));
    RETURN_IF_BACKEND_ERROR(
        backend.ApplyRope(queue, Rope(qi, ih_local * ihd, ihd, n, ih_local, ihd - rope, rope,
                                      rows.pos_dev, a.freqs, false)));
    RETURN_IF_BACKEND_ERROR(
        backend.HadamardRotateBf16(queue, {.x = qi, .rows = n * ih_local, .dim = ihd}));
    RETURN_IF_BACKEND_ERROR(backend.Fp4SimulateInPlace(
        queue, {.x = qi, .rows = n * ih_local, .ld = ihd, .n = ihd, .block = 32}));
    const kernels::Out<bf16> iw = ws.index_weights.span().first(n * ih_local);
    RETURN_IF_BACKEND_ERROR(backend.GemmBf16(queue, {.a = x,
                                                     .lda = d,
                                                     .w = ix.weights_proj,
                                                     .ldw = d,
                                                     .c = iw,
                                                     .ldc = ih_local,
                                                     .m = n,
                                                     .n = ih_local,
                                                     .k = d}));
    // Every TP rank scores with all heads: gathering the queries keeps the top-k identical to a
    // single process (no re-ordered head sum).
    if (par_.tp_size > 1) {
      RETURN_IF_ERROR(GatherHeads(qi, n, ih_local * ihd, "indexer query all-gather",
                                  ws.index_query.span().first(n * ih * ihd)));
      RETURN_IF_ERROR(GatherHeads(iw, n, ih_local, "indexer weight all-gather",
                                  ws.index_weights.span().first(n * ih)));
    }
  }

  // Each chunk attends on its own: its reads of the cache (the ring as it was before the chunk,
  // the compressed entries) are the workspace's, whatever the number of chunks.
  const kernels::Out<bf16> o = ws.attn_out.span().first(n * h * hd);
  if (a.indexer) {
    ws.Use(ws.num_picks, n);  // no picks before the first key block
  }
  for (size_t ci = 0; ci < rows.chunks.size(); ++ci) RETURN_IF_ERROR(AttendChunk(a, rows, ci));
  RETURN_IF_ERROR(WriteWindow(rows, a, kv));

  // Output path (§5.6): inverse RoPE, grouped wo_a (bf16), wo_b.
  RETURN_IF_BACKEND_ERROR(
      backend.ApplyRope(queue, Rope(o, h * hd, hd, n, h, nope, rope, rows.pos_dev, a.freqs, true)));
  const int64_t groups = par_.o_groups.size(), olr = c.o_lora_rank, gin = c.HeadsPerGroup() * hd;
  const int64_t tp = par_.tp_size;
  const kernels::Out<bf16> z = ws.wo_a_out.span().first(n * tp * groups * olr);
  for (int64_t gi = 0; gi < groups; ++gi) {
    RETURN_IF_BACKEND_ERROR(backend.GemmBf16(queue, {.a = o.subspan(gi * gin),
                                                     .lda = h * hd,
                                                     .w = a.wo_a.subspan(gi * olr * gin),
                                                     .ldw = gin,
                                                     .c = z.subspan(gi * olr),
                                                     .ldc = groups * olr,
                                                     .m = n,
                                                     .n = olr,
                                                     .k = gin}));
  }
  // The TP group all-gathers the groups' outputs and every rank applies the whole wo_b: bitwise
  // what one process computes (a split wo_b would round each rank's partial to bf16 first).
  if (tp > 1)
    RETURN_IF_ERROR(GatherHeads(z, n, groups * olr, "attention wo_a output all-gather", z));
  return LinearForward(backend, queue, a.wo_b, z, tp * groups * olr, n, out, d, ws.linear_acts);
}

absl::Status Model::AttendChunk(const AttentionWeights& a, const Rows& rows, int64_t ci) const {
  const ModelConfig& c = config_;
  const int64_t h = par_.heads.size(), hd = c.head_dim, ih = c.index_n_heads,
                ihd = c.index_head_dim;
  const int64_t window = c.sliding_window, topk = c.index_topk;
  StepWorkspace& ws = *ws_;
  kernels::Backend& backend = *backend_;
  kernels::Queue& queue = *queue_;
  const auto& ch = rows.chunks[size_t(ci)];
  const SequencePageTables& tables = ch.seq->pages_;
  const int64_t r0 = ch.first_row;

  // The ring as it was before the chunk; the compressed entries (HCA: all visible to its last
  // row; CSA: those some row of the chunk picks, at entry_slot[j]).
  kernels::Out<bf16> ring;
  if (ch.start_pos > 0) {
    ring = ws.ring.span().first(window * hd);
    RETURN_IF_ERROR(kv_->ReadWindow(tables, a.layer_id, ring));
  }
  const int64_t visible = a.ratio != 0 ? (ch.start_pos + ch.n) / a.ratio : 0;
  kernels::Out<bf16> entries;
  if (visible > 0 && !a.indexer) {
    entries = ws.entries.span().first(visible * hd);
    RETURN_IF_ERROR(kv_->ReadMain(tables, a.layer_id, 0, visible, entries));
  }

  // The indexer's top-k of each row (§7 steps 6–7): picks[r * topk + i], i < num_picks[r]. The
  // chunk's keys are read and unpacked in blocks of indexer_block_keys_, and each row folds each
  // block into its top-k so far (IndexerTopK). Nothing here grows with the context beyond one
  // block of keys.
  const kernels::Out<int32_t> picks = ws.picks.span().subspan(r0 * topk, ch.n * topk);
  const kernels::Out<int32_t> num_picks = ws.num_picks.span().subspan(r0, ch.n);
  kernels::Out<int32_t> entry_slot;
  if (a.indexer && visible > 0) {
    const float w_scale = float(1.0 / std::sqrt(double(ihd)) / std::sqrt(double(ih)));
    for (int64_t b0 = 0; b0 < visible; b0 += indexer_block_keys_) {
      const int64_t b1 = std::min(visible, b0 + indexer_block_keys_);
      const kernels::Out<bf16> block_keys = ws.block_keys.span().first((b1 - b0) * ihd);
      RETURN_IF_ERROR(kv_->ReadKeys(tables, a.layer_id, b0, b1 - b0, block_keys));
      RETURN_IF_BACKEND_ERROR(backend.IndexerTopK(
          queue, {.q = ws.index_query.span().subspan(r0 * ih * ihd, ch.n * ih * ihd),
                  .w = ws.index_weights.span().subspan(r0 * ih, ch.n * ih),
                  .w_scale = w_scale,
                  .keys = block_keys,
                  .first_key = b0,
                  .n_keys = b1 - b0,
                  .rows = ch.n,
                  .start_pos = ch.start_pos,
                  .ratio = a.ratio,
                  .num_heads = ih,
                  .dim = ihd,
                  .top_k = topk,
                  .picks = picks,
                  .pick_scores = ws.pick_scores.span().subspan(r0 * topk, ch.n * topk),
                  .num_picks = num_picks,
                  .max_keys = indexer_block_keys_}));
    }
    // The entries the chunk's rows picked, read once, in increasing order: entry_slot[j] is
    // entry j's row in `entries`, then the list of them and their count.
    const int64_t max_entries = std::min(visible, ws.layout.compressed_read);
    const kernels::Out<int32_t> slots = ws.entry_slot.span();
    entry_slot = slots.first(visible);
    const kernels::Out<int32_t> idx = slots.subspan(visible, max_entries);
    const kernels::Out<int32_t> count = slots.subspan(visible + max_entries, 1);
    RETURN_IF_BACKEND_ERROR(backend.PickedEntries(queue, {.picks = picks,
                                                          .num_picks = num_picks,
                                                          .rows = ch.n,
                                                          .top_k = topk,
                                                          .visible = visible,
                                                          .max_entries = max_entries,
                                                          .entry_slot = entry_slot,
                                                          .entry_idx = idx,
                                                          .count = count}));
    entries = ws.entries.span().first(max_entries * hd);
    RETURN_IF_ERROR(kv_->ReadMainAt(tables, a.layer_id, idx, count, max_entries, entries));
  }

  // Sparse attention per token (§5.4, §5.5) over W window slots and the compressed rows.
  kernels::ChunkAttentionArgs args{
      .q = ws.query.span().subspan(r0 * h * hd, ch.n * h * hd),
      .ldq = h * hd,
      .rows = ch.n,
      .start_pos = ch.start_pos,
      .window = window,
      .fresh = ws.kv.span().subspan(r0 * hd, ch.n * hd),
      .ring = ring,
      .ratio = a.ratio,
      .entries = entries,
      .top_k = topk,
      .sink = a.sink,  // this rank's heads
      .num_heads = h,
      .dim = hd,
      .scale = float(1.0 / std::sqrt(double(hd))),
      .out = ws.attn_out.span().subspan(r0 * h * hd, ch.n * h * hd),
      .ldo = h * hd,
      // A CSA row attends to top_k entries at most, an HCA row to all it sees.
      .max_compressed = a.indexer      ? topk
                        : a.ratio != 0 ? ws.layout.limits.max_context / a.ratio
                                       : 0};
  if (a.indexer) {
    args.picks = picks;
    args.num_picks = num_picks;
    args.entry_slot = entry_slot;
  }
  return FromBackend(backend.ChunkAttention(queue, args));
}

}  // namespace flotilla
