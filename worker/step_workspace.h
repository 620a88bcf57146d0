// The model's step workspace: one buffer per temporary of a forward step, reserved when the
// model starts to the sizes of StepWorkspaceLayout (sharding/step_workspace.h) and reused by
// every step, so that a step allocates nothing. Activations (everything an op reads or writes)
// are DeviceBuffers carved from one backend arena ("step workspace"); metadata built on the host
// (row lists, chunk records, index lists, pointer lists, communication staging) stays in host
// vectors. Use(buffer, n) hands out n zeroed elements and never grows a buffer past what it was
// reserved.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "common/dtype.h"
#include "common/status.h"
#include "kernels/backend.h"
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
 private:
  // Declared first: every buffer below frees into it before it goes.
  std::unique_ptr<kernels::Arena> arena_;

 public:
  struct ChunkRecord {  // Model::Rows::ChunkInfo's storage (StepWorkspaceLayout counts 32 B)
    SequenceState* seq;
    int64_t first_row, n, start_pos;
  };
  template <typename T>
  using Buffer = kernels::DeviceBuffer<T>;

  // Reserves every buffer: one arena of `backend` for the activations (errors name the arena
  // and the bytes asked for), host vectors for the rest. Use() zeroes on `queue`.
  static absl::StatusOr<std::unique_ptr<StepWorkspace>> Make(const StepWorkspaceLayout& layout,
                                                             kernels::Backend& backend,
                                                             kernels::Queue& queue);
  // Bytes reserved: equals layout.Bytes() (the arena adds at most its alignment per buffer).
  uint64_t ReservedBytes() const;

  // The first n elements of `b`, zeroed on the queue (n at most what `b` was reserved).
  template <typename T>
  kernels::Out<T> Use(Buffer<T>& b, int64_t n) {
    FLOTILLA_CHECK(n >= 0 && n <= b.size());
    const kernels::Out<T> span = b.span().first(n);
    const kernels::BackendStatus s = backend_->Fill(*queue_, span, T{});
    if (!s.ok()) {
      std::fprintf(stderr, "flotilla: step workspace: %s\n", s.message().c_str());
      std::abort();  // a span of the workspace's own arena: a programmer error
    }
    return span;
  }

  StepWorkspaceLayout layout;
  // ---- backend memory
  // bf16
  Buffer<bf16> h, res, hsel, mtp_h, mtp_in;          // streams
  Buffer<bf16> x, y, embed, mtp_e, mtp_ep, head_in;  // hidden
  Buffer<bf16> mtp_hn, mtp_hp;                       // mtp_streams
  Buffer<bf16> q_lora, query, kv, index_query, index_weights, gather, ring, entries, block_keys,
      attn_out, wo_a_out, compressed, routed, expert_in, expert_out, shared_out, expert_gate_up,
      expert_act;
  // f32
  Buffer<float> hc_post, hc_comb, tp_sum_dev, head_part, compressor_k, compressor_g, pooled,
      pick_scores, router_logits, route_weights, expert_weights;
  Buffer<float> state_kv, state_score;  // one compressor's state (PagedKv reads / writes it)
  // integers: the rows' device copies (Model::Rows), the indexer's picks, the routing
  Buffer<int64_t> pos_dev, mtp_pos_dev, entry_pos;
  Buffer<int32_t> token_dev, experts_dev, mtp_token_dev, mtp_experts_dev, pick_rows_dev, num_picks,
      picks, route_idx;
  // A chunk's picked entries (entry slots, the list, its count) and one page table's copy.
  Buffer<int32_t> entry_slot, page_ids;
  Buffer<uint8_t> packed;  // packed KV moving between the pool and the rows
  // the MoE: the tokens' tid2eid rows, the assignments grouped by expert (offsets and order)
  Buffer<int64_t> hash_ids, expert_offsets;
  Buffer<int32_t> expert_order;
  // expert parallelism (layout.limits.ep_size > 1; empty otherwise): the received records, their
  // grouping by local expert and the replies to them
  Buffer<uint8_t> exchange_records;
  Buffer<int32_t> exchange_order_dev;
  Buffer<bf16> exchange_replies_dev;
  // FP8 activations: the block's, an expert pass's, a linear layer's (spans of act_q/act_scale)
  QuantizedActs block_acts, expert_acts, linear_acts;

  // ---- host memory
  // Communication staging (MPI reads and writes host memory): TP sums, this rank's logits and
  // the TP group's, this rank's heads and the TP group's (gather_stage: [local | all]).
  std::vector<float> tp_sum, head_stage, head_all;
  std::vector<bf16> gather_stage;
  std::vector<int32_t> token, chunk_of, experts, mtp_token, mtp_chunk_of, mtp_experts, pick_rows;
  std::vector<int64_t> pos, mtp_pos;
  std::vector<ChunkRecord> chunks, mtp_chunks;
  // expert parallelism: the exchange and the staging of what it moves (sharding/step_workspace.h)
  ExpertExchange exchange;
  std::vector<uint8_t> exchange_send;
  std::vector<int32_t> exchange_idx, exchange_order;
  std::vector<float> exchange_weights;
  std::vector<int64_t> exchange_offsets;
  std::vector<bf16> exchange_replies, exchange_routed, moe_slice, moe_gather;

 private:
  StepWorkspace() = default;
  kernels::Backend* backend_ = nullptr;
  kernels::Queue* queue_ = nullptr;
  Buffer<fp8> act_q_[3];
  Buffer<e8m0> act_scale_[3];
  uint64_t device_bytes_ = 0;  // elements x size of every buffer above
};

}  // namespace flotilla
