// Completion text -> assistant message (chat-encoding spec §7). The grammar and the error
// messages follow the official parser, which rejects malformed output rather than repairing it.
#include <initializer_list>

#include "tokenizer/chat_encoding.h"
#include "tokenizer/chat_tokens.h"
#include "tokenizer/python_json.h"
#include "tokenizer/string_view_compat.h"
#include "tokenizer/utf8.h"

namespace flotilla {
namespace {

namespace tk = chat_tokens;

absl::Status Malformed(std::string_view what) { return absl::InvalidArgumentError(AbslView(what)); }

// Finds the earliest of `stops` at or after `*pos`; returns the text before it and moves
// `*pos` past it. With no stop found, returns the rest and `*stop` is empty.
std::string_view ReadUntil(std::string_view text, size_t* pos,
                           std::initializer_list<std::string_view> stops, std::string_view* stop) {
  size_t best = std::string_view::npos;
  *stop = {};
  for (const std::string_view s : stops) {
    const size_t p = text.find(s, *pos);
    if (p != std::string_view::npos && p < best) {
      best = p;
      *stop = s;
    }
  }
  const size_t start = *pos;
  if (best == std::string_view::npos) {
    *pos = text.size();
    return text.substr(start);
  }
  *pos = best + stop->size();
  return text.substr(start, best - start);
}

// Python's str.isspace() for one code point.
bool IsPythonSpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// Skips leading whitespace (valid UTF-8 input).
std::string_view SkipSpace(std::string_view s) {
  while (!s.empty()) {
    const auto lead = static_cast<uint8_t>(s[0]);
    const size_t len = std::min(utf8::SequenceLength(lead), s.size());
    uint32_t cp = lead;
    if (len == 2) cp = ((lead & 0x1Fu) << 6) | (s[1] & 0x3Fu);
    if (len == 3) cp = ((lead & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
    if (len == 4 || !IsPythonSpace(cp)) break;
    s.remove_prefix(len);
  }
  return s;
}

bool ConsumePrefix(std::string_view* s, std::string_view prefix) {
  if (s->substr(0, prefix.size()) != prefix) return false;
  s->remove_prefix(prefix.size());
  return true;
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// `\s*name="(.*?)">\n$` (Python `$` also matches before one final "\n").
bool ParseInvokeHead(std::string_view head, std::string* name) {
  std::string_view s = SkipSpace(head);
  if (!ConsumePrefix(&s, "name=\"")) return false;
  for (const std::string_view end : {std::string_view("\">\n\n"), std::string_view("\">\n")}) {
    if (EndsWith(s, end)) {
      *name = std::string(s.substr(0, s.size() - end.size()));
      return true;
    }
  }
  return false;
}

// ` name="(.*?)" string="(true|false)">(.*?)<$`.
bool ParseParameter(std::string_view body, std::string* key, bool* is_string, std::string* value) {
  std::string_view s = body;
  if (!ConsumePrefix(&s, " name=\"")) return false;
  const size_t t = s.find("\" string=\"true\">");
  const size_t f = s.find("\" string=\"false\">");
  if (t == std::string_view::npos && f == std::string_view::npos) return false;
  *is_string = t != std::string_view::npos && (f == std::string_view::npos || t < f);
  const size_t at = *is_string ? t : f;
  *key = std::string(s.substr(0, at));
  s.remove_prefix(at + (*is_string ? 16 : 17));
  for (const std::string_view end : {std::string_view("<"), std::string_view("<\n")}) {
    if (EndsWith(s, end)) {
      *value = std::string(s.substr(0, s.size() - end.size()));
      return true;
    }
  }
  return false;
}

absl::Status ParseToolCalls(std::string_view text, size_t* pos,
                            std::vector<ParsedToolCall>* calls) {
  std::string_view stop;
  while (*pos < text.size()) {
    const std::string_view gap = ReadUntil(text, pos, {tk::kInvokeStart, tk::kToolCallsEnd}, &stop);
    if (gap != ">\n") {
      return Malformed(
          absl::StrCat("Tool call format error: expected '>\\n' but got '", AbslView(gap), "'"));
    }
    if (stop == tk::kToolCallsEnd) break;
    if (stop.empty()) return Malformed("Missing special token in tool calls");

    const std::string_view head =
        ReadUntil(text, pos, {tk::kParameterStart, tk::kInvokeEnd}, &stop);
    ParsedToolCall call;
    if (!ParseInvokeHead(head, &call.name)) {
      return Malformed(absl::StrCat("Tool name format error: '", AbslView(head), "'"));
    }
    std::vector<std::string> keys;
    std::string args = "{";
    while (stop == tk::kParameterStart) {
      const std::string_view body = ReadUntil(text, pos, {tk::kParameterEnd}, &stop);
      std::string key, value;
      bool is_string = false;
      if (!ParseParameter(body, &key, &is_string, &value)) {
        return Malformed(absl::StrCat("Parameter format error: '", AbslView(body), "'"));
      }
      for (const std::string& k : keys) {
        if (k == key) return Malformed(absl::StrCat("Duplicate parameter name: '", key, "'"));
      }
      if (!keys.empty()) args.append(", ");
      AppendPythonJsonString(key, &args);
      args.append(": ");
      if (is_string) {
        AppendPythonJsonString(value, &args);
      } else {
        args.append(value);  // written by the model; kept as is, not validated
      }
      keys.push_back(std::move(key));
      const std::string_view after =
          ReadUntil(text, pos, {tk::kParameterStart, tk::kInvokeEnd}, &stop);
      if (after != ">\n") {
        return Malformed(absl::StrCat("Parameter format error: expected '>\\n' but got '",
                                      AbslView(after), "'"));
      }
    }
    args.push_back('}');
    call.arguments = std::move(args);
    calls->push_back(std::move(call));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<ParsedToolCall>> ParseToolCallBlock(std::string_view block) {
  if (!EndsWith(block, tk::kToolCallsEnd)) {
    return Malformed("Missing special token in tool calls");
  }
  const size_t bad = utf8::FindInvalid(block);
  if (bad != block.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tool calls are not valid UTF-8 (byte offset ", bad, ")"));
  }
  std::vector<ParsedToolCall> calls;
  size_t pos = 0;
  RETURN_IF_ERROR(ParseToolCalls(block, &pos, &calls));
  if (pos != block.size()) return Malformed("Unexpected content after tool calls");
  return calls;
}

absl::StatusOr<ParsedCompletion> ParseCompletion(std::string_view text, ThinkingMode mode) {
  const size_t bad = utf8::FindInvalid(text);
  if (bad != text.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("completion is not valid UTF-8 (byte offset ", bad, ")"));
  }
  ParsedCompletion out;
  size_t pos = 0;
  std::string_view stop;
  if (mode == ThinkingMode::kThinking) {
    out.reasoning_content =
        std::string(ReadUntil(text, &pos, {tk::kThinkEnd, tk::kToolCallsStart}, &stop));
    if (stop != tk::kThinkEnd) return Malformed("Invalid thinking format: missing </think>");
  }
  out.content = std::string(ReadUntil(text, &pos, {tk::kEos, tk::kToolCallsStart}, &stop));
  if (stop == tk::kToolCallsStart) {
    RETURN_IF_ERROR(ParseToolCalls(text, &pos, &out.tool_calls));
    const std::string_view trailing = ReadUntil(text, &pos, {tk::kEos}, &stop);
    if (!trailing.empty()) return Malformed("Unexpected content after tool calls");
  } else if (stop != tk::kEos) {
    return Malformed("Invalid format: missing EOS token");
  }
  // After EOS nothing may follow; the tool-call path may also end without EOS.
  if (pos != text.size() || !(stop.empty() || stop == tk::kEos)) {
    return Malformed("Unexpected content at end");
  }
  for (const std::string_view special :
       {tk::kBos, tk::kEos, tk::kThinkStart, tk::kThinkEnd, tk::kDsml}) {
    if (out.content.find(special) != std::string::npos ||
        out.reasoning_content.find(special) != std::string::npos) {
      return Malformed(
          absl::StrCat("Unexpected special token '", AbslView(special), "' in content"));
    }
  }
  return out;
}

nlohmann::ordered_json ParsedCompletionToJson(const ParsedCompletion& message) {
  nlohmann::ordered_json calls = nlohmann::ordered_json::array();
  for (const ParsedToolCall& c : message.tool_calls) {
    calls.push_back(
        {{"type", "function"}, {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
  }
  return {{"role", "assistant"},
          {"content", message.content},
          {"reasoning_content", message.reasoning_content},
          {"tool_calls", std::move(calls)}};
}

}  // namespace flotilla
