// Admission-time checks of a tokenized request against the model (design.md §3, §7): every
// problem is INVALID_ARGUMENT naming the request and the field.
#pragma once

#include "common/model_config.h"
#include "common/status.h"
#include "coordinator/request.h"

namespace flotilla {

// Refuses: an empty prompt, prompt ids outside [0, vocab_size), max_new_tokens < 1,
// temperature <= 0 unless greedy, top_p outside (0, 1], top_k < 0, empty or invalid-UTF-8 stop
// strings, prompt + max_new_tokens > max_position_embeddings.
absl::Status ValidateRequest(const GenerateRequest& request, const ModelConfig& config);

}  // namespace flotilla
