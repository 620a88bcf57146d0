// Internals shared by the model's translation units (not part of the API).
#pragma once

#include <cstdint>
#include <vector>

#include "worker/backend_status.h"
#include "worker/model.h"

namespace flotilla {

// The tokens of one Forward call, flattened: row r is chunk chunk_of[r] at position pos[r]. The
// vectors are the step workspace's (reserved at start: adding rows allocates nothing); Upload()
// copies positions, tokens and experts into the workspace's backend buffers once the rows are
// complete (pos_dev, token_dev, experts_dev: rows [0, n)).
struct Model::Rows {
  using ChunkInfo = StepWorkspace::ChunkRecord;
  int64_t n = 0;
  std::vector<int64_t>& pos;
  std::vector<int32_t>& token;
  std::vector<int32_t>& chunk_of;
  std::vector<int32_t>& experts;  // routed experts of each row (its chunk's; <= the model's K)
  std::vector<ChunkInfo>& chunks;
  kernels::In<int64_t> pos_dev;
  kernels::In<int32_t> token_dev, experts_dev;

  Rows(std::vector<int64_t>& p, std::vector<int32_t>& t, std::vector<int32_t>& c,
       std::vector<int32_t>& e, std::vector<ChunkInfo>& ch, kernels::Out<int64_t> p_dev,
       kernels::Out<int32_t> t_dev, kernels::Out<int32_t> e_dev)
      : pos(p),
        token(t),
        chunk_of(c),
        experts(e),
        chunks(ch),
        pos_buf_(p_dev),
        token_buf_(t_dev),
        experts_buf_(e_dev) {
    pos.clear();
    token.clear();
    chunk_of.clear();
    experts.clear();
    chunks.clear();
  }
  // The step's rows (ws.pos, ...) or the MTP rows (ws.mtp_pos, ...).
  static Rows Step(StepWorkspace& ws) {
    return Rows(ws.pos, ws.token, ws.chunk_of, ws.experts, ws.chunks, ws.pos_dev.span(),
                ws.token_dev.span(), ws.experts_dev.span());
  }
  static Rows Mtp(StepWorkspace& ws) {
    return Rows(ws.mtp_pos, ws.mtp_token, ws.mtp_chunk_of, ws.mtp_experts, ws.mtp_chunks,
                ws.mtp_pos_dev.span(), ws.mtp_token_dev.span(), ws.mtp_experts_dev.span());
  }
  // Copies the rows' positions, tokens and experts to backend memory (on `queue`; the host
  // vectors stay unchanged until the queue has run it: the step does not touch them again).
  absl::Status Upload(kernels::Backend& backend, kernels::Queue& queue) {
    const kernels::Out<int64_t> p = pos_buf_.first(n);
    const kernels::Out<int32_t> t = token_buf_.first(n), e = experts_buf_.first(n);
    RETURN_IF_BACKEND_ERROR(backend.Upload(queue, std::span<const int64_t>(pos), p));
    RETURN_IF_BACKEND_ERROR(backend.Upload(queue, std::span<const int32_t>(token), t));
    RETURN_IF_BACKEND_ERROR(backend.Upload(queue, std::span<const int32_t>(experts), e));
    pos_dev = p;
    token_dev = t;
    experts_dev = e;
    return absl::OkStatus();
  }

  void Begin(SequenceState* seq, int64_t start_pos) { chunks.push_back({seq, n, 0, start_pos}); }
  // Appends a row to the chunk begun last.
  void AddRow(int32_t tok, int64_t num_experts) {
    ChunkInfo& ch = chunks.back();
    pos.push_back(ch.start_pos + ch.n);
    token.push_back(tok);
    chunk_of.push_back(int32_t(chunks.size() - 1));
    experts.push_back(int32_t(num_experts));
    ++ch.n;
    ++n;
  }
  void Add(SequenceState* seq, int64_t start_pos, std::span<const int32_t> tokens,
           int64_t num_experts) {
    Begin(seq, start_pos);
    for (int32_t t : tokens) AddRow(t, num_experts);
  }

 private:
  kernels::Out<int64_t> pos_buf_;
  kernels::Out<int32_t> token_buf_, experts_buf_;
};

// out = w2(bf16(row_weight * silu(min(w1 x, L)) * clamp(w3 x, ±L))) for m rows, from quantised
// rows (xq, FP8/FP4 experts) or bf16 rows (x, row stride d); row_weight may be unset (1).
// Temporaries come from `ws` (gate/up, activations, the w2 input's quantisation); m is at most
// ws.layout.expert_rows.
absl::Status ExpertForward(kernels::Backend& backend, kernels::Queue& queue, const ExpertWeights& e,
                           const QuantizedActs* xq, kernels::In<bf16> x, int64_t m,
                           kernels::In<float> row_weight, float limit, kernels::Out<bf16> out,
                           int64_t d, StepWorkspace& ws);

// Where a grouped expert pass reads its entries: entry i of the permuted list (value v =
// order[i]) reads row v / divisor of the activations — FP8 codes and their scales (quantised
// experts) or bf16 — and its routing weight as the f32 at byte v * ld_weight of `weight`.
// Byte views with strides in bytes (records of the expert exchange hold all three).
struct ExpertRows {
  kernels::In<uint8_t> q, scale, x, weight;
  int64_t ld_q = 0, ld_scale = 0, ld_x = 0, ld_weight = 0;
  int64_t divisor = 1;
};

// Every routed expert of `mw` over its entries: expert g's entries are
// order[offsets[g], offsets[g + 1]) (`total` in all; offsets read on the device by the grouped
// GEMMs), run in passes of at most ws.layout.expert_rows rows of the permuted list; entry v's
// output goes to row v of `out` ([*, d] bf16). Gate/up, SwiGLU (times the entry's weight), the
// w2 input's quantisation and w2 as ExpertForward does them, row by row.
absl::Status GroupedExperts(kernels::Backend& backend, kernels::Queue& queue, const MoeWeights& mw,
                            const ExpertRows& in, kernels::In<int32_t> order,
                            kernels::In<int64_t> offsets, int64_t total, float limit,
                            kernels::Out<bf16> out, int64_t d, StepWorkspace& ws);

// Gate (router logits, [n, E], into ws.router_logits), sqrtsoftplus, bias top-k or tid2eid
// (rows gathered into ws.hash_ids), normalise, scale (spec §9.1) for n rows, k slots each (idx
// and weights: [n, k]). `experts` ([n] in backend memory, and the same on the host) gives a row
// its own K <= k: it is routed as a model with K experts per token would route it (hash layers:
// the first K tid2eid columns), and its slots past K repeat its first expert with weight 0,
// which adds exactly nothing.
absl::Status RouteTokens(kernels::Backend& backend, kernels::Queue& queue, const ModelConfig& c,
                         const MoeWeights& mw, kernels::In<int32_t> tokens,
                         kernels::In<int32_t> experts, const int32_t* experts_host, int64_t n,
                         int64_t k, kernels::In<bf16> x, StepWorkspace& ws,
                         kernels::Out<int32_t> idx, kernels::Out<float> weights);

// Fills mw.lists from mw.experts (once, at load).
void MakeExpertLists(MoeWeights& mw);

}  // namespace flotilla
