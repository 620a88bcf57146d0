// Internals shared by the model's translation units (not part of the API).
#pragma once

#include <cstdint>
#include <vector>

#include "worker/model.h"

namespace flotilla {

// The tokens of one Forward call, flattened: row r is chunk chunk_of[r] at position pos[r].
struct Model::Rows {
  struct ChunkInfo {
    SequenceState* seq = nullptr;
    int64_t first_row = 0;
    int64_t n = 0;
    int64_t start_pos = 0;
  };
  int64_t n = 0;
  std::vector<int64_t> pos;
  std::vector<int32_t> token;
  std::vector<int32_t> chunk_of;
  std::vector<int32_t> experts;  // routed experts of each row (its chunk's; <= the model's K)
  std::vector<ChunkInfo> chunks;

  void Add(SequenceState* seq, int64_t start_pos, std::span<const int32_t> tokens,
           int64_t num_experts) {
    chunks.push_back({seq, n, int64_t(tokens.size()), start_pos});
    for (size_t i = 0; i < tokens.size(); ++i) {
      pos.push_back(start_pos + int64_t(i));
      token.push_back(tokens[i]);
      chunk_of.push_back(int32_t(chunks.size() - 1));
      experts.push_back(int32_t(num_experts));
    }
    n += int64_t(tokens.size());
  }
};

// out = w2(bf16(row_weight * silu(min(w1 x, L)) * clamp(w3 x, ±L))) for m rows, from quantised
// rows (xq, FP8/FP4 experts) or bf16 rows (x, row stride d).
void ExpertForward(const ExpertWeights& e, const QuantizedActs* xq, const bf16* x, int64_t m,
                   const float* row_weight, float limit, bf16* out, int64_t d);

// Gate, sqrtsoftplus, bias top-k or tid2eid, normalise, scale (spec §9.1) for n rows, k slots
// each. `experts` (may be null: k for every row) gives a row its own K <= k: it is routed as a
// model with K experts per token would route it (hash layers: the first K tid2eid columns), and
// its slots past K repeat its first expert with weight 0, which adds exactly nothing.
void RouteTokens(const ModelConfig& c, const MoeWeights& mw, const int32_t* tokens,
                 const int32_t* experts, int64_t n, int64_t k, const bf16* x,
                 std::vector<int32_t>* idx, std::vector<float>* weights);

// Per token: routed outputs ([n, k, d], slot order) summed in f32 in increasing expert id, then
// the shared output (may be null), one rounding to bf16.
void CombineExperts(const MoeWeights& mw, const int32_t* idx, const bf16* routed,
                    const bf16* shared, int64_t n, int64_t k, int64_t d, bf16* out);

// bf16 FP8 round trip on the non-RoPE dims [0, nope) in groups of 64 (a shorter last group is
// its own group).
void Fp8SimulateNope(bf16* x, int64_t rows, int64_t ld, int64_t nope);

}  // namespace flotilla
