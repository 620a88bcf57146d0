// The DeepSeek-V4 chat prompt format (no Jinja template exists for V4): messages -> prompt
// string, and a completion -> assistant message. Byte-exact with the official encoder
// `encoding/encoding_dsv4.py` (see the chat-encoding spec); the prompt is then tokenized with
// the ordinary tokenizer, which adds no BOS.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "tokenizer/chat_message.h"
#include "nlohmann/json.hpp"

namespace flotilla {

enum class ThinkingMode { kChat, kThinking };
// kHigh renders exactly like kNone; kMax adds a fixed paragraph in thinking mode.
enum class ReasoningEffort { kNone, kHigh, kMax };

struct ChatEncodeOptions {
  ThinkingMode thinking_mode = ThinkingMode::kChat;
  ReasoningEffort reasoning_effort = ReasoningEffort::kNone;
  bool drop_thinking = true;  // drop earlier turns' reasoning (thinking mode, no tools)
  bool add_bos = true;        // only when there is no context
};

// `context`: messages already in the KV cache; they steer the rendering but are not emitted.
// Cross-message checks (every tool message answers a call of the preceding assistant) are
// made here and name the list and index.
absl::StatusOr<std::string> EncodeChat(const std::vector<ChatMessage>& messages,
                                       const std::vector<ChatMessage>& context,
                                       const ChatEncodeOptions& options);

// JSON convenience: `messages` and `context` (null or an array) in OpenAI format.
absl::StatusOr<std::string> EncodeChatJson(const nlohmann::ordered_json& messages,
                                           const nlohmann::ordered_json& context,
                                           const ChatEncodeOptions& options);

struct ParsedToolCall {
  std::string name;
  std::string arguments;  // JSON text rebuilt from the DSML parameters
};

struct ParsedCompletion {
  std::string content;
  std::string reasoning_content;  // "" in chat mode
  std::vector<ParsedToolCall> tool_calls;
};

// Parses decoded completion text (special tokens kept, through EOS) produced after a prompt
// in `mode`. Malformed text is an InvalidArgument error with the reference's message.
absl::StatusOr<ParsedCompletion> ParseCompletion(std::string_view text, ThinkingMode mode);

// One tool-call block with the strict grammar of spec §7.3: `block` is the text that follows
// "\n\n<｜DSML｜tool_calls" through the first "</｜DSML｜tool_calls>", which must end it.
absl::StatusOr<std::vector<ParsedToolCall>> ParseToolCallBlock(std::string_view block);

// {"role": "assistant", "content", "reasoning_content", "tool_calls": [{"type": "function",
// "function": {"name", "arguments"}}]}; no call ids (the server mints them).
nlohmann::ordered_json ParsedCompletionToJson(const ParsedCompletion& message);

}  // namespace flotilla
