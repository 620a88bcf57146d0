#include "tokenizer/output_parser.h"

#include <algorithm>

#include "tokenizer/chat_tokens.h"

namespace flotilla {
namespace {

namespace tk = chat_tokens;

// What a tool-call block must start with: ">\n" then "<｜DSML｜invoke" or "</｜DSML｜tool_calls>".
constexpr std::string_view kBlockLead = ">\n<";

// The length of the longest suffix of `s` that is a proper prefix of `marker`.
size_t HeldSuffix(std::string_view s, std::string_view marker) {
  const size_t max_len = std::min(s.size(), marker.size() - 1);
  for (size_t len = max_len; len > 0; --len) {
    if (s.substr(s.size() - len) == marker.substr(0, len)) return len;
  }
  return 0;
}

// Whether `block` (text after "\n\n<｜DSML｜tool_calls") can still become a well-formed block.
bool BlockViable(std::string_view block) {
  const size_t n = std::min(block.size(), kBlockLead.size());
  if (block.substr(0, n) != kBlockLead.substr(0, n)) return false;
  if (block.size() <= kBlockLead.size()) return true;
  // After ">\n<": "｜DSML｜invoke" or "/｜DSML｜tool_calls>".
  const std::string_view rest = block.substr(kBlockLead.size());
  for (const std::string_view next : {tk::kInvokeStart.substr(1), tk::kToolCallsEnd.substr(1)}) {
    const size_t m = std::min(rest.size(), next.size());
    if (rest.substr(0, m) == next.substr(0, m)) return true;
  }
  return false;
}

}  // namespace

OutputParser::OutputParser(ThinkingMode mode, bool parse_tool_calls)
    : state_(mode == ThinkingMode::kThinking ? State::kReasoning : State::kContent),
      parse_tool_calls_(parse_tool_calls) {}

void OutputParser::StartInToolCalls(std::string_view forced) {
  state_ = State::kToolBlock;
  parse_tool_calls_ = true;
  block_ = std::string(forced);
  forced_ = std::string(forced);
}

OutputDelta OutputParser::Push(std::string_view text) {
  pending_.append(text);
  OutputDelta out;
  Run(/*final=*/false, &out);
  return out;
}

OutputDelta OutputParser::Finish() {
  OutputDelta out;
  Run(/*final=*/true, &out);
  return out;
}

void OutputParser::ReleaseBlockAsContent(OutputDelta* out) {
  // What the prompt forced was never output; the rest goes out as the model wrote it.
  if (forced_.empty()) {
    out->content.append(tk::kToolCallsStart);
    out->content.append(block_);
  } else {
    out->content.append(block_.substr(forced_.size()));
  }
  block_.clear();
  forced_.clear();
  state_ = State::kContent;
}

void OutputParser::Run(bool final, OutputDelta* out) {
  while (true) {
    switch (state_) {
      case State::kReasoning: {
        const size_t end = pending_.find(tk::kThinkEnd);
        const size_t calls =
            parse_tool_calls_ ? pending_.find(tk::kToolCallsStart) : std::string::npos;
        if (end != std::string::npos && end < calls) {
          out->reasoning_content.append(pending_, 0, end);
          pending_.erase(0, end + tk::kThinkEnd.size());
          state_ = State::kContent;
          continue;
        }
        if (calls != std::string::npos) {
          out->reasoning_content.append(pending_, 0, calls);
          pending_.erase(0, calls + tk::kToolCallsStart.size());
          state_ = State::kToolBlock;
          continue;
        }
        size_t held = 0;
        if (!final) {
          held = HeldSuffix(pending_, tk::kThinkEnd);
          if (parse_tool_calls_) held = std::max(held, HeldSuffix(pending_, tk::kToolCallsStart));
        }
        out->reasoning_content.append(pending_, 0, pending_.size() - held);
        pending_.erase(0, pending_.size() - held);
        return;
      }
      case State::kContent: {
        const size_t calls =
            parse_tool_calls_ ? pending_.find(tk::kToolCallsStart) : std::string::npos;
        if (calls != std::string::npos) {
          out->content.append(pending_, 0, calls);
          pending_.erase(0, calls + tk::kToolCallsStart.size());
          state_ = State::kToolBlock;
          continue;
        }
        const size_t held =
            final || !parse_tool_calls_ ? 0 : HeldSuffix(pending_, tk::kToolCallsStart);
        out->content.append(pending_, 0, pending_.size() - held);
        pending_.erase(0, pending_.size() - held);
        return;
      }
      case State::kToolBlock: {
        // The closing tag may straddle block_ and pending_: search from where it could start.
        const size_t from = block_.size() >= tk::kToolCallsEnd.size()
                                ? block_.size() - (tk::kToolCallsEnd.size() - 1)
                                : 0;
        block_.append(pending_);
        pending_.clear();
        const size_t end = block_.find(tk::kToolCallsEnd, from);
        if (end != std::string::npos) {
          pending_ = block_.substr(end + tk::kToolCallsEnd.size());
          block_.resize(end + tk::kToolCallsEnd.size());
          auto calls = ParseToolCallBlock(block_);
          if (calls.ok()) {
            num_tool_calls_ += static_cast<int>(calls->size());
            for (ParsedToolCall& c : *calls) out->tool_calls.push_back(std::move(c));
            block_.clear();
            forced_.clear();
            state_ = State::kContent;
          } else {
            ReleaseBlockAsContent(out);
          }
          continue;
        }
        if (!BlockViable(block_) || final) {
          // Not a tool call after all, or the output ended inside it: the text is content,
          // which may itself hold a later block.
          const std::string rest = std::move(pending_);
          std::string tail = block_.substr(forced_.size());
          block_.resize(forced_.size());
          // Re-scan what followed the marker: it may begin another block.
          if (forced_.empty()) {
            out->content.append(tk::kToolCallsStart);
          }
          block_.clear();
          forced_.clear();
          state_ = State::kContent;
          pending_ = tail + rest;
          continue;
        }
        return;
      }
    }
  }
}

}  // namespace flotilla
