// The OpenAI-compatible HTTP API's request bodies -> the front door's plain structs, and the
// front door's outcomes -> OpenAI JSON (docs/http-api.md). No networking here: http_server.cc
// is the transport. Every refusal names the body field at fault.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "coordinator/front_door.h"
#include "nlohmann/json.hpp"
#include "tokenizer/output_parser.h"

namespace flotilla {

enum class ApiEndpoint { kChatCompletions, kCompletions };

// One chat or completions request, checked.
struct ApiRequest {
  ApiEndpoint endpoint = ApiEndpoint::kChatCompletions;
  GenerateHeader header;            // prompt kind, sampling (seed of choice 0), chat options
  std::string prompt_text;          // chat: the messages JSON; completions: the text prompt
  std::vector<int32_t> prompt_ids;  // completions with a token-id prompt
  int n = 1;                        // choices; choice i samples with seed + i
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool echo = false;           // completions: the prompt text leads each choice's text
  // Chat: how to read the output.
  ThinkingMode mode = ThinkingMode::kChat;
  bool parse_tool_calls = false;
  std::string forced_block;  // a forced tool call: the block text the prompt already holds
};

inline constexpr int kMaxChoices = 8;

// `body` is the parsed JSON body; `served_model` the one model name this server answers to.
// Errors: INVALID_ARGUMENT naming the field; NOT_FOUND for another model.
absl::StatusOr<ApiRequest> ParseChatRequest(const nlohmann::ordered_json& body,
                                            const std::string& served_model);
absl::StatusOr<ApiRequest> ParseCompletionRequest(const nlohmann::ordered_json& body,
                                                  const std::string& served_model);

// The HTTP status an error status maps to (400, 401, 404, 413, 429, 503, 500).
int HttpStatusFor(const absl::Status& status);
// {"error": {"message", "type", "param", "code"}}.
nlohmann::ordered_json ErrorBody(const absl::Status& status);

// "stop", "length" or "tool_calls".
const char* ApiFinishReason(FinishReason reason, bool made_tool_calls);

// {"index", "id", "type": "function", "function": {"name", "arguments"}}; the id is stable:
// "call_<request id>_<index>".
nlohmann::ordered_json ToolCallJson(const ParsedToolCall& call, uint64_t request_id, int index);

}  // namespace flotilla
