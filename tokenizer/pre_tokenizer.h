// The pre-tokenizer of a byte-level BPE tokenizer.json: a sequence of regex splits, each
// applied to every piece the previous one produced (HF `tokenizers` semantics).
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "common/status.h"
#include "tokenizer/regex.h"
#include "nlohmann/json.hpp"

namespace flotilla {

enum class SplitBehavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct SplitStage {
  std::unique_ptr<Regex> regex;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
};

class PreTokenizer {
 public:
  // `node` is the "pre_tokenizer" object of tokenizer.json. Supported: Split (Regex or String
  // pattern, every behaviour, invert) and ByteLevel (add_prefix_space false, with or without
  // its GPT-2 regex), alone or in a Sequence. The ByteLevel step must be present.
  static absl::StatusOr<PreTokenizer> FromJson(const nlohmann::json& node);

  // Calls `emit` for every non-empty piece of `text` (valid UTF-8), in text order. Stops at
  // and returns the first error.
  absl::Status Split(std::string_view text,
                     absl::FunctionRef<void(std::string_view piece)> emit) const;

  size_t num_stages() const { return stages_.size(); }

 private:
  absl::Status AddJson(const nlohmann::json& node, bool* saw_byte_level);
  absl::Status SplitStageRecursive(size_t stage_idx, std::string_view piece,
                                   absl::FunctionRef<void(std::string_view)> emit) const;

  std::vector<SplitStage> stages_;
};

}  // namespace flotilla
