// Attention of every layer kind (spec §5–§7): query and KV paths, compressors with incremental
// state, the lightning indexer, and sparse attention over window + compressed rows.
#include <algorithm>
#include <cmath>

#include "kernels/ops.h"
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
                             const bf16* x, bool indexer) const {
  const int64_t d_model = config_.hidden_size, width = cw.width(), d = cw.dim, m = cw.ratio;
  const int64_t rope = config_.qk_rope_head_dim;
  const PagedKv::Compressor which = indexer ? PagedKv::Compressor::kIndexer
                                            : PagedKv::Compressor::kMain;
  std::vector<float> k(rows.n * width), g(rows.n * width);
  GemmF32FromBf16(x, d_model, cw.wkv, rows.n, width, d_model, k.data());
  GemmF32FromBf16(x, d_model, cw.wgate, rows.n, width, d_model, g.data());

  for (const auto& ch : rows.chunks) {
    const SequencePageTables& tables = ch.seq->pages_;
    const int64_t first_entry = ch.start_pos / m;
    const bool completes = (ch.start_pos + ch.n) / m > first_entry;
    CompressorState st;
    if (completes) {
      RETURN_IF_ERROR(kv_->ReadState(tables, a.layer_id, which, &st));
    } else {
      st.kv.resize(kv_->StateRows(a.layer_id, which) * width);
      st.score.resize(st.kv.size());
    }
    std::vector<float> pooled;
    std::vector<int64_t> entry_pos;
    std::vector<const float*> k_rows(cw.overlap ? 2 * m : m), g_rows(k_rows.size());
    for (int64_t i = 0; i < ch.n; ++i) {
      const int64_t p = ch.start_pos + i, r = ch.first_row + i;
      const int64_t slot = (cw.overlap ? m : 0) + p % m;
      float* kv_slot = st.kv.data() + slot * width;
      float* sc_slot = st.score.data() + slot * width;
      const float* ape = cw.ape + (p % m) * width;
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
      pooled.resize(pooled.size() + d);
      kernels::CompressPool(k_rows.data(), g_rows.data(), int64_t(k_rows.size()), d,
                            pooled.data() + pooled.size() - d);
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
    std::vector<bf16> out(n_new * d);
    bf16* e = out.data();
    for (int64_t i = 0; i < n_new * d; ++i) e[i] = F32ToBf16(pooled[i]);
    kernels::RmsNorm(e, d, cw.norm, n_new, d, float(config_.rms_norm_eps), e, d);
    RopeRows(e, d, d, n_new, 1, d - rope, rope, entry_pos.data(), a.freqs.data(), false);
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

void Model::KvPath(const AttentionWeights& a, const Rows& rows, const bf16* x, bf16* kv) const {
  const int64_t d = config_.hidden_size, hd = config_.head_dim, rope = config_.qk_rope_head_dim;
  LinearForward(a.wkv, x, d, rows.n, kv, hd);
  kernels::RmsNorm(kv, hd, a.kv_norm, rows.n, hd, float(config_.rms_norm_eps), kv, hd);
  RopeRows(kv, hd, hd, rows.n, 1, hd - rope, rope, rows.pos.data(), a.freqs.data(), false);
  Fp8SimulateNope(kv, rows.n, hd, hd - rope);
}

// The ring slots of each chunk's last min(n, W) positions.
absl::Status Model::WriteWindow(const Rows& rows, const AttentionWeights& a, const bf16* kv) const {
  const int64_t hd = config_.head_dim, w = config_.sliding_window;
  for (const auto& ch : rows.chunks) {
    const int64_t first = std::max<int64_t>(0, ch.n - w);
    for (int64_t i = first; i < ch.n;) {  // runs that do not wrap around the ring
      const int64_t slot = (ch.start_pos + i) % w;
      const int64_t run = std::min(ch.n - i, w - slot);
      RETURN_IF_ERROR(kv_->WriteWindow(ch.seq->pages_, a.layer_id, slot, run,
                                       kv + (ch.first_row + i) * hd));
      i += run;
    }
  }
  return absl::OkStatus();
}

absl::Status Model::GatherHeads(const std::vector<bf16>& local, int64_t n, int64_t count,
                               const char* what, std::vector<bf16>* full) const {
  const int64_t tp = par_.tp_size;
  std::vector<bf16> all(tp * n * count);
  RETURN_IF_ERROR(par_.tp->AllGather(local.data(), local.size() * 2, all.data(), Site(what)));
  full->resize(n * tp * count);
  for (int64_t t = 0; t < tp; ++t)
    for (int64_t r = 0; r < n; ++r)
      std::copy_n(&all[(t * n + r) * count], count, &(*full)[(r * tp + t) * count]);
  return absl::OkStatus();
}

// With tensor parallelism this rank holds its query heads, sinks and output groups; the KV path
// and the compressors are computed on every rank (one KV head).
absl::Status Model::Attention(const BlockWeights& b, Rows& rows, const bf16* x, bf16* out) const {
  const AttentionWeights& a = b.attn;
  const ModelConfig& c = config_;
  const int64_t n = rows.n, d = c.hidden_size, h = par_.heads.size(), hd = c.head_dim;
  const int64_t rope = c.qk_rope_head_dim, nope = hd - rope, qlr = c.q_lora_rank;
  const float eps = float(c.rms_norm_eps);

  // Query path (§5.1).
  std::vector<bf16> qr(n * qlr), q(n * h * hd);
  LinearForward(a.wq_a, x, d, n, qr.data(), qlr);
  kernels::RmsNorm(qr.data(), qlr, a.q_norm, n, qlr, eps, qr.data(), qlr);
  LinearForward(a.wq_b, qr.data(), qlr, n, q.data(), h * hd);
  kernels::HeadRmsNormBf16(q.data(), n * h, hd, eps);
  RopeRows(q.data(), h * hd, hd, n, h, nope, rope, rows.pos.data(), a.freqs.data(), false);

  // KV path (§5.2); compressors (§6) run over the whole chunk before anyone attends, and a
  // query sees entry j only when j < floor((p+1)/m).
  std::vector<bf16> kv(n * hd);
  KvPath(a, rows, x, kv.data());
  if (a.compressor) RETURN_IF_ERROR(Compress(*a.compressor, a, rows, x, /*indexer=*/false));

  // Indexer queries and weights (§7 steps 1–5).
  const int64_t ih = c.index_n_heads, ih_local = par_.index_heads.size(),
                ihd = c.index_head_dim;
  std::vector<bf16> qi, iw;
  if (a.indexer) {
    const IndexerWeights& ix = *a.indexer;
    RETURN_IF_ERROR(Compress(ix.compressor, a, rows, x, /*indexer=*/true));
    qi.resize(n * ih_local * ihd);
    LinearForward(ix.wq_b, qr.data(), qlr, n, qi.data(), ih_local * ihd);
    RopeRows(qi.data(), ih_local * ihd, ihd, n, ih_local, ihd - rope, rope, rows.pos.data(),
             a.freqs.data(), false);
    kernels::HadamardRotateBf16(qi.data(), n * ih_local, ihd);
    kernels::Fp4SimulateInPlace(qi.data(), n * ih_local, ihd, ihd, 32);
    iw.resize(n * ih_local);
    kernels::GemmBf16Params p;
    p.a = x;
    p.lda = d;
    p.w = ix.weights_proj;
    p.ldw = d;
    p.c = iw.data();
    p.ldc = ih_local;
    p.m = n;
    p.n = ih_local;
    p.k = d;
    kernels::GemmBf16(p);
    const float wscale = float(1.0 / std::sqrt(double(ihd)) / std::sqrt(double(ih)));
    for (auto& v : iw) v = F32ToBf16(Bf16ToF32(v) * wscale);
    // Every TP rank scores with all heads: gathering the queries keeps the top-k identical to a
    // single process (no re-ordered head sum).
    if (par_.tp_size > 1) {
      std::vector<bf16> full;
      RETURN_IF_ERROR(GatherHeads(qi, n, ih_local * ihd, "indexer query all-gather", &full));
      qi.swap(full);
      RETURN_IF_ERROR(GatherHeads(iw, n, ih_local, "indexer weight all-gather", &full));
      iw.swap(full);
    }
  }

  // What each chunk reads from its cache: the ring as it was before the chunk and the compressed
  // entries (HCA: all visible to its last row; CSA: those some row of the chunk picks, at
  // entry_slot[j]).
  const int64_t window = c.sliding_window, topk = c.index_topk;
  struct ChunkKv {
    std::vector<bf16> ring, entries;
    std::vector<int32_t> entry_slot;
  };
  std::vector<ChunkKv> ckv(rows.chunks.size());
  for (size_t ci = 0; ci < rows.chunks.size(); ++ci) {
    const auto& ch = rows.chunks[ci];
    const SequencePageTables& tables = ch.seq->pages_;
    ChunkKv& k = ckv[ci];
    if (ch.start_pos > 0) {
      k.ring.resize(window * hd);
      RETURN_IF_ERROR(kv_->ReadWindow(tables, a.layer_id, k.ring.data()));
    }
    const int64_t visible = a.ratio != 0 ? (ch.start_pos + ch.n) / a.ratio : 0;
    if (visible == 0 || a.indexer) continue;
    k.entries.resize(visible * hd);
    RETURN_IF_ERROR(kv_->ReadMain(tables, a.layer_id, 0, visible, k.entries.data()));
  }

  // The indexer's top-k of each row (§7 steps 6–7): picks[r * topk + i], i < num_picks[r]. A
  // chunk's keys are read and unpacked in blocks of indexer_block_keys_, and each row keeps its
  // top-k as it goes: TopK's order is total (score, NaN last, then index), so the top-k of a
  // row's top-k so far and the next block is the top-k of everything so far, in the same order.
  // Nothing here grows with the context beyond one block of keys.
  std::vector<int32_t> picks, num_picks;
  if (a.indexer) {
    picks.resize(n * topk);
    num_picks.assign(n, 0);
    std::vector<float> pick_scores(n * topk);
    std::vector<bf16> block_keys;
    for (const auto& ch : rows.chunks) {
      const int64_t chunk_visible = (ch.start_pos + ch.n) / a.ratio;
      for (int64_t b0 = 0; b0 < chunk_visible; b0 += indexer_block_keys_) {
        const int64_t b1 = std::min(chunk_visible, b0 + indexer_block_keys_);
        block_keys.resize((b1 - b0) * ihd);
        RETURN_IF_ERROR(kv_->ReadKeys(ch.seq->pages_, a.layer_id, b0, b1 - b0, block_keys.data()));
#pragma omp parallel if (ch.n > 1)  // one row: the kernels use the threads
        {
          std::vector<float> scores;
          std::vector<int32_t> idx, order, sel;
#pragma omp for schedule(dynamic, 1)
          for (int64_t r = ch.first_row; r < ch.first_row + ch.n; ++r) {
            const int64_t e1 = std::min((rows.pos[r] + 1) / a.ratio, b1);
            if (e1 <= b0) continue;
            // The row's picks so far in index order, then this block's keys: candidates in
            // index order, so TopK's ties by position are ties by key index.
            const int64_t have = num_picks[r], count = e1 - b0;
            int32_t* row_picks = picks.data() + r * topk;
            float* row_scores = pick_scores.data() + r * topk;
            order.resize(have);
            for (int64_t i = 0; i < have; ++i) order[i] = int32_t(i);
            std::sort(order.begin(), order.end(),
                      [&](int32_t x, int32_t y) { return row_picks[x] < row_picks[y]; });
            scores.resize(have + count);
            idx.resize(have + count);
            for (int64_t i = 0; i < have; ++i) {
              idx[i] = row_picks[order[i]];
              scores[i] = row_scores[order[i]];
            }
            kernels::IndexerScoreParams sp;
            sp.q = qi.data() + r * ih * ihd;
            sp.w = iw.data() + r * ih;
            sp.keys = block_keys.data();
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
            sel.resize(k);
            kernels::TopK(scores.data(), have + count, k, sel.data());
            for (int64_t i = 0; i < k; ++i) {
              row_picks[i] = idx[sel[i]];
              row_scores[i] = scores[sel[i]];
            }
            num_picks[r] = int32_t(k);
          }
        }
      }
    }
    // Each chunk reads the entries its rows picked, once, in increasing order.
    for (size_t ci = 0; ci < rows.chunks.size(); ++ci) {
      const auto& ch = rows.chunks[ci];
      ChunkKv& k = ckv[ci];
      const int64_t visible = (ch.start_pos + ch.n) / a.ratio;
      if (visible == 0) continue;
      k.entry_slot.assign(visible, -1);
      for (int64_t r = ch.first_row; r < ch.first_row + ch.n; ++r)
        for (int32_t i = 0; i < num_picks[r]; ++i) k.entry_slot[picks[r * topk + i]] = 0;
      std::vector<int32_t> idx;
      for (int64_t j = 0; j < visible; ++j) {
        if (k.entry_slot[j] < 0) continue;
        k.entry_slot[j] = int32_t(idx.size());
        idx.push_back(int32_t(j));
      }
      k.entries.resize(idx.size() * hd);
      RETURN_IF_ERROR(kv_->ReadMainAt(ch.seq->pages_, a.layer_id, idx, k.entries.data()));
    }
  }

  // Sparse attention per token (§5.4, §5.5).
  std::vector<bf16> o(n * h * hd);
  const float scale = float(1.0 / std::sqrt(double(hd)));
#pragma omp parallel if (n > 1)  // one row: the kernels use the threads
  {
    std::vector<const bf16*> list;
#pragma omp for schedule(dynamic, 1)
    for (int64_t r = 0; r < n; ++r) {
      const auto& ch = rows.chunks[rows.chunk_of[r]];
      const ChunkKv& k = ckv[rows.chunk_of[r]];
      const int64_t p = rows.pos[r];
      list.clear();
      for (int64_t t = std::max<int64_t>(0, p - window + 1); t <= p; ++t) {
        list.push_back(t >= ch.start_pos ? kv.data() + (ch.first_row + t - ch.start_pos) * hd
                                         : k.ring.data() + (t % window) * hd);
      }
      list.resize(window, nullptr);  // reference layout: window part is always W wide
      if (a.ratio != 0 && !a.indexer) {
        const int64_t visible = (p + 1) / a.ratio;
        for (int64_t j = 0; j < visible; ++j) list.push_back(k.entries.data() + j * hd);
      } else if (a.indexer) {
        for (int32_t i = 0; i < num_picks[r]; ++i) {
          list.push_back(k.entries.data() + int64_t(k.entry_slot[picks[r * topk + i]]) * hd);
        }
      }
      kernels::SparseAttentionParams ap;
      ap.q = q.data() + r * h * hd;
      ap.rows = list.data();
      ap.n = int64_t(list.size());
      ap.sink = a.sink;  // this rank's heads
      ap.num_heads = h;
      ap.dim = hd;
      ap.scale = scale;
      ap.out = o.data() + r * h * hd;
      kernels::SparseAttention(ap);
    }
  }
  RETURN_IF_ERROR(WriteWindow(rows, a, kv.data()));

  // Output path (§5.6): inverse RoPE, grouped wo_a (bf16), wo_b.
  RopeRows(o.data(), h * hd, hd, n, h, nope, rope, rows.pos.data(), a.freqs.data(), true);
  const int64_t groups = par_.o_groups.size(), olr = c.o_lora_rank,
                gin = c.HeadsPerGroup() * hd;
  std::vector<bf16> z(n * groups * olr);
  for (int64_t gi = 0; gi < groups; ++gi) {
    kernels::GemmBf16Params p;
    p.a = o.data() + gi * gin;
    p.lda = h * hd;
    p.w = a.wo_a.data() + gi * olr * gin;
    p.ldw = gin;
    p.c = z.data() + gi * olr;
    p.ldc = groups * olr;
    p.m = n;
    p.n = olr;
    p.k = gin;
    kernels::GemmBf16(p);
  }
  // The TP group all-gathers the groups' outputs and every rank applies the whole wo_b: bitwise
  // what one process computes (a split wo_b would round each rank's partial to bf16 first).
  if (par_.tp_size > 1) {
    std::vector<bf16> full;
    RETURN_IF_ERROR(GatherHeads(z, n, groups * olr, "attention wo_a output all-gather", &full));
    z.swap(full);
  }
  LinearForward(a.wo_b, z.data(), par_.tp_size * groups * olr, n, out, d);
  return absl::OkStatus();
}

}  // namespace flotilla
