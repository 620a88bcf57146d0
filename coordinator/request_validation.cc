#include "coordinator/request_validation.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "tokenizer/utf8.h"

namespace flotilla {

absl::Status ValidateRequest(const GenerateRequest& r, const ModelConfig& config) {
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("request ", r.id, ": ", what));
  };
  const SamplingOptions& s = r.sampling;
  if (r.prompt.empty()) return bad("prompt is empty");
  for (size_t i = 0; i < r.prompt.size(); ++i) {
    if (r.prompt[i] < 0 || r.prompt[i] >= config.vocab_size) {
      return bad(absl::StrCat("prompt[", i, "] = ", r.prompt[i], " is outside [0, vocab_size ",
                              config.vocab_size, ")"));
    }
  }
  if (s.max_new_tokens < 1) {
    return bad(absl::StrCat("sampling.max_new_tokens = ", s.max_new_tokens, " (must be >= 1)"));
  }
  if (!s.greedy && !(s.temperature > 0)) {
    return bad(absl::StrCat("sampling.temperature = ", s.temperature,
                            " (must be > 0 unless sampling.greedy; the front door makes 0 greedy)"));
  }
  if (!(s.top_p > 0 && s.top_p <= 1)) {
    return bad(absl::StrCat("sampling.top_p = ", s.top_p, " (must be in (0, 1])"));
  }
  if (s.top_k < 0) return bad(absl::StrCat("sampling.top_k = ", s.top_k, " (must be >= 0)"));
  for (size_t i = 0; i < s.stop.size(); ++i) {
    if (s.stop[i].empty()) return bad(absl::StrCat("sampling.stop[", i, "] is empty"));
    if (!utf8::IsValid(s.stop[i])) {
      return bad(absl::StrCat("sampling.stop[", i, "] is not valid UTF-8"));
    }
  }
  const int64_t prompt = int64_t(r.prompt.size());
  if (s.max_new_tokens > config.max_position_embeddings - prompt) {
    return bad(absl::StrCat("prompt (", prompt, " tokens) + sampling.max_new_tokens (",
                            s.max_new_tokens, ") exceeds max_position_embeddings ",
                            config.max_position_embeddings));
  }
  return absl::OkStatus();
}

}  // namespace flotilla
