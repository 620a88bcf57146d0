// The model's step workspace: one buffer per temporary of a forward step, reserved when the
// model starts to the sizes of StepWorkspaceLayout (sharding/step_workspace.h) and reused by
// every step, so that a step allocates nothing. Use(buffer, n) hands out n value-initialised
// elements and never grows a buffer past what it was reserved.
#pragma once

#include <cstdint>
#include <vector>

#include "common/dtype.h"
#include "common/status.h"
#include "sharding/step_workspace.h"
#include "worker/expert_exchange.h"
#include "worker/linear.h"
#include "worker/paged_kv.h"

namespace flotilla {

class SequenceState;

// n value-initialised elements of `v` (capacity reserved at start: no allocation).
template <class T>
T* Use(std::vector<T>& v, int64_t n) {
  FLOTILLA_CHECK(n >= 0 && size_t(n) <= v.capacity());
  v.assign(size_t(n), T{});
  return v.data();
}

struct StepWorkspace {
  struct ChunkRecord {  // Model::Rows::ChunkInfo's storage (StepWorkspaceLayout counts 32 B)
    SequenceState* seq;
    int64_t first_row, n, start_pos;
  };
  struct ThreadScratch {
    std::vector<float> scores;
    std::vector<int32_t> idx, order, sel;
    std::vector<const bf16*> list;
  };

  explicit StepWorkspace(const StepWorkspaceLayout& layout);
  // Bytes reserved: equals layout.Bytes().
  uint64_t ReservedBytes() const;

  StepWorkspaceLayout layout;
  // bf16
  std::vector<bf16> h, res, hsel, mtp_h, mtp_in;          // streams
  std::vector<bf16> x, y, embed, mtp_e, mtp_ep, head_in;  // hidden
  std::vector<bf16> mtp_hn, mtp_hp;                       // mtp_streams
  std::vector<bf16> q_lora, query, kv, index_query, index_weights, gather, ring, entries,
      block_keys, attn_out, wo_a_out, compressed, routed, expert_in, expert_out, shared_out,
      expert_gate_up, expert_act;
  // f32
  std::vector<float> hc_post, hc_comb, tp_sum, head_part, head_all, compressor_k, compressor_g,
      pooled, pick_scores, router_logits, route_weights, expert_weights;
  CompressorState state, reset_state;
  // integers
  std::vector<int32_t> token, chunk_of, experts, mtp_token, mtp_chunk_of, mtp_experts, num_picks,
      picks, entry_slot, route_idx, expert_order;
  std::vector<int64_t> hash_ids, pos, mtp_pos, pick_rows, entry_pos, expert_offsets;
  std::vector<ChunkRecord> chunks, mtp_chunks;
  // bytes and pointers
  QuantizedActs block_acts, expert_acts, linear_acts;
  std::vector<uint8_t> packed;
  std::vector<const float*> k_rows, g_rows;
  std::vector<ThreadScratch> threads;
  // Expert parallelism (layout.limits.ep_size > 1; empty otherwise).
  ExpertExchange exchange;
  std::vector<bf16> exchange_replies, moe_slice, moe_gather;
  std::vector<int32_t> exchange_order;
};

}  // namespace flotilla
