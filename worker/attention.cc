// Attention of every layer kind (spec §5–§7): query and KV paths, compressors with incremental
// state, the lightning indexer, and sparse attention over window + compressed rows.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "kernels/ops.h"
#include "worker/host_bridge.h"
#include "worker/model_internal.h"

namespace flotilla {
namespace {

void RopeRows(bf16* x, int64_t ld, int64_t head_stride, int64_t tokens, int64_t heads,
              int64_t offset, int64_t rope_dim, const int64_t* positions, const float* freqs,
              bool inverse) {
  kernels::RopeParams p;
  p.x = x;
  p.ld = ld;
  p.head_stride = head_stride;
  p.num_tokens = tokens;
  p.num_heads = heads;
  p.rope_offset = offset;
  p.rope_dim = rope_dim;
  p.positions = positions;
  p.freqs = freqs;
  p.inverse = inverse;
  kernels::ApplyRope(p);
}

void GemmF32FromBf16(const bf16* a, int64_t lda, const bf16* w, int64_t m, int64_t n, int64_t k,
                     float* c) {
  kernels::GemmF32Params p;
  p.a_bf16 = a;
  p.lda = lda;
  p.w_bf16 = w;
  p.ldw = k;
  p.c = c;
  p.ldc = n;
  p.m = m;
  p.n = n;
  p.k = k;
  kernels::GemmF32(p);
}

// fn(r, scratch) for rows [first, first + n): several rows in parallel, one row on the calling
// thread, so that the kernels it calls use the threads. (An inactive parallel region around them
// would not do: their regions would nest inside it and get a new team per call.)
template <typename Fn>
void ForEachRow(int64_t first, int64_t n, std::vector<StepWorkspace::ThreadScratch>& scratch,
                Fn fn) {
  if (n == 1) {
    fn(first, scratch[0]);
    return;
  }
#pragma omp parallel num_threads(std::min(int(scratch.size()), omp_get_max_threads()))
  {
    StepWorkspace::ThreadScratch& t = scratch[size_t(omp_get_thread_num())];
#pragma omp for schedule(dynamic, 1)
    for (int64_t r = first; r < first + n; ++r) fn(r, t);
  }
}

}  // namespace

void Fp8SimulateNope(bf16* x, int64_t rows, int64_t ld, int64_t nope) {
  kernels::Fp8SimulateInPlace(x, rows, ld, nope, 64);  // a shorter last group is its own group
}

// Feeds the chunk's tokens through a compressor's state in position order, appending every
// completed entry (pooled, bf16, RMSNorm, RoPE at j*m, then FP8 simulation of the non-RoPE dims
// for the main compressor or Hadamard + FP4 simulation for the indexer's) to the cache. The state
// is read from the pool only when a block completes in the chunk; otherwise only the slots the
// chunk fills are written.
absl::Status Model::Compress(const CompressorWeights& cw, const AttentionWeights& a, Rows& rows,
                             kernels::In<bf16> x_span, bool indexer) const {
  const int64_t d_model = config_.hidden_size, width = cw.width(), d = cw.dim, m = cw.ratio;
  const int64_t rope = config_.qk_rope_head_dim;
  const PagedKv::Compressor which =
      indexer ? PagedKv::Compressor::kIndexer : PagedKv::Compressor::kMain;
  StepWorkspace& ws = *ws_;
  const bf16* x = HostOf(x_span);
  float* k = HostOf(ws.Use(ws.compressor_k, rows.n * width));
  float* g = HostOf(ws.Use(ws.compressor_g, rows.n * width));
  GemmF32FromBf16(x, d_model, HostOf(cw.wkv), rows.n, width, d_model, k);
  GemmF32FromBf16(x, d_model, HostOf(cw.wgate), rows.n, width, d_model, g);

  for (const auto& ch : rows.chunks) {
    const SequencePageTables& tables = ch.seq->pages_;
    const int64_t first_entry = ch.start_pos / m;
    const bool completes = (ch.start_pos + ch.n) / m > first_entry;
    CompressorState& st = ws.state;
    if (completes) {
      RETURN_IF_ERROR(kv_->ReadState(tables, a.layer_id, which, &st));
    } else {
      Use(st.kv, kv_->StateRows(a.layer_id, which) * width);
      Use(st.score, int64_t(st.kv.size()));
    }
    float* pooled = HostOf(ws.pooled.span());
    int64_t num_pooled = 0;
    std::vector<int64_t>& entry_pos = ws.entry_pos;
    entry_pos.clear();
    std::vector<const float*>& k_rows = ws.k_rows;
    std::vector<const float*>& g_rows = ws.g_rows;
    Use(k_rows, cw.overlap ? 2 * m : m);
    Use(g_rows, int64_t(k_rows.size()));
    for (int64_t i = 0; i < ch.n; ++i) {
      const int64_t p = ch.start_pos + i, r = ch.first_row + i;
      const int64_t slot = (cw.overlap ? m : 0) + p % m;
      float* kv_slot = st.kv.data() + slot * width;
      float* sc_slot = st.score.data() + slot * width;
      const float* ape = HostOf(cw.ape) + (p % m) * width;
      for (int64_t c = 0; c < width; ++c) {
        kv_slot[c] = k[r * width + c];
        sc_slot[c] = g[r * width + c] + ape[c];
      }
      if ((p + 1) % m != 0) continue;
      if (cw.overlap) {  // A-half of the previous block, B-half of this one
        for (int64_t s = 0; s < m; ++s) {
          k_rows[s] = st.kv.data() + s * width;
          g_rows[s] = st.score.data() + s * width;
          k_rows[m + s] = st.kv.data() + (m + s) * width + d;
          g_rows[m + s] = st.score.data() + (m + s) * width + d;
        }
      } else {
        for (int64_t s = 0; s < m; ++s) {
          k_rows[s] = st.kv.data() + s * width;
          g_rows[s] = st.score.data() + s * width;
        }
      }
      FLOTILLA_CHECK((num_pooled + 1) * d <= ws.pooled.size());
      kernels::CompressPool(k_rows.data(), g_rows.data(), int64_t(k_rows.size()), d,
                            pooled + num_pooled * d);
      ++num_pooled;
      entry_pos.push_back(p / m * m);
      if (cw.overlap) {  // the finished block becomes "previous"
        std::copy(st.kv.begin() + m * width, st.kv.end(), st.kv.begin());
        std::copy(st.score.begin() + m * width, st.score.end(), st.score.begin());
      }
    }
    if (completes) {
      RETURN_IF_ERROR(kv_->WriteState(tables, a.layer_id, which, st));
    } else {  // the chunk filled slots [start % m, + n) of the current block
      RETURN_IF_ERROR(kv_->WriteStateRows(tables, a.layer_id, which, st,
                                          (cw.overlap ? m : 0) + ch.start_pos % m, ch.n));
    }
    const int64_t n_new = int64_t(entry_pos.size());
    if (n_new == 0) continue;
    bf16* e = HostOf(ws.Use(ws.compressed, n_new * d));
    for (int64_t i = 0; i < n_new * d; ++i) e[i] = F32ToBf16(pooled[i]);
    kernels::RmsNorm(e, d, HostOf(cw.norm), n_new, d, float(config_.rms_norm_eps), e, d);
    RopeRows(e, d, d, n_new, 1, d - rope, rope, entry_pos.data(), HostOf(a.freqs), false);
    if (indexer) {
      kernels::HadamardRotateBf16(e, n_new, d);
      kernels::Fp4SimulateInPlace(e, n_new, d, d, 32);
      RETURN_IF_ERROR(kv_->WriteKeys(tables, a.layer_id, first_entry, n_new, e));
    } else {
      Fp8SimulateNope(e, n_new, d, d - rope);
      RETURN_IF_ERROR(kv_->WriteMain(tables, a.layer_id, first_entry, n_new, e));
    }
  }
  return absl::OkStatus();
}

absl::Status Model::KvPath(const AttentionWeights& a, const Rows& rows, kernels::In<bf16> x,
                           kernels::Out<bf16> kv_span) const {
  const int64_t d = config_.hidden_size, hd = config_.head_dim, rope = config_.qk_rope_head_dim;
  RETURN_IF_ERROR(
      LinearForward(*backend_, *queue_, a.wkv, x, d, rows.n, kv_span, hd, ws_->linear_acts));
  bf16* kv = HostOf(kv_span);
  kernels::RmsNorm(kv, hd, HostOf(a.kv_norm), rows.n, hd, float(config_.rms_norm_eps), kv, hd);
  RopeRows(kv, hd, hd, rows.n, 1, hd - rope, rope, rows.pos.data(), HostOf(a.freqs), false);
  Fp8SimulateNope(kv, rows.n, hd, hd - rope);
  return absl::OkStatus();
}

// The ring slots of each chunk's last min(n, W) positions.
absl::Status Model::WriteWindow(const Rows& rows, const AttentionWeights& a,
                                kernels::In<bf16> kv_span) const {
  const bf16* kv = HostOf(kv_span);
  const int64_t hd = config_.head_dim, w = config_.sliding_window;
  for (const auto& ch : rows.chunks) {
    const int64_t first = std::max<int64_t>(0, ch.n - w);
    for (int64_t i = first; i < ch.n;) {  // runs that do not wrap around the ring
      const int64_t slot = (ch.start_pos + i) % w;
      const int64_t run = std::min(ch.n - i, w - slot);
      RETURN_IF_ERROR(
          kv_->WriteWindow(ch.seq->pages_, a.layer_id, slot, run, kv + (ch.first_row + i) * hd));
      i += run;
    }
  }
  return absl::OkStatus();
}

absl::Status Model::GatherHeads(kernels::In<bf16> local_span, int64_t n, int64_t count,
                                const char* what, kernels::Out<bf16> full_span) const {
  const int64_t tp = par_.tp_size;
  const bf16* local = HostOf(local_span);
  bf16* full = HostOf(full_span);
  bf16* all = HostOf(ws_->Use(ws_->gather, tp * n * count));
  RETURN_IF_ERROR(par_.tp->AllGather(local, size_t(n * count) * 2, all, Site(what)));
  for (int64_t t = 0; t < tp; ++t)
    for (int64_t r = 0; r < n; ++r)
      std::copy_n(&all[(t * n + r) * count], count, &full[(r * tp + t) * count]);
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
  const float* freqs = HostOf(a.freqs);

  // Query path (§5.1).
  bf16* qr = HostOf(ws.Use(ws.q_lora, n * qlr));
  bf16* q = HostOf(ws.Use(ws.query, n * h * hd));
  RETURN_IF_ERROR(
      LinearForward(backend, queue, a.wq_a, x, d, n, ws.q_lora.span(), qlr, ws.linear_acts));
  kernels::RmsNorm(qr, qlr, HostOf(a.q_norm), n, qlr, eps, qr, qlr);
  RETURN_IF_ERROR(LinearForward(backend, queue, a.wq_b, ws.q_lora.span(), qlr, n, ws.query.span(),
                                h * hd, ws.linear_acts));
  kernels::HeadRmsNormBf16(q, n * h, hd, eps);
  RopeRows(q, h * hd, hd, n, h, nope, rope, rows.pos.data(), freqs, false);

  // KV path (§5.2); compressors (§6) run over the whole chunk before anyone attends, and a
  // query sees entry j only when j < floor((p+1)/m).
  const kernels::Out<bf16> kv = ws.Use(ws.kv, n * hd);
  RETURN_IF_ERROR(KvPath(a, rows, x, kv));
  if (a.compressor) RETURN_IF_ERROR(Compress(*a.compressor, a, rows, x, /*indexer=*/false));

  // Indexer queries and weights (§7 steps 1–5).
  const int64_t ih = c.index_n_heads, ih_local = par_.index_heads.size(), ihd = c.index_head_dim;
  if (a.indexer) {
    const IndexerWeights& ix = *a.indexer;
    RETURN_IF_ERROR(Compress(ix.compressor, a, rows, x, /*indexer=*/true));
    bf16* qi = HostOf(ws.Use(ws.index_query, n * ih_local * ihd));
    RETURN_IF_ERROR(LinearForward(backend, queue, ix.wq_b, ws.q_lora.span(), qlr, n,
                                  ws.index_query.span(), ih_local * ihd, ws.linear_acts));
    RopeRows(qi, ih_local * ihd, ihd, n, ih_local, ihd - rope, rope, rows.pos.data(), freqs, false);
    kernels::HadamardRotateBf16(qi, n * ih_local, ihd);
    kernels::Fp4SimulateInPlace(qi, n * ih_local, ihd, ihd, 32);
    bf16* iw = HostOf(ws.Use(ws.index_weights, n * ih_local));
    kernels::GemmBf16Params p;
    p.a = HostOf(x);
    p.lda = d;
    p.w = HostOf(ix.weights_proj);
    p.ldw = d;
    p.c = iw;
    p.ldc = ih_local;
    p.m = n;
    p.n = ih_local;
    p.k = d;
    kernels::GemmBf16(p);
    const float wscale = float(1.0 / std::sqrt(double(ihd)) / std::sqrt(double(ih)));
    for (int64_t i = 0; i < n * ih_local; ++i) iw[i] = F32ToBf16(Bf16ToF32(iw[i]) * wscale);
    // Every TP rank scores with all heads: gathering the queries keeps the top-k identical to a
    // single process (no re-ordered head sum).
    if (par_.tp_size > 1) {
      RETURN_IF_ERROR(GatherHeads(ws.index_query.span(), n, ih_local * ihd,
                                  "indexer query all-gather", ws.index_query.span()));
      RETURN_IF_ERROR(GatherHeads(ws.index_weights.span(), n, ih_local, "indexer weight all-gather",
                                  ws.index_weights.span()));
    }
  }

  // Each chunk attends on its own: its reads of the cache (the ring as it was before the chunk,
  // the compressed entries) are the workspace's, whatever the number of chunks.
  bf16* o = HostOf(ws.Use(ws.attn_out, n * h * hd));
  if (a.indexer) {
    ws.Use(ws.picks, n * c.index_topk);
    ws.Use(ws.num_picks, n);
    ws.Use(ws.pick_scores, n * c.index_topk);
  }
  for (size_t ci = 0; ci < rows.chunks.size(); ++ci) RETURN_IF_ERROR(AttendChunk(a, rows, ci));
  RETURN_IF_ERROR(WriteWindow(rows, a, kv));

  // Output path (§5.6): inverse RoPE, grouped wo_a (bf16), wo_b.
  RopeRows(o, h * hd, hd, n, h, nope, rope, rows.pos.data(), freqs, true);
  const int64_t groups = par_.o_groups.size(), olr = c.o_lora_rank, gin = c.HeadsPerGroup() * hd;
  bf16* z = HostOf(ws.Use(ws.wo_a_out, n * groups * olr));
  for (int64_t gi = 0; gi < groups; ++gi) {
    kernels::GemmBf16Params p;
    p.a = o + gi * gin;
    p.lda = h * hd;
    p.w = HostOf(a.wo_a) + gi * olr * gin;
    p.ldw = gin;
    p.c = z + gi * olr;
    p.ldc = groups * olr;
    p.m = n;
    p.n = olr;
    p.k = gin;
    kernels::GemmBf16(p);
  }
  // The TP group all-gathers the groups' outputs and every rank applies the whole wo_b: bitwise
  // what one process computes (a split wo_b would round each rank's partial to bf16 first).
  if (par_.tp_size > 1) {
    RETURN_IF_ERROR(GatherHeads(ws.wo_a_out.span(), n, groups * olr,
                                "attention wo_a output all-gather", ws.wo_a_out.span()));
  }
  RETURN_IF_ERROR(LinearForward(backend, queue, a.wo_b, ws.wo_a_out.span(),
                                par_.tp_size * groups * olr, n, out, d, ws.linear_acts));
  return absl::OkStatus();
}

absl::Status Model::AttendChunk(const AttentionWeights& a, const Rows& rows, int64_t ci) const {
  const ModelConfig& c = config_;
  const int64_t h = par_.heads.size(), hd = c.head_dim, ih = c.index_n_heads,
                ihd = c.index_head_dim;
  const int64_t window = c.sliding_window, topk = c.index_topk;
  StepWorkspace& ws = *ws_;
  const auto& ch = rows.chunks[size_t(ci)];
  const SequencePageTables& tables = ch.seq->pages_;
  const bf16* kv = HostOf(ws.kv.span());
  const bf16* q = HostOf(ws.query.span());
  bf16* o = HostOf(ws.attn_out.span());

  // The ring as it was before the chunk; the compressed entries (HCA: all visible to its last
  // row; CSA: those some row of the chunk picks, at entry_slot[j]).
  bf16* ring = nullptr;
  if (ch.start_pos > 0) {
    ring = HostOf(ws.Use(ws.ring, window * hd));
    RETURN_IF_ERROR(kv_->ReadWindow(tables, a.layer_id, ring));
  }
  const int64_t visible = a.ratio != 0 ? (ch.start_pos + ch.n) / a.ratio : 0;
  bf16* entries = HostOf(ws.entries.span());
  if (visible > 0 && !a.indexer) {
    entries = HostOf(ws.Use(ws.entries, visible * hd));
    RETURN_IF_ERROR(kv_->ReadMain(tables, a.layer_id, 0, visible, entries));
  }

  // The indexer's top-k of each row (§7 steps 6–7): picks[r * topk + i], i < num_picks[r]. The
  // chunk's keys are read and unpacked in blocks of indexer_block_keys_, and each row keeps its
  // top-k as it goes: TopK's order is total (score, NaN last, then index), so the top-k of a
  // row's top-k so far and the next block is the top-k of everything so far, in the same order.
  // Nothing here grows with the context beyond one block of keys.
  int32_t* picks = HostOf(ws.picks.span());
  int32_t* num_picks = HostOf(ws.num_picks.span());
  const int32_t* entry_slot = nullptr;
  if (a.indexer && visible > 0) {
    float* pick_scores = HostOf(ws.pick_scores.span());
    for (int64_t b0 = 0; b0 < visible; b0 += indexer_block_keys_) {
      const int64_t b1 = std::min(visible, b0 + indexer_block_keys_);
      bf16* block_keys = HostOf(ws.Use(ws.block_keys, (b1 - b0) * ihd));
      RETURN_IF_ERROR(kv_->ReadKeys(tables, a.layer_id, b0, b1 - b0, block_keys));
      const bf16* qi = HostOf(ws.index_query.span());
      const bf16* iw = HostOf(ws.index_weights.span());
      ForEachRow(ch.first_row, ch.n, ws.threads, [&](int64_t r, StepWorkspace::ThreadScratch& t) {
        std::vector<float>& scores = t.scores;
        std::vector<int32_t>& idx = t.idx;
        std::vector<int32_t>& order = t.order;
        std::vector<int32_t>& sel = t.sel;
        {
          const int64_t e1 = std::min((rows.pos[r] + 1) / a.ratio, b1);
          if (e1 <= b0) return;
          // The row's picks so far in index order, then this block's keys: candidates in
          // index order, so TopK's ties by position are ties by key index.
          const int64_t have = num_picks[r], count = e1 - b0;
          int32_t* row_picks = picks + r * topk;
          float* row_scores = pick_scores + r * topk;
          order.resize(size_t(have));
          for (int64_t i = 0; i < have; ++i) order[i] = int32_t(i);
          std::sort(order.begin(), order.end(),
                    [&](int32_t x, int32_t y) { return row_picks[x] < row_picks[y]; });
          scores.resize(size_t(have + count));
          idx.resize(size_t(have + count));
          for (int64_t i = 0; i < have; ++i) {
            idx[i] = row_picks[order[i]];
            scores[i] = row_scores[order[i]];
          }
          kernels::IndexerScoreParams sp;
          sp.q = qi + r * ih * ihd;
          sp.w = iw + r * ih;
          sp.keys = block_keys;
          sp.ldk = ihd;
          sp.n = count;
          sp.num_heads = ih;
          sp.dim = ihd;
          sp.scores = scores.data() + have;
          kernels::IndexerScores(sp);
          for (int64_t j = 0; j < count; ++j) {
            scores[have + j] = RoundBf16(scores[have + j]);
            idx[have + j] = int32_t(b0 + j);
          }
          const int64_t k = std::min(topk, have + count);
          sel.resize(size_t(k));
          kernels::TopK(scores.data(), have + count, k, sel.data());
          for (int64_t i = 0; i < k; ++i) {
            row_picks[i] = idx[sel[i]];
            row_scores[i] = scores[sel[i]];
          }
          num_picks[r] = int32_t(k);
        }
      });
    }
    // The entries the chunk's rows picked, read once, in increasing order.
    int32_t* slot = Use(ws.entry_slot, visible + ws.layout.compressed_read);
    int32_t* idx = slot + visible;
    for (int64_t j = 0; j < visible; ++j) slot[j] = -1;
    for (int64_t r = ch.first_row; r < ch.first_row + ch.n; ++r)
      for (int32_t i = 0; i < num_picks[r]; ++i) slot[picks[r * topk + i]] = 0;
    int64_t count = 0;
    for (int64_t j = 0; j < visible; ++j) {
      if (slot[j] < 0) continue;
      slot[j] = int32_t(count);
      idx[count++] = int32_t(j);
    }
    entries = HostOf(ws.Use(ws.entries, count * hd));
    RETURN_IF_ERROR(
        kv_->ReadMainAt(tables, a.layer_id, std::span<const int32_t>(idx, size_t(count)), entries));
    entry_slot = slot;
  }

  // Sparse attention per token (§5.4, §5.5).
  const float scale = float(1.0 / std::sqrt(double(hd)));
  ForEachRow(ch.first_row, ch.n, ws.threads, [&](int64_t r, StepWorkspace::ThreadScratch& t) {
    std::vector<const bf16*>& list = t.list;
    {
      const int64_t p = rows.pos[r];
      list.clear();
      for (int64_t t = std::max<int64_t>(0, p - window + 1); t <= p; ++t) {
        list.push_back(t >= ch.start_pos ? kv + (ch.first_row + t - ch.start_pos) * hd
                                         : ring + (t % window) * hd);
      }
      list.resize(size_t(window), nullptr);  // reference layout: window part is always W wide
      if (a.ratio != 0 && !a.indexer) {
        const int64_t row_visible = (p + 1) / a.ratio;
        for (int64_t j = 0; j < row_visible; ++j) list.push_back(entries + j * hd);
      } else if (a.indexer) {
        for (int32_t i = 0; i < num_picks[r]; ++i) {
          list.push_back(entries + int64_t(entry_slot[picks[r * topk + i]]) * hd);
        }
      }
      kernels::SparseAttentionParams ap;
      ap.q = q + r * h * hd;
      ap.rows = list.data();
      ap.n = int64_t(list.size());
      ap.sink = HostOf(a.sink);  // this rank's heads
      ap.num_heads = h;
      ap.dim = hd;
      ap.scale = scale;
      ap.out = o + r * h * hd;
      kernels::SparseAttention(ap);
    }
  });
  return absl::OkStatus();
}

}  // namespace flotilla
