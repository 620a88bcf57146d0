// Streaming split of a chat completion's decoded text (special tokens kept, EOS left out) into
// reasoning_content, content and tool calls, as the text arrives (chat-encoding spec §7, made
// tolerant for serving).
//
// - Thinking mode: text up to the first "</think>" is reasoning; the tag is dropped. A tool-call
//   block that starts before it also ends the reasoning. Without "</think>" (output cut short)
//   everything stays reasoning. Chat mode never yields reasoning: its prompt already closed it.
// - "\n\n<｜DSML｜tool_calls" starts a tool-call block, held back whole until its closing tag
//   "</｜DSML｜tool_calls>" and then parsed with the strict grammar. A block that parses becomes
//   tool calls; one that does not (malformed, or unfinished when the output ends) is released as
//   content unchanged, the leading "\n\n" included. Text after a block is content again.
// - Any suffix that could still grow into one of these markers is held back until the next piece
//   settles it, so markup never reaches content or reasoning, and text that turns out not to be
//   markup is released unchanged. The concatenation of all deltas is independent of how the text
//   was split into pieces.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/chat_encoding.h"

namespace flotilla {

struct OutputDelta {
  std::string reasoning_content;
  std::string content;
  std::vector<ParsedToolCall> tool_calls;  // complete calls, in output order
  bool empty() const { return reasoning_content.empty() && content.empty() && tool_calls.empty(); }
};

class OutputParser {
 public:
  // `parse_tool_calls` false: DSML is ordinary content (no tools were offered).
  OutputParser(ThinkingMode mode, bool parse_tool_calls);

  // The prompt itself ended with "\n\n<｜DSML｜tool_calls" + `forced` (a forced tool call): the
  // output continues inside that block. Call before the first Push.
  void StartInToolCalls(std::string_view forced);

  // Appends a piece of output (complete UTF-8); returns what it settles.
  OutputDelta Push(std::string_view text);
  // End of output: releases everything held back.
  OutputDelta Finish();

  int num_tool_calls() const { return num_tool_calls_; }
  // Still inside the reasoning (thinking mode, no "</think>" yet): the next token is reasoning.
  bool in_reasoning() const { return state_ == State::kReasoning; }

 private:
  enum class State { kReasoning, kContent, kToolBlock };
  void Run(bool final, OutputDelta* out);
  void ReleaseBlockAsContent(OutputDelta* out);

  State state_;
  bool parse_tool_calls_;
  std::string pending_;  // text not yet classified
  std::string block_;    // kToolBlock: the text after "\n\n<｜DSML｜tool_calls" so far
  std::string forced_;   // the part of block_ the prompt supplied (not released as content)
  int num_tool_calls_ = 0;
};

}  // namespace flotilla
