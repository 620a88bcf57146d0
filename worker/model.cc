#include "worker/model.h"

#include <omp.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/model_tensors.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/ops.h"
#include "sharding/capacity.h"
#include "worker/backend_status.h"
#include "worker/host_bridge.h"
#include "worker/model_internal.h"

namespace flotilla {

namespace {

// MemAvailable of /proc/meminfo in bytes; 0 when it cannot be read.
uint64_t AvailableHostMemory() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  return 0;
}

}  // namespace

SequenceState::~SequenceState() {
  if (pool_ != nullptr) pool_->Release(&pages_);
}

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& dir,
                                                   const ModelOptions& options) {
  const std::string config_path = (std::filesystem::path(dir) / "config.json").string();
  ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::FromFile(config_path));
  ASSIGN_OR_RETURN(std::unique_ptr<CheckpointDir> ckpt, CheckpointDir::Open(dir));
  RETURN_IF_ERROR(config.Validate());
  RETURN_IF_ERROR(CheckInventory(config, *ckpt));
  return FromSource(config, std::shared_ptr<WeightSource>(std::move(ckpt)), options);
}

absl::StatusOr<std::unique_ptr<Model>> Model::FromSource(const ModelConfig& config,
                                                         std::shared_ptr<WeightSource> source,
                                                         const ModelOptions& options) {
  RETURN_IF_ERROR(config.Validate());
  const WeightSelection all = FullSelection(config, DetectExpertFormat(config, *source));
  return FromSource(config, std::move(source), options, Parallel::Single(config), all);
}

absl::StatusOr<std::unique_ptr<Model>> Model::FromSource(const ModelConfig& config,
                                                         std::shared_ptr<WeightSource> source,
                                                         const ModelOptions& options,
                                                         const Parallel& parallel,
                                                         const WeightSelection& selection) {
  RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<Model> m(new Model());
  m->config_ = config;
  m->par_ = parallel;
  m->top_k_ =
      options.experts_per_token > 0 ? options.experts_per_token : config.num_experts_per_tok;
  const int64_t max_k =
      config.num_hash_layers > 0 ? config.num_experts_per_tok : config.n_routed_experts;
  if (m->top_k_ > std::min<int64_t>(max_k, 64)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--experts-per-token ", m->top_k_, " is larger than this model allows (at most ",
        std::min<int64_t>(max_k, 64),
        config.num_hash_layers > 0 ? ": hash layers have num_experts_per_tok tid2eid columns)"
                                   : ")"));
  }
  if (options.indexer_block_keys < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "indexer_block_keys is ", options.indexer_block_keys, "; expected at least 1"));
  }
  m->indexer_block_keys_ = options.indexer_block_keys;
  if (parallel.tp_size > 1 && parallel.tp == nullptr) {
    return absl::InvalidArgumentError("tensor parallelism needs a TP communicator");
  }
  m->source_ = std::move(source);
  m->backend_ = std::make_unique<kernels::CpuBackend>();
  m->queue_ = m->backend_->NewQueue();
  ASSIGN_OR_RETURN(m->w_, LoadWeights(config, *m->source_, selection, *m->backend_, *m->queue_,
                                      options.upload_weights));

  ASSIGN_OR_RETURN(const KvPoolLayout layout, KvPoolLayout::Make(config, options.kv_page_bytes));
  uint64_t pool_bytes = options.kv_memory_bytes;
  if (pool_bytes == 0) {
    pool_bytes = uint64_t(double(AvailableHostMemory()) * kDefaultKvMemoryFraction);
    if (pool_bytes == 0) {
      return absl::FailedPreconditionError(
          "the KV pool size is not given and /proc/meminfo has no MemAvailable; pass a size");
    }
  }
  absl::StatusOr<std::unique_ptr<KvPool>> pool = KvPool::Create(*m->backend_, layout, pool_bytes);
  if (!pool.ok()) {
    return absl::Status(pool.status().code(),
                        absl::StrCat("KV pool of ", FormatBytes(pool_bytes),
                                     " (--kv-memory; flotilla-serve passes --kv-pool) in ",
                                     FormatBytes(uint64_t(layout.page_bytes)),
                                     " pages: ", pool.status().message()));
  }
  m->pool_ = std::move(*pool);
  StepLimits limits;
  limits.tokens = options.tokens_per_step;
  limits.sequences = options.sequences_per_step;
  limits.logit_rows = options.logit_rows;
  limits.indexer_block_keys = options.indexer_block_keys;
  limits.max_context = options.max_context;
  limits.experts_per_token = m->top_k_;
  limits.tp_size = parallel.tp_size;
  ASSIGN_OR_RETURN(const StepWorkspaceLayout ws_layout, MakeStepWorkspaceLayout(config, limits));
  ASSIGN_OR_RETURN(m->ws_, StepWorkspace::Make(ws_layout, *m->backend_, *m->queue_));
  m->kv_ = std::make_unique<PagedKv>(m->config_, m->pool_.get(), m->backend_.get(), m->queue_.get(),
                                     m->ws_->packed.span(), m->ws_->page_ids.span());
  return m;
}

std::unique_ptr<SequenceState> Model::NewSequence() const {
  return std::unique_ptr<SequenceState>(new SequenceState(pool_));
}

absl::Status Model::ReserveKv(std::span<const Chunk> chunks) const {
  for (size_t i = 0; i < chunks.size(); ++i) {
    SequenceState* seq = chunks[i].seq;
    const bool fresh = seq->pages_.layers.empty();
    if (fresh) pool_->ReserveTables(ws_->layout.limits.max_context, &seq->pages_);
    const absl::Status s =
        pool_->Reserve(seq->pos_ + int64_t(chunks[i].tokens.size()), &seq->pages_);
    if (!s.ok()) return absl::Status(s.code(), absl::StrCat("chunk ", i, ": ", s.message()));
    if (fresh) {
      RETURN_IF_ERROR(kv_->ResetStates(seq->pages_, ws_->state_kv.span(), ws_->state_score.span()));
    }
  }
  return absl::OkStatus();
}

absl::Status Model::CheckTokens(std::span<const int32_t> tokens, const char* what) const {
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": token ", i, " has id ", tokens[i],
                                                     "; expected 0..", config_.vocab_size - 1));
    }
  }
  return absl::OkStatus();
}

absl::Status Model::RunBlock(const BlockWeights& b, Rows& rows, kernels::Out<bf16> h) const {
  const ModelConfig& c = config_;
  const int64_t n = rows.n, d = c.hidden_size, hc = c.hc_mult;
  StepWorkspace& ws = *ws_;
  kernels::Backend& backend = *backend_;
  kernels::Queue& queue = *queue_;
  const kernels::Out<bf16> res = ws.res.span().first(n * hc * d);
  const kernels::Out<bf16> x = ws.Use(ws.x, n * d);
  const kernels::Out<bf16> y = ws.Use(ws.y, n * d);
  const kernels::Out<float> post = ws.Use(ws.hc_post, n * hc);
  const kernels::Out<float> comb = ws.Use(ws.hc_comb, n * hc * hc);
  auto hc_pre = [&](const HcWeights& w) -> absl::Status {
    RETURN_IF_BACKEND_ERROR(backend.Copy(queue, kernels::In<bf16>(h), res));
    kernels::HcPreArgs a;
    a.h = res;
    a.fn = w.fn;
    a.scale = w.scale;
    a.base = w.base;
    a.m = n;
    a.hc = hc;
    a.d = d;
    a.sinkhorn_iters = c.hc_sinkhorn_iters;
    a.norm_eps = float(c.rms_norm_eps);
    a.hc_eps = float(c.hc_eps);
    a.x = x;
    a.post = post;
    a.comb = comb;
    RETURN_IF_BACKEND_ERROR(backend.HcPre(queue, a));
    return absl::OkStatus();
  };
  auto norm = [&](kernels::In<bf16> weight) -> absl::Status {
    kernels::RmsNormArgs a;
    a.x = x;
    a.ldx = d;
    a.w = weight;
    a.m = n;
    a.d = d;
    a.eps = float(c.rms_norm_eps);
    a.y = x;
    a.ldy = d;
    RETURN_IF_BACKEND_ERROR(backend.RmsNorm(queue, a));
    return absl::OkStatus();
  };
  auto hc_post = [&]() -> absl::Status {
    kernels::HcPostArgs a;
    a.x = y;
    a.res = res;
    a.post = post;
    a.comb = comb;
    a.m = n;
    a.hc = hc;
    a.d = d;
    a.h_out = h;
    RETURN_IF_BACKEND_ERROR(backend.HcPost(queue, a));
    return absl::OkStatus();
  };
  // A DP group with nothing to run still takes part in the MoE exchange over all ranks.
  if (n == 0) return Moe(b.moe, rows, x, y);
  RETURN_IF_ERROR(hc_pre(b.hc_attn));
  RETURN_IF_ERROR(norm(b.attn_norm));
  RETURN_IF_ERROR(Attention(b, rows, x, y));
  RETURN_IF_ERROR(hc_post());
  RETURN_IF_ERROR(hc_pre(b.hc_ffn));
  RETURN_IF_ERROR(norm(b.ffn_norm));
  RETURN_IF_ERROR(Moe(b.moe, rows, x, y));
  return hc_post();
}

absl::Status Model::Embed(const Rows& rows, kernels::Out<bf16> h_span) const {
  const ModelConfig& c = config_;
  const int64_t d = c.hidden_size, hc = c.hc_mult, n = rows.n;
  bf16* e = HostOf(ws_->Use(ws_->embed, n * d));
  const bf16* table = HostOf(w_->embed);
  for (int64_t r = 0; r < n; ++r) {
    if (par_.vocab.Contains(rows.token[r])) {
      std::copy_n(table + (rows.token[r] - par_.vocab.begin) * d, d, &e[r * d]);
    }
  }
  // Vocab-parallel: exactly one rank holds each row, so the sum is exact.
  RETURN_IF_ERROR(TpSumBf16(e, n * d, "embedding all-reduce"));
  bf16* h = HostOf(h_span);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < hc; ++j) std::copy_n(&e[r * d], d, &h[(r * hc + j) * d]);
  return absl::OkStatus();
}

absl::Status Model::Logits(const bf16* h, const HcWeights& hc_head, kernels::In<bf16> norm,
                           int64_t m, float* logits) const {
  const ModelConfig& c = config_;
  const int64_t d = c.hidden_size, hc = c.hc_mult, vocab = c.vocab_size;
  StepWorkspace& ws = *ws_;
  // Rows are independent: the head runs in passes of logit_rows rows.
  const int64_t pass = ws.layout.limits.logit_rows;
  for (int64_t r0 = 0; r0 < m; r0 += pass) {
    const int64_t rows = std::min(pass, m - r0);
    bf16* y = HostOf(ws.Use(ws.head_in, rows * d));
    kernels::HcHeadParams hp;
    hp.h = h + r0 * hc * d;
    hp.fn = HostOf(hc_head.fn);
    hp.scale = HostOf(hc_head.scale);
    hp.base = HostOf(hc_head.base);
    hp.m = rows;
    hp.hc = hc;
    hp.d = d;
    hp.norm_eps = float(c.rms_norm_eps);
    hp.hc_eps = float(c.hc_eps);
    hp.y = y;
    kernels::HcHead(hp);
    kernels::RmsNorm(y, d, HostOf(norm), rows, d, float(c.rms_norm_eps), y, d);
    // Vocab-parallel head: each TP rank computes its rows; an all-gather assembles them.
    const int64_t local = par_.vocab.size();
    const int64_t widest = par_.tp_size > 1 ? SplitEvenly(vocab, par_.tp_size, 0).size() : local;
    float* part = par_.tp_size > 1 ? HostOf(ws.Use(ws.head_part, rows * widest)) : nullptr;
    float* out = logits + r0 * vocab;
    kernels::GemmF32Params p;
    p.a_bf16 = y;
    p.lda = d;
    p.w_bf16 = HostOf(w_->head);
    p.ldw = d;
    p.c = par_.tp_size > 1 ? part : out;
    p.ldc = par_.tp_size > 1 ? widest : vocab;
    p.m = rows;
    p.n = local;
    p.k = d;
    kernels::GemmF32(p);
    if (par_.tp_size == 1) continue;
    float* all = Use(ws.head_all, par_.tp_size * rows * widest);
    RETURN_IF_ERROR(par_.tp->AllGather(part, size_t(rows * widest) * 4, all,
                                       Site("vocab-parallel head all-gather")));
    for (int64_t t = 0; t < par_.tp_size; ++t) {
      const IndexRange v = SplitEvenly(vocab, par_.tp_size, t);
      for (int64_t i = 0; i < rows; ++i)
        std::copy_n(&all[(t * rows + i) * widest], v.size(), out + i * vocab + v.begin);
    }
  }
  return absl::OkStatus();
}

// MTP input streams (§10): e_proj(RMSNorm(embed[next])) + h_proj(RMSNorm(H)) on each stream.
absl::Status Model::TpSumBf16(bf16* data, int64_t count, const char* what) const {
  if (par_.tp_size == 1) return absl::OkStatus();
  float* f = Use(ws_->tp_sum, count);
  for (int64_t i = 0; i < count; ++i) f[i] = Bf16ToF32(data[i]);
  RETURN_IF_ERROR(par_.tp->AllReduceSum(f, size_t(count), Site(what)));
  for (int64_t i = 0; i < count; ++i) data[i] = F32ToBf16(f[i]);
  return absl::OkStatus();
}

absl::Status Model::MtpInput(const MtpWeights& w, const bf16* h, const int32_t* next, int64_t m,
                             kernels::Out<bf16> out) const {
  const ModelConfig& c = config_;
  const int64_t d = c.hidden_size, hc = c.hc_mult;
  const float eps = float(c.rms_norm_eps);
  StepWorkspace& ws = *ws_;
  const kernels::Out<bf16> e_span = ws.Use(ws.mtp_e, m * d);
  const kernels::Out<bf16> ep_span = ws.Use(ws.mtp_ep, m * d);
  const kernels::Out<bf16> hn_span = ws.Use(ws.mtp_hn, m * hc * d);
  const kernels::Out<bf16> hp_span = ws.Use(ws.mtp_hp, m * hc * d);
  bf16* e = HostOf(e_span);
  const bf16* ep = HostOf(ep_span);
  bf16* hn = HostOf(hn_span);
  const bf16* hp = HostOf(hp_span);
  const bf16* table = HostOf(w_->embed);
  for (int64_t i = 0; i < m; ++i) {
    if (par_.vocab.Contains(next[i]))
      std::copy_n(table + (next[i] - par_.vocab.begin) * d, d, &e[i * d]);
  }
  RETURN_IF_ERROR(TpSumBf16(e, m * d, "mtp embedding all-reduce"));
  kernels::RmsNorm(e, d, HostOf(w.enorm), m, d, eps, e, d);
  kernels::RmsNorm(h, d, HostOf(w.hnorm), m * hc, d, eps, hn, d);
  RETURN_IF_ERROR(
      LinearForward(*backend_, *queue_, w.e_proj, e_span, d, m, ep_span, d, ws.linear_acts));
  RETURN_IF_ERROR(
      LinearForward(*backend_, *queue_, w.h_proj, hn_span, d, m * hc, hp_span, d, ws.linear_acts));
  bf16* o = HostOf(out);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < hc; ++j)
      for (int64_t col = 0; col < d; ++col)
        o[(i * hc + j) * d + col] =
            F32ToBf16(Bf16ToF32(ep[i * d + col]) + Bf16ToF32(hp[(i * hc + j) * d + col]));
  return absl::OkStatus();
}

absl::Status Model::Forward(std::span<const Chunk> chunks, Output* out) const {
  const ModelConfig& c = config_;
  const int64_t d = c.hidden_size, hc = c.hc_mult, vocab = c.vocab_size;
  StepWorkspace& ws = *ws_;
  const StepLimits& lim = ws.layout.limits;
  if (int64_t(chunks.size()) > lim.sequences) {
    return absl::InvalidArgumentError(absl::StrCat("a step of ", chunks.size(),
                                                   " chunks exceeds the ", lim.sequences,
                                                   " sequences per step the worker started with"));
  }
  int64_t total = 0;
  for (const Chunk& ch : chunks) total += int64_t(ch.tokens.size());
  if (total > lim.tokens) {
    return absl::InvalidArgumentError(absl::StrCat("a step of ", total, " tokens exceeds the ",
                                                   lim.tokens,
                                                   " tokens per step the worker started with"));
  }
  Rows rows = Rows::Step(ws);
  for (size_t i = 0; i < chunks.size(); ++i) {
    const Chunk& ch = chunks[i];
    const std::string what = absl::StrCat("chunk ", i);
    if (ch.seq == nullptr || ch.tokens.empty()) {
      return absl::InvalidArgumentError(what + ": needs a sequence and at least one token");
    }
    for (size_t j = 0; j < i; ++j) {
      if (chunks[j].seq == ch.seq) {
        return absl::InvalidArgumentError(what + ": the same sequence appears twice in one batch");
      }
    }
    RETURN_IF_ERROR(CheckTokens(ch.tokens, what.c_str()));
    const int64_t end = ch.seq->pos_ + int64_t(ch.tokens.size());
    if (end > c.max_position_embeddings) {
      return absl::OutOfRangeError(absl::StrCat(what, ": positions up to ", end,
                                                " exceed max_position_embeddings ",
                                                c.max_position_embeddings));
    }
    if (end > lim.max_context) {
      return absl::OutOfRangeError(absl::StrCat(what, ": positions up to ", end,
                                                " exceed the longest context the worker "
                                                "started with (",
                                                lim.max_context, ")"));
    }
    if (ch.experts_per_token < 0 || ch.experts_per_token > top_k_) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": experts_per_token ",
                                                     ch.experts_per_token, " (must be 1..", top_k_,
                                                     ", or 0 for ", top_k_, ")"));
    }
    rows.Add(ch.seq, ch.seq->pos_, ch.tokens,
             ch.experts_per_token > 0 ? ch.experts_per_token : top_k_);
  }

  RETURN_IF_ERROR(ReserveKv(chunks));
  ++step_;
  RETURN_IF_ERROR(rows.Upload(*backend_, *queue_));
  const kernels::Out<bf16> h_span = ws.Use(ws.h, rows.n * hc * d);
  RETURN_IF_ERROR(Embed(rows, h_span));
  for (const BlockWeights& b : w_->layers) RETURN_IF_ERROR(RunBlock(b, rows, h_span));
  const bf16* h = HostOf(h_span);

  // Logits of the requested rows.
  std::vector<int64_t>& pick = ws.pick_rows;
  pick.clear();
  out->first_row.resize(rows.chunks.size());
  for (size_t ci = 0; ci < rows.chunks.size(); ++ci) {
    const auto& ch = rows.chunks[ci];
    out->first_row[ci] = int64_t(pick.size());
    for (int64_t i = 0; i < ch.n; ++i) {
      if (chunks[ci].all_logits || i == ch.n - 1) pick.push_back(ch.first_row + i);
    }
  }
  bf16* hsel = HostOf(ws.Use(ws.hsel, int64_t(pick.size()) * hc * d));
  for (size_t i = 0; i < pick.size(); ++i)
    std::copy_n(&h[pick[i] * hc * d], hc * d, &hsel[i * hc * d]);
  out->logits.resize(pick.size() * vocab);
  RETURN_IF_ERROR(Logits(hsel, w_->hc_head, w_->norm, int64_t(pick.size()), out->logits.data()));

  // MTP window entries for every position whose next token is now known (the last position's
  // waits for the next call or is drafted speculatively by DraftMtp).
  if (!w_->mtp.empty()) {
    Rows mrows = Rows::Mtp(ws);
    bf16* mh = HostOf(ws.mtp_h.span());
    int64_t mh_rows = 0;
    for (size_t ci = 0; ci < rows.chunks.size(); ++ci) {
      const auto& ch = rows.chunks[ci];
      SequenceState* seq = ch.seq;
      const bool lag = !seq->last_h_.empty();
      const int64_t count = (lag ? 1 : 0) + ch.n - 1;
      if (count == 0) continue;
      const int64_t experts = rows.experts[ch.first_row];
      mrows.Begin(seq, ch.start_pos - (lag ? 1 : 0));
      if (lag) {
        std::copy(seq->last_h_.begin(), seq->last_h_.end(), mh + mh_rows++ * hc * d);
        mrows.AddRow(rows.token[ch.first_row], experts);
      }
      for (int64_t i = 0; i + 1 < ch.n; ++i) {
        std::copy_n(&h[(ch.first_row + i) * hc * d], hc * d, mh + mh_rows++ * hc * d);
        mrows.AddRow(rows.token[ch.first_row + i + 1], experts);
      }
    }
    if (mrows.n > 0) {
      const MtpWeights& mw = w_->mtp[0];
      RETURN_IF_ERROR(mrows.Upload(*backend_, *queue_));
      const kernels::Out<bf16> hin = ws.Use(ws.mtp_in, mrows.n * hc * d);
      const kernels::Out<bf16> x_span = ws.Use(ws.x, mrows.n * d);
      const kernels::Out<bf16> kv = ws.Use(ws.kv, mrows.n * c.head_dim);
      bf16* x = HostOf(x_span);
      float* post = HostOf(ws.Use(ws.hc_post, mrows.n * hc));
      float* comb = HostOf(ws.Use(ws.hc_comb, mrows.n * hc * hc));
      RETURN_IF_ERROR(MtpInput(mw, mh, mrows.token.data(), mrows.n, hin));
      kernels::HcPreParams p;
      p.h = HostOf(hin);
      p.fn = HostOf(mw.block.hc_attn.fn);
      p.scale = HostOf(mw.block.hc_attn.scale);
      p.base = HostOf(mw.block.hc_attn.base);
      p.m = mrows.n;
      p.hc = hc;
      p.d = d;
      p.sinkhorn_iters = c.hc_sinkhorn_iters;
      p.norm_eps = float(c.rms_norm_eps);
      p.hc_eps = float(c.hc_eps);
      p.x = x;
      p.post = post;
      p.comb = comb;
      kernels::HcPre(p);
      kernels::RmsNorm(x, d, HostOf(mw.block.attn_norm), mrows.n, d, float(c.rms_norm_eps), x, d);
      RETURN_IF_ERROR(KvPath(mw.block.attn, mrows, x_span, kv));
      RETURN_IF_ERROR(WriteWindow(mrows, mw.block.attn, kv));
    }
    for (const auto& ch : rows.chunks) {
      const int64_t last = ch.first_row + ch.n - 1;
      ch.seq->last_h_.assign(&h[last * hc * d], &h[(last + 1) * hc * d]);
    }
  }
  for (const auto& ch : rows.chunks) ch.seq->pos_ += ch.n;
  return absl::OkStatus();
}

absl::Status Model::DraftMtp(std::span<SequenceState* const> seqs,
                             std::span<const int32_t> next_tokens,
                             std::vector<float>* logits) const {
  const ModelConfig& c = config_;
  if (w_->mtp.empty()) return absl::FailedPreconditionError("this model has no MTP block");
  if (seqs.size() != next_tokens.size()) {
    return absl::InvalidArgumentError("DraftMtp: one next token per sequence is needed");
  }
  StepWorkspace& ws = *ws_;
  if (int64_t(seqs.size()) > ws.layout.limits.sequences) {
    return absl::InvalidArgumentError(
        absl::StrCat("DraftMtp: ", seqs.size(), " sequences exceed the ",
                     ws.layout.limits.sequences, " sequences per step the worker started with"));
  }
  RETURN_IF_ERROR(CheckTokens(next_tokens, "DraftMtp"));
  Rows rows = Rows::Step(ws);
  const int64_t hc_d = c.hc_mult * c.hidden_size;
  bf16* hlast = HostOf(ws.mtp_h.span());
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (seqs[i]->last_h_.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("DraftMtp: sequence ", i, " has not been run through Forward"));
    }
    std::copy(seqs[i]->last_h_.begin(), seqs[i]->last_h_.end(), hlast + int64_t(i) * hc_d);
    rows.Add(seqs[i], seqs[i]->pos_ - 1, next_tokens.subspan(i, 1), top_k_);
  }
  RETURN_IF_ERROR(rows.Upload(*backend_, *queue_));
  const MtpWeights& mw = w_->mtp[0];
  const kernels::Out<bf16> h = ws.Use(ws.h, rows.n * hc_d);
  RETURN_IF_ERROR(MtpInput(mw, hlast, next_tokens.data(), rows.n, h));
  // The window slot written here is speculative: the next Forward rewrites it with the token
  // actually chosen.
  ++step_;
  RETURN_IF_ERROR(RunBlock(mw.block, rows, h));
  logits->resize(rows.n * c.vocab_size);
  RETURN_IF_ERROR(Logits(HostOf(h), mw.hc_head, mw.norm, rows.n, logits->data()));
  return absl::OkStatus();
}

}  // namespace flotilla
