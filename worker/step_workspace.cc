#include "worker/step_workspace.h"

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

}  // namespace

StepWorkspace::StepWorkspace(const StepWorkspaceLayout& l) : layout(l) {
  static_assert(sizeof(ChunkRecord) == StepWorkspaceLayout::kChunkRecordBytes);
  for (auto* v : {&h, &res, &hsel, &mtp_h, &mtp_in}) Reserve(*v, l.streams);
  for (auto* v : {&x, &y, &embed, &mtp_e, &mtp_ep, &head_in}) Reserve(*v, l.hidden);
  for (auto* v : {&mtp_hn, &mtp_hp}) Reserve(*v, l.mtp_streams);
  Reserve(q_lora, l.q_lora);
  Reserve(query, l.query);
  Reserve(kv, l.kv);
  Reserve(index_query, l.index_query);
  Reserve(index_weights, l.index_weights);
  Reserve(gather, l.gather);
  Reserve(ring, l.ring);
  Reserve(entries, l.entries);
  Reserve(block_keys, l.block_keys);
  Reserve(attn_out, l.attn_out);
  Reserve(wo_a_out, l.wo_a_out);
  Reserve(compressed, l.compressed);
  Reserve(routed, l.routed);
  Reserve(expert_in, l.expert_in);
  Reserve(expert_out, l.expert_out);
  Reserve(shared_out, l.shared_out);
  Reserve(expert_gate_up, l.expert_gate_up);
  Reserve(expert_act, l.expert_act);
  Reserve(hc_post, l.hc_post);
  Reserve(hc_comb, l.hc_comb);
  Reserve(tp_sum, l.tp_sum);
  Reserve(head_part, l.head_part);
  Reserve(head_all, l.head_all);
  Reserve(compressor_k, l.compressor_kv);
  Reserve(compressor_g, l.compressor_kv);
  for (CompressorState* s : {&state, &reset_state}) {
    Reserve(s->kv, l.compressor_state);
    Reserve(s->score, l.compressor_state);
  }
  Reserve(pooled, l.pooled);
  Reserve(pick_scores, l.pick_scores);
  Reserve(router_logits, l.router_logits);
  Reserve(route_weights, l.route_weights);
  Reserve(expert_weights, l.expert_rows);
  for (auto* v : {&token, &chunk_of, &experts, &mtp_token, &mtp_chunk_of, &mtp_experts, &num_picks})
    Reserve(*v, l.row_i32);
  Reserve(picks, l.picks);
  Reserve(entry_slot, l.entry_slot);
  Reserve(route_idx, l.route_idx);
  Reserve(hash_ids, l.route_idx);
  Reserve(expert_order, l.expert_order);
  for (auto* v : {&pos, &mtp_pos, &pick_rows, &entry_pos}) Reserve(*v, l.row_i64);
  Reserve(expert_offsets, l.expert_offsets);
  Reserve(chunks, l.limits.sequences);
  Reserve(mtp_chunks, l.limits.sequences);
  for (QuantizedActs* a : {&block_acts, &expert_acts, &linear_acts}) {
    Reserve(a->q, l.act_q);
    Reserve(a->scale, l.act_scale);
  }
  Reserve(packed, l.packed);
  Reserve(k_rows, l.pool_rows);
  Reserve(g_rows, l.pool_rows);
  threads.resize(size_t(l.limits.threads));
  for (ThreadScratch& t : threads) {
    Reserve(t.scores, l.thread_candidates);
    Reserve(t.idx, l.thread_candidates);
    Reserve(t.order, l.thread_topk);
    Reserve(t.sel, l.thread_topk);
    Reserve(t.list, l.thread_list);
  }
  if (l.limits.ep_size > 1) {
    exchange = ExpertExchange(l.exchange);
    Reserve(exchange_replies, l.exchange_replies);
    Reserve(moe_slice, l.moe_slice);
    Reserve(moe_gather, l.moe_gather);
    Reserve(exchange_order, l.exchange_order);
  }
}

uint64_t StepWorkspace::ReservedBytes() const {
  uint64_t b = 0;
  for (auto* v : {&h,          &res,    &hsel,      &mtp_h,      &mtp_in,      &x,
                  &y,          &embed,  &mtp_e,     &mtp_ep,     &head_in,     &mtp_hn,
                  &mtp_hp,     &q_lora, &query,     &kv,         &index_query, &index_weights,
                  &gather,     &ring,   &entries,   &block_keys, &attn_out,    &wo_a_out,
                  &compressed, &routed, &expert_in, &expert_out, &shared_out,  &expert_gate_up,
                  &expert_act})
    b += Held(*v);
  for (auto* v : {&hc_post, &hc_comb, &tp_sum, &head_part, &head_all, &compressor_k, &compressor_g,
                  &pooled, &pick_scores, &router_logits, &route_weights, &expert_weights, &state.kv,
                  &state.score, &reset_state.kv, &reset_state.score})
    b += Held(*v);
  for (auto* v : {&token, &chunk_of, &experts, &mtp_token, &mtp_chunk_of, &mtp_experts, &num_picks,
                  &picks, &entry_slot, &route_idx, &expert_order})
    b += Held(*v);
  for (auto* v : {&pos, &mtp_pos, &pick_rows, &entry_pos, &expert_offsets, &hash_ids})
    b += Held(*v);
  b += Held(chunks) + Held(mtp_chunks);
  for (const QuantizedActs* a : {&block_acts, &expert_acts, &linear_acts})
    b += Held(a->q) + Held(a->scale);
  b += Held(packed) + Held(k_rows) + Held(g_rows);
  for (const ThreadScratch& t : threads)
    b += Held(t.scores) + Held(t.idx) + Held(t.order) + Held(t.sel) + Held(t.list);
  if (layout.limits.ep_size > 1) {
    b += exchange.ReservedBytes() + Held(exchange_replies) + Held(moe_slice) + Held(moe_gather) +
         Held(exchange_order);
  }
  return b;
}

}  // namespace flotilla
