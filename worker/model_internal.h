// Internals shared by the model's translation units (not part of the API).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "worker/model.h"

namespace flotilla {

// The tokens of one Forward call, flattened: row r is chunk chunk_of[r] at position pos[r].
// The tokens of one Forward call, flattened: row r is chunk chunk_of[r] at position pos[r]. The
// vectors are the step workspace's (reserved at start: adding rows allocates nothing).
struct Model::Rows {
  using ChunkInfo = StepWorkspace::ChunkRecord;
  int64_t n = 0;
  std::vector<int64_t>& pos;
  std::vector<int32_t>& token;
  std::vector<int32_t>& chunk_of;
  std::vector<int32_t>& experts;  // routed experts of each row (its chunk's; <= the model's K)
  std::vector<ChunkInfo>& chunks;

  Rows(std::vector<int64_t>& p, std::vector<int32_t>& t, std::vector<int32_t>& c,
       std::vector<int32_t>& e, std::vector<ChunkInfo>& ch)
      : pos(p), token(t), chunk_of(c), experts(e), chunks(ch) {
    pos.clear();
    token.clear();
    chunk_of.clear();
    experts.clear();
    chunks.clear();
  }
  // The step's rows (ws.pos, ...) or the MTP rows (ws.mtp_pos, ...).
  static Rows Step(StepWorkspace& ws) {
    return Rows(ws.pos, ws.token, ws.chunk_of, ws.experts, ws.chunks);
  }
  static Rows Mtp(StepWorkspace& ws) {
    return Rows(ws.mtp_pos, ws.mtp_token, ws.mtp_chunk_of, ws.mtp_experts, ws.mtp_chunks);
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
};

// out = w2(bf16(row_weight * silu(min(w1 x, L)) * clamp(w3 x, ±L))) for m rows, from quantised
// rows (xq, FP8/FP4 experts) or bf16 rows (x, row stride d).
// Temporaries come from `ws` (gate/up, activations, the w2 input's quantisation); m is at most
// ws.layout.expert_rows.
void ExpertForward(const ExpertWeights& e, const QuantizedActs* xq, const bf16* x, int64_t m,
                   const float* row_weight, float limit, bf16* out, int64_t d, StepWorkspace& ws);

// Where a grouped expert pass reads its rows: entry i of the permuted list (value v = order[i])
// reads row v / divisor of the activations — FP8 codes and their scales (quantised experts) or
// bf16 — and its routing weight as the f32 at weight + v * ld_weight. Strides in bytes.
struct ExpertRows {
  const uint8_t* q = nullptr;
  int64_t ld_q = 0;
  const uint8_t* scale = nullptr;
  int64_t ld_scale = 0;
  const uint8_t* x = nullptr;
  int64_t ld_x = 0;
  int64_t divisor = 1;
  const uint8_t* weight = nullptr;
  int64_t ld_weight = 0;
};

// Every routed expert of `experts` over its entries: group g's entries are
// order[offsets[g], offsets[g + 1]) (total entries in all), run in passes of at most
// ws.layout.expert_rows rows of the permuted list; entry v's output row goes to row v of `out`
// ([*, d] bf16). Gate/up, SwiGLU (times the entry's weight), the w2 input's quantisation and
// w2 as ExpertForward does them, row by row.
void GroupedExperts(std::span<const ExpertWeights> experts, const ExpertRows& in,
                    const int32_t* order, const int64_t* offsets, int64_t total, float limit,
                    bf16* out, int64_t d, StepWorkspace& ws);

// Gate (router logits into `logits`), sqrtsoftplus, bias top-k or tid2eid, normalise, scale (spec
// §9.1) for n rows, k slots each. `experts` (may be null: k for every row) gives a row its own K <=
// k: it is routed as a model with K experts per token would route it (hash layers: the first K
// tid2eid columns), and its slots past K repeat its first expert with weight 0, which adds exactly
// nothing.
void RouteTokens(const ModelConfig& c, const MoeWeights& mw, const int32_t* tokens,
                 const int32_t* experts, int64_t n, int64_t k, const bf16* x,
                 std::vector<float>* logits, std::vector<int64_t>* hash_ids,
                 std::vector<int32_t>* idx, std::vector<float>* weights);

// Per token: routed outputs ([n, k, d], slot order) summed in f32 in increasing expert id, then
// the shared output (may be null), one rounding to bf16.
void CombineExperts(const MoeWeights& mw, const int32_t* idx, const bf16* routed,
                    const bf16* shared, int64_t n, int64_t k, int64_t d, bf16* out);

// bf16 FP8 round trip on the non-RoPE dims [0, nope) in groups of 64 (a shorter last group is
// its own group).
void Fp8SimulateNope(bf16* x, int64_t rows, int64_t ld, int64_t nope);

}  // namespace flotilla
