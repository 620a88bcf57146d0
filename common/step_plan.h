// The per-step plan the coordinator broadcasts to every worker over MPI, and the sampled tokens
// the workers send back (design.md §1, §3). A compact little-endian binary format; never
// protobuf. Parse() validates lengths and counts, naming what is wrong.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace flotilla {

struct StepSampling {
  uint8_t greedy = 1;
  float temperature = 1.0f;
  float top_p = 1.0f;
  int64_t top_k = 0;
  uint64_t seed = 0;
  uint8_t logprobs = 0;      // 1: return the sampled token's log probability
  uint8_t top_logprobs = 0;  // with logprobs: also the this-many most likely tokens (<= 20)
  uint8_t experts_per_token = 0;  // routed experts per token; 0: the model's
};

inline constexpr int kMaxTopLogprobs = 20;

struct StepSequence {
  uint64_t seq_id = 0;
  int32_t dp_group = 0;         // the DP group that holds the sequence's KV
  int64_t start_pos = 0;        // position of tokens[0]; 0 starts a new sequence
  std::vector<int32_t> tokens;  // prompt chunk, or the one token chosen last step
  uint8_t sample = 0;           // 1: sample the next token after this chunk
  StepSampling sampling;        // used when the sequence starts (start_pos == 0)
};

struct StepPlan {
  int64_t step = 0;
  uint8_t shutdown = 0;            // workers leave their loop
  std::vector<uint64_t> release;   // sequences to forget (finished, cancelled)
  std::vector<StepSequence> seqs;
};

std::string SerializeStepPlan(const StepPlan& plan);
absl::StatusOr<StepPlan> ParseStepPlan(const std::string& bytes);

// The size each worker sends before its tokens carries, in its top byte, the control wishes the
// worker received since the last step (bit 0: drain, bit 1: shutdown).
constexpr int kWishShift = 56;
constexpr uint64_t kResultSizeMask = (uint64_t{1} << kWishShift) - 1;
constexpr uint32_t kWishDrain = 1, kWishShutdown = 2;

struct StepToken {
  uint64_t seq_id = 0;
  int32_t token = 0;
  // When the sequence asked for them: log softmax of the raw logits (temperature 1, before
  // top-k / top-p) at `token`, and the most likely tokens, most likely first (ties: lower id).
  bool has_logprob = false;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;
};

std::string SerializeStepTokens(const std::vector<StepToken>& tokens);
absl::StatusOr<std::vector<StepToken>> ParseStepTokens(const std::string& bytes);

}  // namespace flotilla
