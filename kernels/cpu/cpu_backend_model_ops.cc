// The CPU backend's ops beyond those of kernels/ops.h: the blocks the model adds (model ops, MoE
// ops, attention ops; kernels/backend_ops.h), each bitwise with the per-row or direct-call code
// it replaces (tests/kernels/backend_test.cc, backend_attention_test.cc).
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <mutex>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_backend_internal.h"
#include "kernels/ops.h"

namespace flotilla::kernels {

// ---------------------------------------------------------------- model ops

BackendStatus CpuBackend::DoEmbedRows(Queue& queue, const EmbedRowsArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "EmbedRows");
  const bf16* table = Ptr(a.table);
  const int32_t* tokens = Ptr(a.tokens);
  bf16* out = Ptr(a.out);
#pragma omp parallel for schedule(static) if (a.n * a.d > (1 << 16))
  for (int64_t r = 0; r < a.n; ++r) {
    const int64_t row = int64_t(tokens[r]) - a.first;
    if (row >= 0 && row < a.num_rows) {
      std::memcpy(out + r * a.d, table + row * a.d, size_t(a.d) * sizeof(bf16));
    } else {
      std::memset(out + r * a.d, 0, size_t(a.d) * sizeof(bf16));
    }
  }
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoRepeatRows(Queue& queue, const RepeatRowsArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "RepeatRows");
  const bf16* x = Ptr(a.x);
  bf16* out = Ptr(a.out);
#pragma omp parallel for schedule(static) if (a.n * a.copies * a.d > (1 << 16))
  for (int64_t r = 0; r < a.n; ++r) {
    for (int64_t j = 0; j < a.copies; ++j) {
      std::memcpy(out + (r * a.copies + j) * a.d, x + r * a.d, size_t(a.d) * sizeof(bf16));
    }
  }
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoBroadcastAdd(Queue& queue, const BroadcastAddArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "BroadcastAdd");
  const bf16* x = Ptr(a.a);
  const bf16* y = Ptr(a.b);
  bf16* out = Ptr(a.out);
#pragma omp parallel for schedule(static) if (a.n * a.copies * a.d > (1 << 16))
  for (int64_t rj = 0; rj < a.n * a.copies; ++rj) {
    const bf16* xr = x + (rj / a.copies) * a.d;
    for (int64_t col = 0; col < a.d; ++col) {
      out[rj * a.d + col] = F32ToBf16(Bf16ToF32(xr[col]) + Bf16ToF32(y[rj * a.d + col]));
    }
  }
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoConvertBf16ToF32(Queue& queue, const ConvertBf16ToF32Args& a) {
  FLOTILLA_CPU_QUEUE(queue, "ConvertBf16ToF32");
  const bf16* x = Ptr(a.x);
  float* y = Ptr(a.y);
#pragma omp parallel for schedule(static) if (a.count > (1 << 18))
  for (int64_t i = 0; i < a.count; ++i) y[i] = Bf16ToF32(x[i]);
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoConvertF32ToBf16(Queue& queue, const ConvertF32ToBf16Args& a) {
  FLOTILLA_CPU_QUEUE(queue, "ConvertF32ToBf16");
  const float* x = Ptr(a.x);
  bf16* y = Ptr(a.y);
#pragma omp parallel for schedule(static) if (a.count > (1 << 18))
  for (int64_t i = 0; i < a.count; ++i) y[i] = F32ToBf16(x[i]);
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoInterleaveRows(Queue& queue, const InterleaveRowsArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "InterleaveRows");
  const uint8_t* src = Ptr(a.src);
  uint8_t* dst = Ptr(a.dst);
  for (int64_t i = 0; i < a.rows; ++i) {
    for (int64_t b = 0; b < a.blocks; ++b) {
      std::memcpy(dst + (i * a.blocks + b) * a.row_bytes, src + (b * a.rows + i) * a.row_bytes,
                  size_t(a.row_bytes));
    }
  }
  return BackendStatus::Ok();
}

// ---- MoE ops

BackendStatus CpuBackend::DoRoutePerRowK(Queue& queue, const RoutePerRowKArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "RoutePerRowK");
  const float* logits = Ptr(a.logits);
  const int64_t* hash_ids = Ptr(a.hash_ids);
  const int32_t* row_top_k = Ptr(a.row_top_k);
  int32_t* expert_idx = Ptr(a.expert_idx);
  float* weights = Ptr(a.weights);
  for (int64_t t = 0; t < a.m; ++t) {
    const int64_t kt = row_top_k[t];
    if (kt < 1 || kt > a.top_k) {
      return BackendStatus::Error("RoutePerRowK: row_top_k[" + std::to_string(t) +
                                  "] = " + std::to_string(kt) + "; expected 1 to " +
                                  std::to_string(a.top_k));
    }
    // The row alone, as a model with kt experts per token routes it (routing is per row).
    int32_t row_idx[64] = {};
    float row_weights[64] = {};
    RouterParams p;
    p.logits = logits + t * a.num_experts;
    p.bias = Ptr(a.bias);
    p.hash_ids = hash_ids == nullptr ? nullptr : hash_ids + t * a.ld_hash;
    p.ld_hash = a.ld_hash;
    p.m = 1;
    p.num_experts = a.num_experts;
    p.top_k = kt;
    p.route_scale = a.route_scale;
    p.expert_idx = row_idx;
    p.weights = row_weights;
    kernels::Route(p);
    for (int64_t s = 0; s < a.top_k; ++s) {
      expert_idx[t * a.top_k + s] = s < kt ? row_idx[s] : row_idx[0];
      weights[t * a.top_k + s] = s < kt ? row_weights[s] : 0.0f;
    }
  }
  return BackendStatus::Ok();
}

namespace {

// Runs `run(g, first, count)` for the rows of each group g inside the window [row_begin,
// row_begin + rows), first relative to row_begin, after checking the offsets as it reads them.
template <typename Run>
BackendStatus ForEachGroup(const char* op, const In<int64_t>& offsets_span, size_t num_groups,
                           int64_t row_begin, int64_t rows, Run run) {
  const int64_t* offsets = Ptr(offsets_span);
  for (size_t g = 0; g <= num_groups; ++g) {
    const int64_t prev = g == 0 ? 0 : offsets[g - 1];
    if (offsets[g] < prev || (g == 0 && offsets[0] != 0)) {
      return BackendStatus::Error(
          std::string(op) + ": offsets[" + std::to_string(g) + "] = " + std::to_string(offsets[g]) +
          "; expected " +
          (g == 0 ? std::string("0")
                  : ">= offsets[" + std::to_string(g - 1) + "] = " + std::to_string(prev)));
    }
  }
  for (size_t g = 0; g < num_groups; ++g) {
    const int64_t lo = std::clamp<int64_t>(offsets[g] - row_begin, 0, rows);
    const int64_t hi = std::clamp<int64_t>(offsets[g + 1] - row_begin, 0, rows);
    if (hi > lo) run(g, lo, hi - lo);
  }
  return BackendStatus::Ok();
}

}  // namespace

BackendStatus CpuBackend::DoGroupedGemmFp8Fp4(Queue& queue, const GroupedGemmFp8Fp4Args& a) {
  FLOTILLA_CPU_QUEUE(queue, "GroupedGemmFp8Fp4");
  return ForEachGroup("GroupedGemmFp8Fp4", a.offsets, a.w.size(), a.row_begin, a.rows,
                      [&](size_t g, int64_t first, int64_t count) {
                        GemmFp8Fp4Params p;
                        p.a = Ptr(a.a) + first * a.k;
                        p.a_scale = Ptr(a.a_scale) + first * (a.k / 128);
                        p.w = Ptr(a.w[g]);
                        p.w_scale = Ptr(a.w_scale[g]);
                        p.c = Ptr(a.c) + first * a.ldc;
                        p.ldc = a.ldc;
                        p.m = count;
                        p.n = a.n;
                        p.k = a.k;
                        kernels::GemmFp8Fp4(p);
                      });
}

BackendStatus CpuBackend::DoGroupedGemmFp8(Queue& queue, const GroupedGemmFp8Args& a) {
  FLOTILLA_CPU_QUEUE(queue, "GroupedGemmFp8");
  return ForEachGroup("GroupedGemmFp8", a.offsets, a.w.size(), a.row_begin, a.rows,
                      [&](size_t g, int64_t first, int64_t count) {
                        GemmFp8Params p;
                        p.a = Ptr(a.a) + first * a.k;
                        p.a_scale = Ptr(a.a_scale) + first * (a.k / 128);
                        p.w = Ptr(a.w[g]);
                        p.w_scale = a.w_scale.empty() ? nullptr : Ptr(a.w_scale[g]);
                        p.w_scale_f32 = a.w_scale_f32.empty() ? nullptr : Ptr(a.w_scale_f32[g]);
                        p.c = Ptr(a.c) + first * a.ldc;
                        p.ldc = a.ldc;
                        p.m = count;
                        p.n = a.n;
                        p.k = a.k;
                        kernels::GemmFp8(p);
                      });
}

BackendStatus CpuBackend::DoGroupedGemmBf16(Queue& queue, const GroupedGemmBf16Args& a) {
  FLOTILLA_CPU_QUEUE(queue, "GroupedGemmBf16");
  return ForEachGroup("GroupedGemmBf16", a.offsets, a.w.size(), a.row_begin, a.rows,
                      [&](size_t g, int64_t first, int64_t count) {
                        GemmBf16Params p;
                        p.a = Ptr(a.a) + first * a.lda;
                        p.lda = a.lda;
                        p.w = Ptr(a.w[g]);
                        p.ldw = a.k;
                        p.c = Ptr(a.c) + first * a.ldc;
                        p.ldc = a.ldc;
                        p.m = count;
                        p.n = a.n;
                        p.k = a.k;
                        kernels::GemmBf16(p);
                      });
}

// ---- attention ops

namespace {

// Per-thread scratch of the attention ops. Each call reserves, on every thread it uses, what
// the call may need (rounded up to a power of two), before any row runs: the vectors grow a few
// times while contexts grow, and steady-state calls allocate nothing.
struct AttentionScratch {
  std::vector<float> scores;
  std::vector<int32_t> idx, order, sel;
  std::vector<bf16> w;
  std::vector<const bf16*> list;
  std::vector<const float*> k_rows, g_rows;
};

AttentionScratch& Scratch() {
  static thread_local AttentionScratch scratch;
  return scratch;
}

template <typename T>
void Reserve(std::vector<T>& v, int64_t n) {
  if (int64_t(v.capacity()) < n) v.reserve(std::bit_ceil(size_t(n)));
}

// fn(r) for rows [0, n): several rows in parallel; a single row on the calling thread, so that
// the kernels it calls use the threads (an inactive region around them would make their regions
// nest and take a new team per call). prepare() runs first on every thread that takes rows.
template <typename Prepare, typename Fn>
void ForEachRow(int64_t n, Prepare prepare, Fn fn) {
  if (n <= 0) return;
  if (n == 1) {
    prepare();
    fn(int64_t(0));
    return;
  }
#pragma omp parallel
  {
    prepare();
#pragma omp for schedule(dynamic, 1)
    for (int64_t r = 0; r < n; ++r) fn(r);
  }
}

// The error of the lowest failing row (rows run in parallel).
class RowErrors {
 public:
  // Keeps the message of the lowest row that failed, so the error does not depend on which
  // thread got there first.
  void Set(int64_t row, std::string message) {
    std::lock_guard<std::mutex> lock(mu_);
    if (row_ >= 0 && row_ <= row) return;
    row_ = row;
    message_ = std::move(message);
  }
  BackendStatus Status() const {
    std::lock_guard<std::mutex> lock(mu_);
    return row_ >= 0 ? BackendStatus::Error(message_) : BackendStatus::Ok();
  }

 private:
  mutable std::mutex mu_;
  int64_t row_ = -1;
  std::string message_;
};

}  // namespace

BackendStatus CpuBackend::DoCompressorUpdate(Queue& queue, const CompressorUpdateArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "CompressorUpdate");
  const int64_t m = a.ratio, width = a.width, d = a.d;
  const float* k = Ptr(a.k);
  const float* g = Ptr(a.g);
  const float* ape = Ptr(a.ape);
  float* kv = Ptr(a.state_kv);
  float* score = Ptr(a.state_score);
  float* pooled = Ptr(a.pooled);
  int64_t* entry_pos = Ptr(a.entry_pos);
  AttentionScratch& t = Scratch();
  Reserve(t.k_rows, 2 * m);
  Reserve(t.g_rows, 2 * m);
  t.k_rows.resize(size_t(a.overlap ? 2 * m : m));
  t.g_rows.resize(t.k_rows.size());
  int64_t e = 0;
  for (int64_t i = 0; i < a.n; ++i) {
    const int64_t p = a.start_pos + i;
    const int64_t slot = (a.overlap ? m : 0) + p % m;
    float* kv_slot = kv + slot * width;
    float* sc_slot = score + slot * width;
    const float* ape_row = ape + (p % m) * width;
    for (int64_t c = 0; c < width; ++c) {
      kv_slot[c] = k[i * width + c];
      sc_slot[c] = g[i * width + c] + ape_row[c];
    }
    if ((p + 1) % m != 0) continue;
    for (int64_t s = 0; s < m; ++s) {
      t.k_rows[size_t(s)] = kv + s * width;
      t.g_rows[size_t(s)] = score + s * width;
      if (a.overlap) {  // A-half of the previous block, B-half of this one
        t.k_rows[size_t(m + s)] = kv + (m + s) * width + d;
        t.g_rows[size_t(m + s)] = score + (m + s) * width + d;
      }
    }
    kernels::CompressPool(t.k_rows.data(), t.g_rows.data(), int64_t(t.k_rows.size()), d,
                          pooled + e * d);
    if (entry_pos != nullptr) entry_pos[e] = p / m * m;
    ++e;
    if (a.overlap) {  // the finished block becomes "previous"
      std::copy(kv + m * width, kv + 2 * m * width, kv);
      std::copy(score + m * width, score + 2 * m * width, score);
    }
  }
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoIndexerTopK(Queue& queue, const IndexerTopKArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "IndexerTopK");
  if (a.rows == 0 || a.n_keys == 0) return BackendStatus::Ok();
  const int64_t heads = a.num_heads, dim = a.dim, topk = a.top_k;
  const int64_t b0 = a.first_key, b1 = a.first_key + a.n_keys;
  const bf16* q = Ptr(a.q);
  const bf16* w = Ptr(a.w);
  const bf16* keys = Ptr(a.keys);
  int32_t* picks = Ptr(a.picks);
  float* pick_scores = Ptr(a.pick_scores);
  int32_t* num_picks = Ptr(a.num_picks);
  RowErrors errors;
  ForEachRow(
      a.rows,
      [&] {
        AttentionScratch& t = Scratch();
        const int64_t keys = std::max(a.n_keys, a.max_keys);
        Reserve(t.scores, topk + keys);
        Reserve(t.idx, topk + keys);
        Reserve(t.order, topk);
        Reserve(t.sel, topk);
        Reserve(t.w, heads);
      },
      [&](int64_t r) {
        AttentionScratch& t = Scratch();
        const int64_t e1 = std::min((a.start_pos + r + 1) / a.ratio, b1);
        if (e1 <= b0) return;
        const int64_t have = num_picks[r], count = e1 - b0;
        if (have < 0 || have > topk) {
          errors.Set(r, "IndexerTopK: num_picks[" + std::to_string(r) + "] = " +
                            std::to_string(have) + "; expected 0 to top_k " +
                            std::to_string(topk));
          return;
        }
        // The row's picks so far in index order, then this block's keys: candidates in index
        // order, so TopK's ties by position are ties by key index.
        int32_t* row_picks = picks + r * topk;
        float* row_scores = pick_scores + r * topk;
        t.order.resize(size_t(have));
        for (int64_t i = 0; i < have; ++i) t.order[size_t(i)] = int32_t(i);
        std::sort(t.order.begin(), t.order.end(),
                  [&](int32_t x, int32_t y) { return row_picks[x] < row_picks[y]; });
        t.scores.resize(size_t(have + count));
        t.idx.resize(size_t(have + count));
        for (int64_t i = 0; i < have; ++i) {
          t.idx[size_t(i)] = row_picks[t.order[size_t(i)]];
          t.scores[size_t(i)] = row_scores[t.order[size_t(i)]];
        }
        t.w.resize(size_t(heads));
        for (int64_t h = 0; h < heads; ++h) {
          t.w[size_t(h)] = F32ToBf16(Bf16ToF32(w[r * heads + h]) * a.w_scale);
        }
        IndexerScoreParams sp;
        sp.q = q + r * heads * dim;
        sp.w = t.w.data();
        sp.keys = keys;
        sp.ldk = dim;
        sp.n = count;
        sp.num_heads = heads;
        sp.dim = dim;
        sp.scores = t.scores.data() + have;
        kernels::IndexerScores(sp);
        for (int64_t j = 0; j < count; ++j) {
          t.scores[size_t(have + j)] = RoundBf16(t.scores[size_t(have + j)]);
          t.idx[size_t(have + j)] = int32_t(b0 + j);
        }
        const int64_t k = std::min(topk, have + count);
        t.sel.resize(size_t(k));
        kernels::TopK(t.scores.data(), have + count, k, t.sel.data());
        for (int64_t i = 0; i < k; ++i) {
          row_picks[i] = t.idx[size_t(t.sel[size_t(i)])];
          row_scores[i] = t.scores[size_t(t.sel[size_t(i)])];
        }
        num_picks[r] = int32_t(k);
      });
  return errors.Status();
}

BackendStatus CpuBackend::DoPickedEntries(Queue& queue, const PickedEntriesArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "PickedEntries");
  const int32_t* picks = Ptr(a.picks);
  const int32_t* num_picks = Ptr(a.num_picks);
  int32_t* slot = Ptr(a.entry_slot);
  int32_t* idx = Ptr(a.entry_idx);
  for (int64_t j = 0; j < a.visible; ++j) slot[j] = -1;
  for (int64_t r = 0; r < a.rows; ++r) {
    if (num_picks[r] < 0 || num_picks[r] > a.top_k) {
      return BackendStatus::Error("PickedEntries: num_picks[" + std::to_string(r) +
                                  "] = " + std::to_string(num_picks[r]) + "; expected 0 to top_k " +
                                  std::to_string(a.top_k));
    }
    for (int32_t i = 0; i < num_picks[r]; ++i) {
      const int32_t j = picks[r * a.top_k + i];
      if (j < 0 || j >= a.visible) {
        return BackendStatus::Error("PickedEntries: picks[" + std::to_string(r * a.top_k + i) +
                                    "] = " + std::to_string(j) + "; expected 0 to visible - 1 (" +
                                    std::to_string(a.visible - 1) + ")");
      }
      slot[j] = 0;
    }
  }
  int32_t count = 0;
  for (int64_t j = 0; j < a.visible; ++j) {
    if (slot[j] < 0) continue;
    if (count == a.max_entries) {
      return BackendStatus::Error("PickedEntries: more than max_entries (" +
                                  std::to_string(a.max_entries) + ") entries picked");
    }
    slot[j] = count;
    idx[count++] = int32_t(j);
  }
  Ptr(a.count)[0] = count;
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoUnpackKvEntriesPaged(Queue& queue, const KvUnpackPagedArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "UnpackKvEntriesPaged");
  const int64_t n = Ptr(a.count)[0];
  if (n < 0 || n > a.max_rows) {
    return BackendStatus::Error("UnpackKvEntriesPaged: count " + std::to_string(n) +
                                "; expected 0 to max_rows " + std::to_string(a.max_rows));
  }
  const uint8_t* pool = Ptr(a.pool);
  const int32_t* ids = Ptr(a.page_ids);
  const int32_t* units = Ptr(a.units);
  const int64_t pages = a.pool.size() / a.page_bytes;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t u = units[i];
    const int64_t page = u / a.per_page;
    if (u < 0 || page >= a.page_ids.size() || ids[page] < 0 || ids[page] >= pages) {
      return BackendStatus::Error(
          "UnpackKvEntriesPaged: units[" + std::to_string(i) + "] = " + std::to_string(u) +
          (u < 0 || page >= a.page_ids.size()
               ? "; expected 0 to " + std::to_string(a.page_ids.size() * a.per_page - 1)
               : " lies in page " + std::to_string(ids[page]) + "; expected 0 to " +
                     std::to_string(pages - 1)));
    }
  }
  // Rows are independent: one kernel call each, in parallel when there is enough to share.
#pragma omp parallel for schedule(static) if (n * a.entry_bytes >= (1 << 18))
  for (int64_t i = 0; i < n; ++i) {
    const int64_t u = units[i];
    KvUnpackParams p;
    p.rows = 1;
    p.nope = a.nope;
    p.rope = a.rope;
    p.entry_bytes = a.entry_bytes;
    p.entries =
        pool + int64_t(ids[u / a.per_page]) * a.page_bytes + (u % a.per_page) * a.entry_bytes;
    p.x = Ptr(a.x) + i * a.ldx;
    p.ldx = a.ldx;
    kernels::UnpackKvEntries(p);
  }
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoChunkAttention(Queue& queue, const ChunkAttentionArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "ChunkAttention");
  const int64_t dim = a.dim, window = a.window, topk = a.top_k;
  const bf16* fresh = Ptr(a.fresh);
  const bf16* ring = Ptr(a.ring);
  const bf16* entries = Ptr(a.entries);
  const int32_t* picks = Ptr(a.picks);
  const int32_t* num_picks = Ptr(a.num_picks);
  const int32_t* entry_slot = Ptr(a.entry_slot);
  const int64_t entry_rows = a.entries.size() / dim;
  const int64_t visible = a.ratio > 0 ? (a.start_pos + a.rows) / a.ratio : 0;
  const int64_t most = window + std::max(picks != nullptr ? topk : visible, a.max_compressed);
  RowErrors errors;
  ForEachRow(
      a.rows, [&] { Reserve(Scratch().list, most); },
      [&](int64_t r) {
        std::vector<const bf16*>& list = Scratch().list;
        const int64_t p = a.start_pos + r;
        list.clear();
        for (int64_t t = std::max<int64_t>(0, p - window + 1); t <= p; ++t) {
          list.push_back(t >= a.start_pos ? fresh + (t - a.start_pos) * dim
                                          : ring + (t % window) * dim);
        }
        list.resize(size_t(window), nullptr);  // reference layout: window part is always W wide
        if (picks != nullptr) {
          const int64_t have = num_picks[r];
          if (have < 0 || have > topk) {
            errors.Set(r, "ChunkAttention: num_picks[" + std::to_string(r) + "] = " +
                              std::to_string(have) + "; expected 0 to top_k " +
                              std::to_string(topk));
            return;
          }
          for (int64_t i = 0; i < have; ++i) {
            const int64_t j = picks[r * topk + i];
            const int64_t e = j >= 0 && j < visible ? entry_slot[j] : -1;
            if (e < 0 || e >= entry_rows) {
              errors.Set(r, "ChunkAttention: row " + std::to_string(r) + " picks entry " +
                                std::to_string(j) + " (slot " + std::to_string(e) +
                                "); expected a picked entry of the " + std::to_string(visible) +
                                " visible, in the " + std::to_string(entry_rows) + " entry rows");
              return;
            }
            list.push_back(entries + e * dim);
          }
        } else if (a.ratio > 0) {
          const int64_t row_visible = (p + 1) / a.ratio;
          for (int64_t j = 0; j < row_visible; ++j) list.push_back(entries + j * dim);
        }
        SparseAttentionParams ap;
        ap.q = Ptr(a.q) + r * a.ldq;
        ap.rows = list.data();
        ap.n = int64_t(list.size());
        ap.sink = Ptr(a.sink);
        ap.num_heads = a.num_heads;
        ap.dim = dim;
        ap.scale = a.scale;
        ap.out = Ptr(a.out) + r * a.ldo;
        kernels::SparseAttention(ap);
      });
  return errors.Status();
}

}  // namespace flotilla::kernels
