// A generation request and the events streamed back, as plain structs: the gRPC adapter converts
// protos to these at the edge (STYLE rule 5); the scheduler and the engine loop know nothing of
// gRPC.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace flotilla {

struct SamplingOptions {
  bool greedy = false;          // argmax (ties: lowest id)
  float temperature = 1.0f;     // > 0 unless greedy
  float top_p = 1.0f;           // (0, 1]
  int64_t top_k = 0;            // 0 = all
  uint64_t seed = 0;            // same seed, same tokens
  int64_t max_new_tokens = 256; // >= 1
  std::vector<std::string> stop;  // stop strings (matched on the detokenized text)
  bool ignore_eos = false;
  bool skip_special_tokens = false;  // special tokens add no text (their ids are still sent)
  bool logprobs = false;     // Token events carry the log probability of each token
  int32_t top_logprobs = 0;  // with logprobs: and of the this-many most likely tokens (0..20)
  // Routed experts per token for this request, 1..the checkpoint's num_experts_per_tok; 0: the
  // model's. Requests with different values share batches.
  int32_t experts_per_token = 0;
};

// Log softmax of the raw logits (temperature 1, before top-k / top-p) for one generated token.
struct TokenLogprob {
  int32_t token_id = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // most likely first
};

// A request once its prompt is complete and tokenized.
struct GenerateRequest {
  uint64_t id = 0;             // assigned by the front door, unique per server
  std::vector<int32_t> prompt; // token ids (< vocab), at least one
  SamplingOptions sampling;
  int32_t priority = 0;        // higher first; FCFS within a priority
};

enum class FinishReason { kStop, kLength, kStopString, kCancelled, kError };
const char* FinishReasonName(FinishReason r);  // "stop", "length", "stop_string", ...

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  double time_to_first_token_s = 0;
  double time_per_output_token_s = 0;  // mean over tokens after the first
};

// Events of one request, in order: Admitted, Progress*, Token*, Finished (or an error status).
struct RequestEvent {
  enum class Kind { kAdmitted, kProgress, kToken, kFinished, kError };
  Kind kind = Kind::kAdmitted;
  // kAdmitted
  uint64_t kv_bytes_reserved = 0;
  int64_t queue_position = 0;  // 0 = running now
  // kProgress
  int64_t prefill_done = 0, prefill_total = 0;
  // kToken
  std::vector<int32_t> token_ids;
  std::string text;  // detokenized delta (complete UTF-8 only)
  std::vector<TokenLogprob> logprobs;  // one per id, when the request asked for them
  // kFinished
  FinishReason reason = FinishReason::kStop;
  Usage usage;
  // kError
  absl::Status error;
};

// Where a request's events go. Called from the engine thread; must not block for long.
using EventSink = std::function<void(const RequestEvent&)>;

}  // namespace flotilla
