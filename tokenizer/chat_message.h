// OpenAI-style chat messages as the DeepSeek-V4 prompt format sees them, checked once when they
// are read from JSON. Errors name the list ("messages" or "context"), the index and the field.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "nlohmann/json.hpp"

namespace flotilla {

enum class ChatRole { kSystem, kUser, kAssistant, kTool, kDeveloper, kLatestReminder };
// Quick-instruction tasks; each has its own special token.
enum class ChatTask { kNone, kAction, kQuery, kAuthority, kDomain, kTitle, kReadUrl };

const char* ChatRoleName(ChatRole role);

// One top-level key of a tool call's JSON arguments, as rendered in a DSML parameter.
struct DsmlParam {
  std::string name;
  bool is_string = false;  // string="true": the value is the raw string
  std::string value;       // raw string, or Python json.dumps of the value
};

struct ChatToolCall {
  std::string id;  // "id", else "function.id", else empty
  std::string name;
  std::string arguments;          // the OpenAI JSON string, as given
  std::vector<DsmlParam> params;  // arguments parsed (or the single "arguments" fallback)
};

struct ChatMessage {
  ChatRole role = ChatRole::kUser;
  std::string content;  // null/absent read as "" where the format allows it
  // A tool message whose content is a list of parts: the rendered text ("\n\n"-joined text
  // parts, other parts as "[Unsupported TYPE]") is stored in `content`.
  std::string reasoning_content;
  std::vector<ChatToolCall> tool_calls;
  std::string tool_call_id;
  nlohmann::ordered_json tools;            // the "function" objects of a truthy "tools" list
  nlohmann::ordered_json response_format;  // null when absent or falsy
  ChatTask task = ChatTask::kNone;
  bool wo_eos = false;
};

// Reads and checks a JSON array of messages. `list_name` is used in error messages.
absl::StatusOr<std::vector<ChatMessage>> ChatMessagesFromJson(const nlohmann::ordered_json& list,
                                                              std::string_view list_name);

// The DSML parameters of an OpenAI `arguments` string: one per top-level key of the JSON
// object; text that is not JSON becomes one string parameter named "arguments"; JSON that is
// not an object is an error.
absl::StatusOr<std::vector<DsmlParam>> ToolArgumentsToDsml(std::string_view arguments);

}  // namespace flotilla
