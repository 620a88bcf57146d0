#include "tokenizer/pre_tokenizer.h"

#include <cstdint>

#include "tokenizer/utf8.h"

namespace flotilla {
namespace {

// The GPT-2 split used by ByteLevel(use_regex=true).
constexpr std::string_view kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

struct Span {
  uint32_t begin;
  uint32_t end;
  bool is_match;
};

// Per-thread scratch: one span list per stage depth, reused across calls. Sized before a
// split starts, so references into it stay valid during the recursion.
std::vector<std::vector<Span>>& Scratch() {
  thread_local std::vector<std::vector<Span>> scratch;
  return scratch;
}

bool BoolOr(const nlohmann::json& obj, const char* key, bool fallback) {
  const auto it = obj.find(key);
  return it != obj.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

absl::StatusOr<SplitBehavior> ParseBehavior(const nlohmann::json& node) {
  const auto it = node.find("behavior");
  const std::string b = it != node.end() && it->is_string() ? it->get<std::string>() : "Isolated";
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  return absl::InvalidArgumentError(
      absl::StrCat("pre_tokenizer: unknown Split behavior '", b, "'"));
}

// Applies a Split behaviour to the alternating gap/match spans (HF semantics).
void ApplyBehavior(SplitBehavior behavior, std::vector<Span>* spans) {
  std::vector<Span>& s = *spans;
  size_t out = 0;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      return;
    case SplitBehavior::kRemoved:
      for (const Span& sp : s) {
        if (!sp.is_match) s[out++] = sp;
      }
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Span& sp : s) {
        if (sp.is_match && !previous_match && out > 0) {
          s[out - 1].end = sp.end;
        } else {
          s[out++] = sp;
        }
        previous_match = sp.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      // Walk backwards, merging each match into the piece after it.
      std::vector<Span> rev;
      rev.reserve(s.size());
      bool previous_match = false;
      for (size_t i = s.size(); i-- > 0;) {
        const Span& sp = s[i];
        if (sp.is_match && !previous_match && !rev.empty()) {
          rev.back().begin = sp.begin;
        } else {
          rev.push_back(sp);
        }
        previous_match = sp.is_match;
      }
      s.assign(rev.rbegin(), rev.rend());
      return;
    }
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (size_t i = 0; i < s.size(); ++i) {
        const Span sp = s[i];
        if (i > 0 && sp.is_match == previous_match) {
          s[out - 1].end = sp.end;
        } else {
          s[out++] = sp;
        }
        previous_match = sp.is_match;
      }
      break;
    }
  }
  s.resize(out);
}

}  // namespace

absl::StatusOr<PreTokenizer> PreTokenizer::FromJson(const nlohmann::json& node) {
  PreTokenizer pre;
  bool saw_byte_level = false;
  RETURN_IF_ERROR(pre.AddJson(node, &saw_byte_level));
  if (!saw_byte_level) {
    return absl::UnimplementedError(
        "pre_tokenizer: only byte-level BPE is supported and no ByteLevel step was found");
  }
  return pre;
}

absl::Status PreTokenizer::AddJson(const nlohmann::json& node, bool* saw_byte_level) {
  if (node.is_null()) return absl::OkStatus();
  if (!node.is_object() || !node.contains("type") || !node["type"].is_string()) {
    return absl::InvalidArgumentError("pre_tokenizer: expected an object with a 'type'");
  }
  const std::string type = node["type"];
  if (type == "Sequence") {
    if (!node.contains("pretokenizers") || !node["pretokenizers"].is_array()) {
      return absl::InvalidArgumentError("pre_tokenizer: Sequence without 'pretokenizers'");
    }
    for (const auto& child : node["pretokenizers"]) RETURN_IF_ERROR(AddJson(child, saw_byte_level));
    return absl::OkStatus();
  }
  if (type == "Split") {
    SplitStage stage;
    const auto pit = node.find("pattern");
    const nlohmann::json pattern = pit == node.end() ? nlohmann::json() : *pit;
    if (pattern.contains("Regex") && pattern["Regex"].is_string()) {
      ASSIGN_OR_RETURN(stage.regex, Regex::Compile(pattern["Regex"].get<std::string>()));
    } else if (pattern.contains("String") && pattern["String"].is_string()) {
      ASSIGN_OR_RETURN(stage.regex,
                       Regex::Compile(pattern["String"].get<std::string>(), /*literal=*/true));
    } else {
      return absl::InvalidArgumentError("pre_tokenizer: Split needs a Regex or String pattern");
    }
    ASSIGN_OR_RETURN(stage.behavior, ParseBehavior(node));
    stage.invert = BoolOr(node, "invert", false);
    stages_.push_back(std::move(stage));
    return absl::OkStatus();
  }
  if (type == "ByteLevel") {
    if (BoolOr(node, "add_prefix_space", false)) {
      return absl::UnimplementedError("pre_tokenizer: ByteLevel with add_prefix_space=true");
    }
    *saw_byte_level = true;
    if (BoolOr(node, "use_regex", true)) {
      SplitStage stage;
      ASSIGN_OR_RETURN(stage.regex, Regex::Compile(kGpt2Pattern));
      stages_.push_back(std::move(stage));
    }
    return absl::OkStatus();
  }
  return absl::UnimplementedError(
      absl::StrCat("pre_tokenizer: type '", type, "' is not supported"));
}

absl::Status PreTokenizer::Split(std::string_view text,
                                 absl::FunctionRef<void(std::string_view)> emit) const {
  if (text.empty()) return absl::OkStatus();
  if (Scratch().size() < stages_.size()) Scratch().resize(stages_.size());
  return SplitStageRecursive(0, text, emit);
}

absl::Status PreTokenizer::SplitStageRecursive(
    size_t stage_idx, std::string_view piece,
    absl::FunctionRef<void(std::string_view)> emit) const {
  if (stage_idx == stages_.size()) {
    emit(piece);
    return absl::OkStatus();
  }
  const SplitStage& stage = stages_[stage_idx];
  std::vector<Span>& spans = Scratch()[stage_idx];
  spans.clear();
  size_t pos = 0, prev = 0;
  while (pos < piece.size()) {
    size_t mb = 0, me = 0;
    ASSIGN_OR_RETURN(const bool found, stage.regex->Find(piece, pos, &mb, &me));
    if (!found) break;
    if (me == mb) {  // empty match: contributes nothing, step one character
      pos = mb + utf8::SequenceLength(static_cast<uint8_t>(piece[mb]));
      continue;
    }
    if (mb > prev) spans.push_back({uint32_t(prev), uint32_t(mb), stage.invert});
    spans.push_back({uint32_t(mb), uint32_t(me), !stage.invert});
    prev = pos = me;
  }
  if (prev < piece.size()) spans.push_back({uint32_t(prev), uint32_t(piece.size()), stage.invert});
  ApplyBehavior(stage.behavior, &spans);
  // Recursing reuses deeper scratch lists only, so `spans` stays valid while iterating.
  for (size_t i = 0; i < spans.size(); ++i) {
    const Span sp = spans[i];
    if (sp.end > sp.begin) {
      RETURN_IF_ERROR(
          SplitStageRecursive(stage_idx + 1, piece.substr(sp.begin, sp.end - sp.begin), emit));
    }
  }
  return absl::OkStatus();
}

}  // namespace flotilla
