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
  std::vector<ChunkInfo> chunks;

  void Add(SequenceState* seq, int64_t start_pos, std::span<const int32_t> tokens) {
    chunks.push_back({seq, n, int64_t(tokens.size()), start_pos});
    for (size_t i = 0; i < tokens.size(); ++i) {
      pos.push_back(start_pos + int64_t(i));
      token.push_back(tokens[i]);
      chunk_of.push_back(int32_t(chunks.size() - 1));
    }
    n += int64_t(tokens.size());
  }
};

// bf16 FP8 round trip on the non-RoPE dims [0, nope) in groups of 64 (a shorter last group is
// its own group).
void Fp8SimulateNope(bf16* x, int64_t rows, int64_t ld, int64_t nope);

}  // namespace flotilla
