// The step workspace: every temporary of one forward step, sized once from the step's limits
// (tokens per step, sequences per step, the LM head's rows per pass, the indexer's key block,
// the longest context admitted) so that a worker allocates it when it starts and no step
// allocates. The worker sizes its buffers from StepWorkspaceLayout and `flotilla plan` counts
// StepWorkspaceLayout::Bytes() per rank (docs/capacity.md §7 works the figures).
#pragma once

#include <cstdint>

#include "common/model_config.h"
#include "common/status.h"
#include "sharding/exchange_layout.h"

namespace flotilla {

struct StepLimits {
  int64_t tokens = 8192;              // rows of one step, all chunks together
  int64_t sequences = 256;            // chunks of one step (<= tokens)
  int64_t logit_rows = 256;           // rows the LM head computes per pass
  int64_t indexer_block_keys = 8192;  // indexer keys scored per block (a running top-k between)
  int64_t max_context = 0;            // longest sequence admitted; 0: max_position_embeddings
  int64_t experts_per_token = 0;      // the model's K; 0: num_experts_per_tok
  int64_t tp_size = 1;                // tensor-parallel ranks (this rank holds 1/tp of the heads)
  // Expert-parallel ranks (every worker; 1: one process holds every expert) and this rank's
  // place among them: the expert exchange's buffers follow from them.
  int64_t ep_size = 1;
  int64_t ep_rank = 0;
  // Rows one expert-exchange round carries per rank: a step's MoE runs its token slice in rounds
  // of at most this many rows, so the exchange's buffers do not grow with the step.
  int64_t exchange_rows = 128;
};

// Element counts of the workspace's buffers (each is one buffer of that many elements of the
// named type) and the sizes they follow from. Sequence records count kChunkRecordBytes each.
struct StepWorkspaceLayout {
  static constexpr int64_t kChunkRecordBytes = 32;
  StepLimits limits;  // with the defaults resolved
  // Widest slices of one TP rank.
  int64_t heads = 0, o_groups = 0, index_heads = 0, vocab = 0;
  // Sizes that bound a buffer.
  int64_t compressed_read = 0;  // compressed entries one chunk's attention reads at most
  int64_t compressor_width = 0, compressor_rows = 0;  // widest compressor state
  int64_t expert_rows = 0;  // rows one expert runs per pass (its list is split into passes)

  // bf16 buffers.
  int64_t streams = 0;      // [tokens, hc, d]: h, res, MTP streams in/out, picked rows (x5)
  int64_t hidden = 0;       // [tokens, d]: x, y, embedding, MTP e/ep, head input (x6)
  int64_t mtp_streams = 0;  // [tokens, hc, d]: MTP hn, hp (x2)
  int64_t q_lora = 0, query = 0, kv = 0, index_query = 0, index_weights = 0;
  int64_t gather = 0;        // TP all-gather landing area (bf16 elements, backend memory)
  int64_t gather_stage = 0;  // its host staging: this rank's part and the gathered parts
  int64_t ring = 0, entries = 0, block_keys = 0, attn_out = 0, wo_a_out = 0;
  int64_t compressed = 0;  // a chunk's new compressed rows (bf16)
  int64_t routed = 0, expert_in = 0, expert_out = 0, shared_out = 0, expert_gate_up = 0,
          expert_act = 0;
  // f32 buffers.
  // tp_sum: backend memory and host staging of the TP sums (each [tokens, d]); head_part: one
  // pass of this rank's logits (backend memory); head_stage, head_all: their host staging and
  // the TP group's gathered logits (tp > 1).
  int64_t hc_post = 0, hc_comb = 0, tp_sum = 0, head_part = 0, head_stage = 0, head_all = 0;
  int64_t compressor_kv = 0;     // [tokens, width] x2 (kv, gate)
  int64_t compressor_state = 0;  // rows x width x2 (kv, score)
  int64_t pooled = 0, pick_scores = 0, router_logits = 0, route_weights = 0;  // and expert_rows
                                                                              // routing weights
  // int32 / int64 buffers.
  // [tokens] x13: token, chunk and experts of the step and MTP rows (host), backend copies of
  // their tokens and experts, picks per row, the rows picked for logits (host and backend).
  int64_t row_i32 = 0;
  // [tokens] x5: positions of the step and MTP rows (host and backend), entry positions
  // (backend).
  int64_t row_i64 = 0;
  // entry_slot: a chunk's slot of each visible CSA entry, the picked entries, their count.
  int64_t picks = 0, entry_slot = 0, route_idx = 0, expert_order = 0, expert_offsets = 0;
  int64_t page_ids = 0;  // one compressed-entry page table copied to the backend (int32)
  // Bytes: quantised activations (FP8 codes + UE8M0 scales), packed KV bytes moving to and from
  // the pool.
  int64_t act_q = 0, act_scale = 0;  // x3: the block's, an expert pass's, a linear layer's
  int64_t packed = 0;
  // Expert parallelism (ep_size > 1). The exchange moves host memory (MPI), so the MoE stages
  // through host buffers: the exchange's own (exchange.HostExchangeBytes(), rows_per_round =
  // min(exchange_rows, this rank's token slice ceil(tokens / tp))); the slice's payload rows
  // (exchange_send bytes) and its routing (exchange_copies int32 ids + f32 weights) read back
  // from the backend; the group offsets (expert_offsets int64) and order (exchange_order int32)
  // of what arrives; the replies to it (exchange_replies bf16); a round's routed rows
  // (exchange_routed bf16); the TP group's all-gather of the token slices (moe_slice: this
  // rank's slice padded to the widest, moe_gather: all). In backend memory: the received records
  // (exchange.dispatch_recv_bytes), their order and the replies again.
  ExchangeLayout exchange;
  int64_t exchange_send = 0, exchange_copies = 0, exchange_routed = 0;
  int64_t exchange_replies = 0, exchange_order = 0, moe_slice = 0, moe_gather = 0;

  uint64_t Bytes() const;
};

// INVALID_ARGUMENT naming the limit when one is below 1 or sequences > tokens.
absl::StatusOr<StepWorkspaceLayout> MakeStepWorkspaceLayout(const ModelConfig& config,
                                                            const StepLimits& limits);

}  // namespace flotilla
