#include "worker/step_workspace.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "worker/backend_status.h"

namespace flotilla {
namespace {

template <class T>
void Reserve(std::vector<T>& v, int64_t n) {
  v.reserve(size_t(n));
}

template <class T>
uint64_t Held(const std::vector<T>& v) {
  return uint64_t(v.capacity() * sizeof(T));
}

// The device buffers of a workspace and their sizes, listed once for sizing and carving.
class Carver {
 public:
  Carver(kernels::Arena* arena, int64_t alignment) : arena_(arena), alignment_(alignment) {}
  template <typename T>
  absl::Status operator()(kernels::DeviceBuffer<T>& b, int64_t n) {
    bytes_ += uint64_t(n) * sizeof(T);
    padded_ +=
        (std::max<int64_t>(n * int64_t(sizeof(T)), 1) + alignment_ - 1) / alignment_ * alignment_;
    if (arena_ == nullptr) return absl::OkStatus();
    ASSIGN_OR_RETURN_BACKEND(b, kernels::DeviceBuffer<T>::Make(*arena_, n));
    return absl::OkStatus();
  }
  uint64_t bytes() const { return bytes_; }
  int64_t padded() const { return padded_; }

 private:
  kernels::Arena* arena_;
  int64_t alignment_;
  uint64_t bytes_ = 0;
  int64_t padded_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<StepWorkspace>> StepWorkspace::Make(const StepWorkspaceLayout& l,
                                                                   kernels::Backend& backend,
                                                                   kernels::Queue& queue) {
  static_assert(sizeof(ChunkRecord) == StepWorkspaceLayout::kChunkRecordBytes);
  std::unique_ptr<StepWorkspace> ws(new StepWorkspace());
  StepWorkspace& w = *ws;
  w.layout = l;
  w.backend_ = &backend;
  w.queue_ = &queue;
  auto carve = [&](Carver& c) -> absl::Status {
    for (auto* b : {&w.h, &w.res, &w.hsel, &w.mtp_h, &w.mtp_in}) RETURN_IF_ERROR(c(*b, l.streams));
    for (auto* b : {&w.x, &w.y, &w.embed, &w.mtp_e, &w.mtp_ep, &w.head_in})
      RETURN_IF_ERROR(c(*b, l.hidden));
    for (auto* b : {&w.mtp_hn, &w.mtp_hp}) RETURN_IF_ERROR(c(*b, l.mtp_streams));
    const std::pair<Buffer<bf16>*, int64_t> bf16s[] = {{&w.q_lora, l.q_lora},
                                                       {&w.query, l.query},
                                                       {&w.kv, l.kv},
                                                       {&w.index_query, l.index_query},
                                                       {&w.index_weights, l.index_weights},
                                                       {&w.gather, l.gather},
                                                       {&w.ring, l.ring},
                                                       {&w.entries, l.entries},
                                                       {&w.block_keys, l.block_keys},
                                                       {&w.attn_out, l.attn_out},
                                                       {&w.wo_a_out, l.wo_a_out},
                                                       {&w.compressed, l.compressed},
                                                       {&w.routed, l.routed},
                                                       {&w.expert_in, l.expert_in},
                                                       {&w.expert_out, l.expert_out},
                                                       {&w.shared_out, l.shared_out},
                                                       {&w.expert_gate_up, l.expert_gate_up},
                                                       {&w.expert_act, l.expert_act}};
    for (const auto& [b, n] : bf16s) RETURN_IF_ERROR(c(*b, n));
    const std::pair<Buffer<float>*, int64_t> f32s[] = {{&w.hc_post, l.hc_post},
                                                       {&w.hc_comb, l.hc_comb},
                                                       {&w.tp_sum_dev, l.tp_sum},
                                                       {&w.head_part, l.head_part},
                                                       {&w.compressor_k, l.compressor_kv},
                                                       {&w.compressor_g, l.compressor_kv},
                                                       {&w.pooled, l.pooled},
                                                       {&w.pick_scores, l.pick_scores},
                                                       {&w.router_logits, l.router_logits},
                                                       {&w.route_weights, l.route_weights},
                                                       {&w.expert_weights, l.expert_rows},
                                                       {&w.state_kv, l.compressor_state},
                                                       {&w.state_score, l.compressor_state}};
    for (const auto& [b, n] : f32s) RETURN_IF_ERROR(c(*b, n));
    for (auto* b : {&w.pos_dev, &w.mtp_pos_dev, &w.entry_pos}) RETURN_IF_ERROR(c(*b, l.row_i64));
    for (auto* b : {&w.token_dev, &w.experts_dev, &w.mtp_token_dev, &w.mtp_experts_dev,
                    &w.pick_rows_dev, &w.num_picks})
      RETURN_IF_ERROR(c(*b, l.row_i32));
    RETURN_IF_ERROR(c(w.picks, l.picks));
    RETURN_IF_ERROR(c(w.route_idx, l.route_idx));
    RETURN_IF_ERROR(c(w.entry_slot, l.entry_slot));
    RETURN_IF_ERROR(c(w.page_ids, l.page_ids));
    RETURN_IF_ERROR(c(w.packed, l.packed));
    RETURN_IF_ERROR(c(w.hash_ids, l.route_idx));
    RETURN_IF_ERROR(c(w.expert_offsets, l.expert_offsets));
    RETURN_IF_ERROR(c(w.expert_order, l.expert_order));
    const bool ep = l.limits.ep_size > 1;
    RETURN_IF_ERROR(c(w.exchange_records, ep ? int64_t(l.exchange.dispatch_recv_bytes) : 0));
    RETURN_IF_ERROR(c(w.exchange_order_dev, ep ? l.exchange_order : 0));
    RETURN_IF_ERROR(c(w.exchange_replies_dev, ep ? l.exchange_replies : 0));
    for (int i = 0; i < 3; ++i) {
      RETURN_IF_ERROR(c(w.act_q_[i], l.act_q));
      RETURN_IF_ERROR(c(w.act_scale_[i], l.act_scale));
    }
    return absl::OkStatus();
  };
  Carver size(nullptr, backend.memory().alignment);
  RETURN_IF_ERROR(carve(size));
  kernels::BackendResult<std::unique_ptr<kernels::Arena>> arena =
      backend.NewArena("step workspace", size.padded());
  if (!arena.ok()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("step workspace of ", size.padded(), " bytes: ", arena.status().message()));
  }
  w.arena_ = std::move(arena.value());
  Carver carver(w.arena_.get(), backend.memory().alignment);
  RETURN_IF_ERROR(carve(carver));
  w.device_bytes_ = carver.bytes();
  QuantizedActs* acts[3] = {&w.block_acts, &w.expert_acts, &w.linear_acts};
  for (int i = 0; i < 3; ++i) {
    acts[i]->q = w.act_q_[i].span();
    acts[i]->scale = w.act_scale_[i].span();
  }

  Reserve(w.tp_sum, l.tp_sum);
  Reserve(w.head_stage, l.head_stage);
  Reserve(w.head_all, l.head_all);
  Reserve(w.gather_stage, l.gather_stage);
  for (auto* v : {&w.token, &w.chunk_of, &w.experts, &w.mtp_token, &w.mtp_chunk_of, &w.mtp_experts,
                  &w.pick_rows})
    Reserve(*v, l.row_i32);
  for (auto* v : {&w.pos, &w.mtp_pos}) Reserve(*v, l.row_i64);
  Reserve(w.chunks, l.limits.sequences);
  Reserve(w.mtp_chunks, l.limits.sequences);
  if (l.limits.ep_size > 1) {
    w.exchange = ExpertExchange(l.exchange);
    Reserve(w.exchange_send, l.exchange_send);
    Reserve(w.exchange_idx, l.exchange_copies);
    Reserve(w.exchange_weights, l.exchange_copies);
    Reserve(w.exchange_order, l.exchange_order);
    Reserve(w.exchange_offsets, l.expert_offsets);
    Reserve(w.exchange_replies, l.exchange_replies);
    Reserve(w.exchange_routed, l.exchange_routed);
    Reserve(w.moe_slice, l.moe_slice);
    Reserve(w.moe_gather, l.moe_gather);
  }
  return ws;
}

uint64_t StepWorkspace::ReservedBytes() const {
  uint64_t b = device_bytes_;
  b += Held(tp_sum) + Held(head_stage) + Held(head_all) + Held(gather_stage);
  for (auto* v : {&token, &chunk_of, &experts, &mtp_token, &mtp_chunk_of, &mtp_experts, &pick_rows})
    b += Held(*v);
  for (auto* v : {&pos, &mtp_pos}) b += Held(*v);
  b += Held(chunks) + Held(mtp_chunks);
  if (layout.limits.ep_size > 1) {
    b += exchange.ReservedBytes() + Held(exchange_send) + Held(exchange_idx) +
         Held(exchange_weights) + Held(exchange_order) + Held(exchange_offsets) +
         Held(exchange_replies) + Held(exchange_routed) + Held(moe_slice) + Held(moe_gather);
  }
  return b;
}

}  // namespace flotilla
