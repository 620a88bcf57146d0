#include "worker/model.h"

#include <omp.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/model_tensors.h"
#include "kernels/cpu/cpu_backend.h"
#include "sharding/capacity.h"
#include "worker/backend_status.h"
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
  for (BlockWeights& b : m->w_->layers) MakeExpertLists(b.moe);
  for (MtpWeights& b : m->w_->mtp) MakeExpertLists(b.block.moe);

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
  if (parallel.distributed()) {
    limits.ep_size = parallel.ep->size();
    limits.ep_rank = parallel.ep->rank();
    limits.exchange_rows = options.exchange_rows;
  }
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
  RETURN_IF_ERROR(Norm(x, b.attn_norm, n, x));
  RETURN_IF_ERROR(Attention(b, rows, x, y));
  RETURN_IF_ERROR(hc_post());
  RETURN_IF_ERROR(hc_pre(b.hc_ffn));
  RETURN_IF_ERROR(Norm(x, b.ffn_norm, n, x));
  RETURN_IF_ERROR(Moe(b.moe, rows, x, y));
  return hc_post();
}

absl::Status Model::EmbedTokens(kernels::In<int32_t> tokens, int64_t n,
                                kernels::Out<bf16> out) const {
  kernels::EmbedRowsArgs a;
  a.table = w_->embed;
  a.tokens = tokens;
  a.first = par_.vocab.begin;
  a.num_rows = par_.vocab.size();
  a.n = n;
  a.d = config_.hidden_size;
  a.out = out;
  RETURN_IF_BACKEND_ERROR(backend_->EmbedRows(*queue_, a));
  // Vocab-parallel: exactly one rank holds each row, so the sum is exact.
  return TpSumBf16(out.first(n * config_.hidden_size), "embedding all-reduce");
}

absl::Status Model::Embed(const Rows& rows, kernels::Out<bf16> h) const {
  const int64_t d = config_.hidden_size, hc = config_.hc_mult, n = rows.n;
  const kernels::Out<bf16> e = ws_->embed.span().first(n * d);
  RETURN_IF_ERROR(EmbedTokens(rows.token_dev, n, e));
  kernels::RepeatRowsArgs a;
  a.x = e;
  a.n = n;
  a.copies = hc;
  a.d = d;
  a.out = h;
  RETURN_IF_BACKEND_ERROR(backend_->RepeatRows(*queue_, a));
  return absl::OkStatus();
}

absl::Status Model::Logits(kernels::In<bf16> h, const HcWeights& hc_head, kernels::In<bf16> norm,
                           int64_t m, float* logits) const {
  const ModelConfig& c = config_;
  const int64_t d = c.hidden_size, hc = c.hc_mult, vocab = c.vocab_size;
  StepWorkspace& ws = *ws_;
  kernels::Backend& backend = *backend_;
  kernels::Queue& queue = *queue_;
  // Vocab-parallel head: each TP rank computes its columns (rows of widest, the widest slice);
  // an all-gather assembles them.
  const int64_t local = par_.vocab.size();
  const int64_t widest = par_.tp_size > 1 ? SplitEvenly(vocab, par_.tp_size, 0).size() : local;
  // Rows are independent: the head runs in passes of logit_rows rows.
  const int64_t pass = ws.layout.limits.logit_rows;
  for (int64_t r0 = 0; r0 < m; r0 += pass) {
    const int64_t rows = std::min(pass, m - r0);
    const kernels::Out<bf16> y = ws.head_in.span().first(rows * d);
    kernels::HcHeadArgs ha;
    ha.h = h.subspan(r0 * hc * d, rows * hc * d);
    ha.fn = hc_head.fn;
    ha.scale = hc_head.scale;
    ha.base = hc_head.base;
    ha.m = rows;
    ha.hc = hc;
    ha.d = d;
    ha.norm_eps = float(c.rms_norm_eps);
    ha.hc_eps = float(c.hc_eps);
    ha.y = y;
    RETURN_IF_BACKEND_ERROR(backend.HcHead(queue, ha));
    RETURN_IF_ERROR(Norm(y, norm, rows, y));
    // Every column is written with tp 1; with tp > 1 a narrower slice leaves its last ones zero.
    const kernels::Out<float> part = par_.tp_size == 1 ? ws.head_part.span().first(rows * widest)
                                                       : ws.Use(ws.head_part, rows * widest);
    kernels::GemmF32Args ga;
    ga.a_bf16 = y;
    ga.lda = d;
    ga.w_bf16 = w_->head;
    ga.ldw = d;
    ga.c = part;
    ga.ldc = widest;
    ga.m = rows;
    ga.n = local;
    ga.k = d;
    RETURN_IF_BACKEND_ERROR(backend.GemmF32(queue, ga));
    float* out = logits + r0 * vocab;
    if (par_.tp_size == 1) {  // [rows, vocab] as they are; the caller's synchronize waits
      RETURN_IF_BACKEND_ERROR(backend.Download(queue, kernels::In<float>(part),
                                               std::span<float>(out, size_t(rows * vocab))));
      continue;
    }
    // MPI reads host memory: this rank's part comes to the host, the gathered parts are placed
    // into the caller's host rows.
    float* staged = Use(ws.head_stage, rows * widest);
    RETURN_IF_BACKEND_ERROR(backend.Download(queue, kernels::In<float>(part),
                                             std::span<float>(staged, size_t(rows * widest))));
    RETURN_IF_ERROR(Synchronize("vocab-parallel head"));
    float* all = Use(ws.head_all, par_.tp_size * rows * widest);
    RETURN_IF_ERROR(par_.tp->AllGather(staged, size_t(rows * widest) * 4, all,
                                       Site("vocab-parallel head all-gather")));
    for (int64_t t = 0; t < par_.tp_size; ++t) {
      const IndexRange v = SplitEvenly(vocab, par_.tp_size, t);
      for (int64_t i = 0; i < rows; ++i)
        std::copy_n(&all[(t * rows + i) * widest], v.size(), out + i * vocab + v.begin);
    }
  }
  return absl::OkStatus();
}

absl::Status Model::Norm(kernels::In<bf16> x, kernels::In<bf16> w, int64_t m,
                         kernels::Out<bf16> y) const {
  const int64_t d = config_.hidden_size;
  kernels::RmsNormArgs a;
  a.x = x;
  a.ldx = d;
  a.w = w;
  a.m = m;
  a.d = d;
  a.eps = float(config_.rms_norm_eps);
  a.y = y;
  a.ldy = d;
  RETURN_IF_BACKEND_ERROR(backend_->RmsNorm(*queue_, a));
  return absl::OkStatus();
}

absl::Status Model::Synchronize(const char* what) const {
  const kernels::BackendStatus s = queue_->Synchronize();
  if (s.ok()) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, " (step ", step_, "): ", s.message()));
}

absl::Status Model::TpSumBf16(kernels::Out<bf16> data, const char* what) const {
  if (par_.tp_size == 1) return absl::OkStatus();
  const int64_t count = data.size();
  StepWorkspace& ws = *ws_;
  kernels::Backend& backend = *backend_;
  kernels::Queue& queue = *queue_;
  const kernels::Out<float> f = ws.tp_sum_dev.span().first(count);
  kernels::ConvertBf16ToF32Args widen;
  widen.x = data;
  widen.count = count;
  widen.y = f;
  RETURN_IF_BACKEND_ERROR(backend.ConvertBf16ToF32(queue, widen));
  // MPI sums host memory (f32, rank order): the one host round trip of the sum. The staging
  // is written only once the queue has run everything before (the last collective's upload
  // from it included).
  RETURN_IF_ERROR(Synchronize(what));
  float* staged = Use(ws.tp_sum, count);
  RETURN_IF_BACKEND_ERROR(
      backend.Download(queue, kernels::In<float>(f), std::span<float>(staged, size_t(count))));
  RETURN_IF_ERROR(Synchronize(what));
  RETURN_IF_ERROR(par_.tp->AllReduceSum(staged, size_t(count), Site(what)));
  RETURN_IF_BACKEND_ERROR(backend.Upload(queue, std::span<const float>(staged, size_t(count)), f));
  kernels::ConvertF32ToBf16Args narrow;
  narrow.x = f;
  narrow.count = count;
  narrow.y = data;
  RETURN_IF_BACKEND_ERROR(backend.ConvertF32ToBf16(queue, narrow));
  return absl::OkStatus();
}

absl::Status Model::GatherHeads(kernels::In<bf16> local, int64_t n, int64_t count, const char* what,
                                kernels::Out<bf16> full) const {
  const int64_t tp = par_.tp_size, part = n * count;
  StepWorkspace& ws = *ws_;
  kernels::Backend& backend = *backend_;
  kernels::Queue& queue = *queue_;
  // MPI gathers host memory: [this rank's part | every rank's part] in the staging buffer, the
  // gathered parts back into the workspace, then each row's parts side by side into `full`
  // (which may be `local`: its part was copied out first).
  // The staging is written only once the queue has run the last gather's upload from it.
  RETURN_IF_ERROR(Synchronize(what));
  bf16* staged = Use(ws.gather_stage, (tp + 1) * part);
  RETURN_IF_BACKEND_ERROR(
      backend.Download(queue, local.first(part), std::span<bf16>(staged, size_t(part))));
  RETURN_IF_ERROR(Synchronize(what));
  RETURN_IF_ERROR(par_.tp->AllGather(staged, size_t(part) * 2, staged + part, Site(what)));
  const kernels::Out<bf16> all = ws.gather.span().first(tp * part);
  RETURN_IF_BACKEND_ERROR(
      backend.Upload(queue, std::span<const bf16>(staged + part, size_t(tp * part)), all));
  kernels::InterleaveRowsArgs a;
  a.src = all.as_bytes();
  a.blocks = tp;
  a.rows = n;
  a.row_bytes = count * 2;
  a.dst = full.first(tp * part).as_writable_bytes();
  RETURN_IF_BACKEND_ERROR(backend.InterleaveRows(queue, a));
  return absl::OkStatus();
}

// MTP input streams (§10): e_proj(RMSNorm(embed[next])) + h_proj(RMSNorm(H)) on each stream.
absl::Status Model::MtpInput(const MtpWeights& w, kernels::In<bf16> h, kernels::In<int32_t> next,
                             int64_t m, kernels::Out<bf16> out) const {
  const int64_t d = config_.hidden_size, hc = config_.hc_mult;
  StepWorkspace& ws = *ws_;
  kernels::Backend& backend = *backend_;
  kernels::Queue& queue = *queue_;
  const kernels::Out<bf16> e = ws.mtp_e.span().first(m * d);
  const kernels::Out<bf16> ep = ws.mtp_ep.span().first(m * d);
  const kernels::Out<bf16> hn = ws.mtp_hn.span().first(m * hc * d);
  const kernels::Out<bf16> hp = ws.mtp_hp.span().first(m * hc * d);
  RETURN_IF_ERROR(EmbedTokens(next, m, e));
  RETURN_IF_ERROR(Norm(e, w.enorm, m, e));
  RETURN_IF_ERROR(Norm(h, w.hnorm, m * hc, hn));
  RETURN_IF_ERROR(LinearForward(backend, queue, w.e_proj, e, d, m, ep, d, ws.linear_acts));
  RETURN_IF_ERROR(LinearForward(backend, queue, w.h_proj, hn, d, m * hc, hp, d, ws.linear_acts));
  kernels::BroadcastAddArgs a;
  a.a = ep;
  a.b = hp;
  a.n = m;
  a.copies = hc;
  a.d = d;
  a.out = out;
  RETURN_IF_BACKEND_ERROR(backend.BroadcastAdd(queue, a));
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
  kernels::Backend& backend = *backend_;
  kernels::Queue& queue = *queue_;
  RETURN_IF_ERROR(rows.Upload(backend, queue));
  const int64_t row_elems = hc * d;
  const kernels::Out<bf16> h = ws.h.span().first(rows.n * row_elems);
  RETURN_IF_ERROR(Embed(rows, h));
  for (const BlockWeights& b : w_->layers) RETURN_IF_ERROR(RunBlock(b, rows, h));

  // Logits of the requested rows, gathered on the backend.
  std::vector<int32_t>& pick = ws.pick_rows;
  pick.clear();
  out->first_row.resize(rows.chunks.size());
  for (size_t ci = 0; ci < rows.chunks.size(); ++ci) {
    const auto& ch = rows.chunks[ci];
    out->first_row[ci] = int64_t(pick.size());
    for (int64_t i = 0; i < ch.n; ++i) {
      if (chunks[ci].all_logits || i == ch.n - 1) pick.push_back(int32_t(ch.first_row + i));
    }
  }
  const int64_t num_picks = int64_t(pick.size());
  const kernels::Out<int32_t> pick_dev = ws.pick_rows_dev.span().first(num_picks);
  RETURN_IF_BACKEND_ERROR(backend.Upload(queue, std::span<const int32_t>(pick), pick_dev));
  const kernels::Out<bf16> hsel = ws.hsel.span().first(num_picks * row_elems);
  kernels::RowCopyArgs g;
  g.src = kernels::In<bf16>(h).as_bytes();
  g.ld_src = row_elems * 2;
  g.index = pick_dev;
  g.rows = num_picks;
  g.row_bytes = row_elems * 2;
  g.dst = hsel.as_writable_bytes();
  g.ld_dst = row_elems * 2;
  RETURN_IF_BACKEND_ERROR(backend.GatherRows(queue, g));
  out->logits.resize(size_t(num_picks * vocab));
  RETURN_IF_ERROR(Logits(hsel, w_->hc_head, w_->norm, num_picks, out->logits.data()));

  // MTP window entries for every position whose next token is now known (the last position's
  // waits for the next call or is drafted speculatively by DraftMtp).
  if (!w_->mtp.empty()) {
    Rows mrows = Rows::Mtp(ws);
    const kernels::Out<bf16> mh = ws.mtp_h.span();
    for (size_t ci = 0; ci < rows.chunks.size(); ++ci) {
      const auto& ch = rows.chunks[ci];
      SequenceState* seq = ch.seq;
      const bool lag = !seq->last_h_.empty();
      const int64_t count = (lag ? 1 : 0) + ch.n - 1;
      if (count == 0) continue;
      const int64_t experts = rows.experts[ch.first_row];
      mrows.Begin(seq, ch.start_pos - (lag ? 1 : 0));
      if (lag) {
        RETURN_IF_BACKEND_ERROR(backend.Upload(queue, std::span<const bf16>(seq->last_h_),
                                               mh.subspan(mrows.n * row_elems, row_elems)));
        mrows.AddRow(rows.token[ch.first_row], experts);
      }
      if (ch.n > 1) {
        RETURN_IF_BACKEND_ERROR(backend.Copy(
            queue, kernels::In<bf16>(h.subspan(ch.first_row * row_elems, (ch.n - 1) * row_elems)),
            mh.subspan(mrows.n * row_elems, (ch.n - 1) * row_elems)));
      }
      for (int64_t i = 0; i + 1 < ch.n; ++i) {
        mrows.AddRow(rows.token[ch.first_row + i + 1], experts);
      }
    }
    if (mrows.n > 0) {
      const MtpWeights& mw = w_->mtp[0];
      RETURN_IF_ERROR(mrows.Upload(backend, queue));
      const kernels::Out<bf16> hin = ws.mtp_in.span().first(mrows.n * row_elems);
      const kernels::Out<bf16> x = ws.Use(ws.x, mrows.n * d);
      const kernels::Out<bf16> kv = ws.Use(ws.kv, mrows.n * c.head_dim);
      RETURN_IF_ERROR(MtpInput(mw, mh.first(mrows.n * row_elems), mrows.token_dev, mrows.n, hin));
      kernels::HcPreArgs p;
      p.h = hin;
      p.fn = mw.block.hc_attn.fn;
      p.scale = mw.block.hc_attn.scale;
      p.base = mw.block.hc_attn.base;
      p.m = mrows.n;
      p.hc = hc;
      p.d = d;
      p.sinkhorn_iters = c.hc_sinkhorn_iters;
      p.norm_eps = float(c.rms_norm_eps);
      p.hc_eps = float(c.hc_eps);
      p.x = x;
      p.post = ws.Use(ws.hc_post, mrows.n * hc);
      p.comb = ws.Use(ws.hc_comb, mrows.n * hc * hc);
      RETURN_IF_BACKEND_ERROR(backend.HcPre(queue, p));
      RETURN_IF_ERROR(Norm(x, mw.block.attn_norm, mrows.n, x));
      RETURN_IF_ERROR(KvPath(mw.block.attn, mrows, x, kv));
      RETURN_IF_ERROR(WriteWindow(mrows, mw.block.attn, kv));
    }
    // Each sequence's last streams, kept on the host for its next step (docs/backend.md).
    for (const auto& ch : rows.chunks) {
      const int64_t last = ch.first_row + ch.n - 1;
      ch.seq->last_h_.resize(size_t(row_elems));
      RETURN_IF_BACKEND_ERROR(
          backend.Download(queue, kernels::In<bf16>(h.subspan(last * row_elems, row_elems)),
                           std::span<bf16>(ch.seq->last_h_)));
    }
  }
  // The step's one wait: the logits (and the last streams) are on the host after it.
  RETURN_IF_ERROR(Synchronize("forward step"));
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
  kernels::Backend& backend = *backend_;
  kernels::Queue& queue = *queue_;
  Rows rows = Rows::Step(ws);
  const int64_t row_elems = c.hc_mult * c.hidden_size;
  const kernels::Out<bf16> hlast = ws.mtp_h.span();
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (seqs[i]->last_h_.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("DraftMtp: sequence ", i, " has not been run through Forward"));
    }
    RETURN_IF_BACKEND_ERROR(backend.Upload(queue, std::span<const bf16>(seqs[i]->last_h_),
                                           hlast.subspan(int64_t(i) * row_elems, row_elems)));
    rows.Add(seqs[i], seqs[i]->pos_ - 1, next_tokens.subspan(i, 1), top_k_);
  }
  RETURN_IF_ERROR(rows.Upload(backend, queue));
  const MtpWeights& mw = w_->mtp[0];
  const kernels::Out<bf16> h = ws.h.span().first(rows.n * row_elems);
  RETURN_IF_ERROR(MtpInput(mw, hlast.first(rows.n * row_elems), rows.token_dev, rows.n, h));
  // The window slot written here is speculative: the next Forward rewrites it with the token
  // actually chosen.
  ++step_;
  RETURN_IF_ERROR(RunBlock(mw.block, rows, h));
  logits->resize(size_t(rows.n * c.vocab_size));
  RETURN_IF_ERROR(Logits(h, mw.hc_head, mw.norm, rows.n, logits->data()));
  return Synchronize("MTP draft");
}

}  // namespace flotilla
