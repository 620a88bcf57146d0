// Single-process DeepSeek-V4 forward pass on the CPU backend (spec §4–§10): prefill from
// position 0, chunked prefill at any boundary, decode, batches of sequences of different
// lengths, and MTP draft logits. Results are bitwise independent of chunking and batching.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/model_config.h"
#include "common/safetensors.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "worker/kv_pool.h"
#include "worker/paged_kv.h"
#include "worker/parallel.h"
#include "worker/step_workspace.h"
#include "worker/weights.h"

namespace flotilla {

struct ModelOptions {
  // Routed experts per token; 0 keeps the config's num_experts_per_tok. Hash layers use the
  // first K columns of tid2eid (the 4-expert variant: K = 4).
  int64_t experts_per_token = 0;
  // The KV pool: bytes of pages (0: kDefaultKvMemoryFraction of the memory the host has
  // available) and the size of one page.
  uint64_t kv_memory_bytes = 0;
  int64_t kv_page_bytes = 64 << 10;
  // The indexer scores a chunk's keys this many at a time (a running top-k between blocks), so
  // its temporaries do not grow with the context. Any value gives the same picks.
  int64_t indexer_block_keys = 8192;
  // The step workspace (sharding/step_workspace.h), allocated once at start: the most tokens
  // and sequences (chunks) one Forward may run, the LM head's rows per pass (steps that ask for
  // more logits run the head in passes) and the longest context a sequence may reach (0:
  // max_position_embeddings). A Forward beyond them is refused with INVALID_ARGUMENT.
  int64_t tokens_per_step = 8192;
  int64_t sequences_per_step = 256;
  int64_t logit_rows = 256;
  int64_t max_context = 0;
  // Expert parallelism: rows of this rank's token slice one exchange round carries (a step's
  // MoE runs in rounds; every rank runs as many as the busiest needs).
  int64_t exchange_rows = 128;
  // Upload every weight into backend memory even where the backend could read the mapped
  // checkpoint in place (the CPU backend imports it, zero copy): the path a GPU backend takes,
  // testable on the CPU. Costs a copy of the checkpoint's memory.
  bool upload_weights = false;
};
inline constexpr double kDefaultKvMemoryFraction = 0.25;

// Everything a sequence carries between steps. Create with Model::NewSequence(); one state per
// conversation (never shared; a new conversation gets a fresh state). Its KV lives in pages of
// the model's KvPool, which it holds from its first Forward until it goes (every page returns to
// the pool then, however the sequence ended).
class SequenceState {
 public:
  ~SequenceState();
  SequenceState(const SequenceState&) = delete;
  SequenceState& operator=(const SequenceState&) = delete;
  int64_t position() const { return pos_; }  // tokens consumed so far
  const SequencePageTables& pages() const { return pages_; }

 private:
  friend class Model;
  explicit SequenceState(std::shared_ptr<KvPool> pool) : pool_(std::move(pool)) {}
  int64_t pos_ = 0;
  std::shared_ptr<KvPool> pool_;
  SequencePageTables pages_;
  // [hc, D] final streams at position pos_-1 (MTP input), a host copy: downloaded with the
  // step's logits, uploaded by the next step's MTP pass (docs/backend.md).
  std::vector<bf16> last_h_;
};

class Model {
 public:
  // Loads config.json and the checkpoint in `dir` (validated; errors name file and tensor).
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& dir,
                                                     const ModelOptions& options);
  static absl::StatusOr<std::unique_ptr<Model>> FromSource(const ModelConfig& config,
                                                           std::shared_ptr<WeightSource> source,
                                                           const ModelOptions& options);
  // One rank of a distributed model: `source` holds the rank's slices (`selection`), `parallel`
  // its place and groups. Every rank of the job must call Forward the same number of times
  // (ranks with nothing to run pass no chunks): MoE dispatch spans all ranks.
  static absl::StatusOr<std::unique_ptr<Model>> FromSource(const ModelConfig& config,
                                                           std::shared_ptr<WeightSource> source,
                                                           const ModelOptions& options,
                                                           const Parallel& parallel,
                                                           const WeightSelection& selection);

  const ModelConfig& config() const { return config_; }
  int64_t experts_per_token() const { return top_k_; }
  std::unique_ptr<SequenceState> NewSequence() const;
  // The pool every sequence's KV pages come from.
  const KvPool& kv_pool() const { return *pool_; }
  // The step workspace's sizes; its bytes are layout.Bytes(), reserved at start.
  const StepWorkspaceLayout& workspace_layout() const { return ws_->layout; }
  uint64_t workspace_bytes() const { return ws_->ReservedBytes(); }

  struct Chunk {
    SequenceState* seq = nullptr;     // distinct sequences within one call
    std::span<const int32_t> tokens;  // continues the sequence at seq->position()
    bool all_logits = false;          // logits of every position, not only the last
    // Routed experts per token for this chunk: 0 = experts_per_token(); else 1..that. The
    // chunk's logits are bitwise those of a model loaded with this many (batches may mix them).
    int64_t experts_per_token = 0;
  };
  struct Output {
    std::vector<float> logits;       // [rows, vocab] f32
    std::vector<int64_t> first_row;  // per chunk: its first row of logits
  };

  // Runs the chunks as one batch. Every token id must be < vocab_size. With tensor parallelism
  // every rank of a TP group passes the same chunks.
  absl::Status Forward(std::span<const Chunk> chunks, Output* out) const;

  // MTP draft logits [seqs, vocab]: for each sequence just run by Forward, the prediction for
  // the token after `next_tokens[i]` (the token chosen at position()).
  absl::Status DraftMtp(std::span<SequenceState* const> seqs, std::span<const int32_t> next_tokens,
                        std::vector<float>* logits) const;

 private:
  Model() = default;
  struct Rows;
  // Grows each chunk's page tables to hold its tokens (RESOURCE_EXHAUSTED naming the chunk when
  // the pool cannot); a sequence's first reservation also resets its compressor states.
  absl::Status ReserveKv(std::span<const Chunk> chunks) const;
  // h: the rows' streams [n, hc, D] (updated in place).
  absl::Status RunBlock(const BlockWeights& b, Rows& rows, kernels::Out<bf16> h) const;
  // One chunk's attention reads (ring, compressed entries or the indexer's picks) and its rows'
  // sparse attention into o.
  absl::Status AttendChunk(const AttentionWeights& a, const Rows& rows, int64_t ci) const;
  // x: [n, D] normalised rows; out: [n, D].
  absl::Status Attention(const BlockWeights& b, Rows& rows, kernels::In<bf16> x,
                         kernels::Out<bf16> out) const;
  absl::Status KvPath(const AttentionWeights& a, const Rows& rows, kernels::In<bf16> x,
                      kernels::Out<bf16> kv) const;
  absl::Status WriteWindow(const Rows& rows, const AttentionWeights& a, kernels::In<bf16> kv) const;
  absl::Status Compress(const CompressorWeights& cw, const AttentionWeights& a, Rows& rows,
                        kernels::In<bf16> x, bool indexer) const;
  // x: [n, D]; out: [n, D].
  absl::Status Moe(const MoeWeights& m, const Rows& rows, kernels::In<bf16> x,
                   kernels::Out<bf16> out) const;
  absl::Status MoeDistributed(const MoeWeights& m, const Rows& rows, kernels::In<bf16> x,
                              kernels::Out<bf16> out) const;
  // The embedding rows of n tokens ([n] on the backend) into out [n, D], summed over the TP
  // group's vocab slices.
  absl::Status EmbedTokens(kernels::In<int32_t> tokens, int64_t n, kernels::Out<bf16> out) const;
  // The rows' streams [n, hc, D]: each row's embedding on every stream.
  absl::Status Embed(const Rows& rows, kernels::Out<bf16> h) const;
  // Logits [m, vocab] f32 of streams h [m, hc, D] into host memory: issued on the queue, there
  // once the caller synchronizes (with tp > 1 the all-gather waits for each pass).
  absl::Status Logits(kernels::In<bf16> h, const HcWeights& hc_head, kernels::In<bf16> norm,
                      int64_t m, float* logits) const;
  // y [m, D] = RMSNorm(x [m, D]) · w (y may be x).
  absl::Status Norm(kernels::In<bf16> x, kernels::In<bf16> w, int64_t m,
                    kernels::Out<bf16> y) const;
  // The host waits for the queue; an error names `what` and the step.
  absl::Status Synchronize(const char* what) const;
  // MTP input streams out [m, hc, D] from streams h [m, hc, D] and next tokens [m].
  absl::Status MtpInput(const MtpWeights& w, kernels::In<bf16> h, kernels::In<int32_t> next,
                        int64_t m, kernels::Out<bf16> out) const;
  // Sums bf16 values over the TP group in f32 (rank order), rounding once; in place.
  absl::Status TpSumBf16(kernels::Out<bf16> data, const char* what) const;
  // Gathers `count` bf16 per row (n rows) from every TP rank into rows of tp * count.
  // `full` may be `local` (the local rows are copied out first).
  absl::Status GatherHeads(kernels::In<bf16> local, int64_t n, int64_t count, const char* what,
                           kernels::Out<bf16> full) const;
  CallSite Site(const char* what) const { return {what, step_}; }
  absl::Status CheckTokens(std::span<const int32_t> tokens, const char* what) const;

  ModelConfig config_;
  int64_t top_k_ = 0;
  int64_t indexer_block_keys_ = 8192;
  std::shared_ptr<WeightSource> source_;
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<kernels::Queue> queue_;  // every op of a step, in order
  std::unique_ptr<ModelWeights> w_;        // spans of backend_'s memory (declared after it)
  std::shared_ptr<KvPool> pool_;
  std::unique_ptr<PagedKv> kv_;
  std::unique_ptr<StepWorkspace> ws_;  // every step's temporaries (steps are not concurrent)
  Parallel par_;
  mutable int64_t step_ = 0;  // Forward calls so far, named in communication errors
};

}  // namespace flotilla
