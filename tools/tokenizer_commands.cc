// Offline tokenizer and chat-format tools: tokenize, detokenize, encode-chat, parse-completion.
// The tokenizer is read from a checkpoint directory (tokenizer.json, tokenizer_config.json and
// config.json's vocab_size), as the server reads it.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tokenizer/chat_encoding.h"
#include "tokenizer/python_json.h"
#include "tokenizer/tokenizer.h"
#include "tools/command.h"
#include "common/flags.h"

namespace flotilla::cli {
namespace {

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  return std::move(ss).str();
}

void Print(std::string_view s) { std::fwrite(s.data(), 1, s.size(), stdout); }

// The text of --text or --text-file (exactly one).
absl::StatusOr<std::string> TextArg(const Flags& f) {
  if (f.Has("--text") == f.Has("--text-file")) {
    return absl::InvalidArgumentError("give exactly one of --text TEXT or --text-file FILE");
  }
  if (f.Has("--text")) return f.Get("--text");
  return ReadTextFile(f.Get("--text-file"));
}

absl::Status Tokenize(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(const Flags f, Flags::Parse(args, {"--model", "--text", "--text-file"}, {}));
  ASSIGN_OR_RETURN(const std::string dir, f.Required("--model"));
  ASSIGN_OR_RETURN(const std::string text, TextArg(f));
  ASSIGN_OR_RETURN(const auto tok, Tokenizer::FromModelDir(dir));
  ASSIGN_OR_RETURN(const std::vector<int32_t> ids, tok->Encode(text));
  Print(absl::StrCat("[", absl::StrJoin(ids, ", "), "]\n"));
  return absl::OkStatus();
}

absl::Status Detokenize(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(const Flags f, Flags::Parse(args, {"--model", "--ids"}, {"--skip-special"}));
  ASSIGN_OR_RETURN(const std::string dir, f.Required("--model"));
  ASSIGN_OR_RETURN(const std::string id_list, f.Required("--ids"));
  std::vector<int32_t> ids;
  if (!id_list.empty()) {
    ASSIGN_OR_RETURN(ids, ParseIdList("--ids", id_list));
  }
  ASSIGN_OR_RETURN(const auto tok, Tokenizer::FromModelDir(dir));
  ASSIGN_OR_RETURN(const std::string text, tok->Decode(ids, f.Has("--skip-special")));
  Print(text);
  return absl::OkStatus();
}

absl::Status EncodeChatCommand(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(const Flags f, Flags::Parse(args, {"--messages", "--reasoning-effort"},
                                               {"--thinking", "--keep-thinking", "--no-bos"}));
  ASSIGN_OR_RETURN(const std::string path, f.Required("--messages"));
  ChatEncodeOptions options;
  options.thinking_mode = f.Has("--thinking") ? ThinkingMode::kThinking : ThinkingMode::kChat;
  options.drop_thinking = !f.Has("--keep-thinking");
  options.add_bos = !f.Has("--no-bos");
  if (f.Has("--reasoning-effort")) {
    const std::string effort = f.Get("--reasoning-effort");
    if (effort == "high") {
      options.reasoning_effort = ReasoningEffort::kHigh;
    } else if (effort == "max") {
      options.reasoning_effort = ReasoningEffort::kMax;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--reasoning-effort: '", effort, "' (expected high or max)"));
    }
  }
  ASSIGN_OR_RETURN(const std::string text, ReadTextFile(path));
  std::optional<nlohmann::ordered_json> doc = ParseJsonKeepingNumbers(text);
  if (!doc.has_value()) return absl::InvalidArgumentError(absl::StrCat(path, " is not valid JSON"));
  // A list of messages, or {"messages": [...], "tools": [...], "context": [...]} where the
  // top-level tools are attached to the first message (the official fixtures' convention).
  nlohmann::ordered_json messages = *doc;
  nlohmann::ordered_json context;
  if (doc->is_object()) {
    if (!doc->contains("messages")) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": an object needs \"messages\""));
    }
    messages = (*doc)["messages"];
    if (doc->contains("context")) context = (*doc)["context"];
    if (doc->contains("tools") && !(*doc)["tools"].is_null()) {
      if (!messages.is_array() || messages.empty() || !messages[0].is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": top-level \"tools\" need a first message to attach to"));
      }
      messages[0]["tools"] = (*doc)["tools"];
    }
  }
  ASSIGN_OR_RETURN(const std::string prompt, EncodeChatJson(messages, context, options));
  Print(prompt);
  return absl::OkStatus();
}

absl::Status ParseCompletionCommand(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(const Flags f, Flags::Parse(args, {"--text", "--text-file"}, {"--thinking"}));
  ASSIGN_OR_RETURN(const std::string text, TextArg(f));
  ASSIGN_OR_RETURN(
      const ParsedCompletion message,
      ParseCompletion(text, f.Has("--thinking") ? ThinkingMode::kThinking : ThinkingMode::kChat));
  Print(ParsedCompletionToJson(message).dump(2) + "\n");
  return absl::OkStatus();
}

int TokenizeMain(const std::vector<std::string>& args) {
  const absl::Status s = Tokenize(args);
  return s.ok() ? 0 : Fail("tokenize", s);
}
int DetokenizeMain(const std::vector<std::string>& args) {
  const absl::Status s = Detokenize(args);
  return s.ok() ? 0 : Fail("detokenize", s);
}
int EncodeChatMain(const std::vector<std::string>& args) {
  const absl::Status s = EncodeChatCommand(args);
  return s.ok() ? 0 : Fail("encode-chat", s);
}
int ParseCompletionMain(const std::vector<std::string>& args) {
  const absl::Status s = ParseCompletionCommand(args);
  return s.ok() ? 0 : Fail("parse-completion", s);
}

}  // namespace

FLOTILLA_COMMAND("tokenize", "text -> token ids (JSON array; no BOS added)",
                 "usage: flotilla tokenize --model DIR (--text TEXT | --text-file FILE)\n"
                 "  Prints the ids as a JSON array. The tokenizer comes from DIR (tokenizer.json,\n"
                 "  tokenizer_config.json, config.json's vocab_size), as the server reads it.\n",
                 TokenizeMain);
FLOTILLA_COMMAND("detokenize", "token ids -> text",
                 "usage: flotilla detokenize --model DIR --ids 1,2,3 [--skip-special]\n"
                 "  Prints the text of the ids; --skip-special leaves out special tokens.\n",
                 DetokenizeMain);
FLOTILLA_COMMAND("encode-chat", "messages JSON -> DeepSeek-V4 prompt",
                 "usage: flotilla encode-chat --messages FILE [--thinking]\n"
                 "                            [--reasoning-effort high|max] [--keep-thinking]\n"
                 "                            [--no-bos]\n"
                 "  FILE holds a list of OpenAI-style messages, or {\"messages\": [...],\n"
                 "  \"tools\": [...]}. Prints the rendered prompt (docs/tokenizer.md).\n",
                 EncodeChatMain);
FLOTILLA_COMMAND("parse-completion", "completion text -> message JSON",
                 "usage: flotilla parse-completion (--text TEXT | --text-file FILE) [--thinking]\n"
                 "  Parses a completion (special tokens kept, through EOS) back into an assistant\n"
                 "  message and prints it as JSON.\n",
                 ParseCompletionMain);

}  // namespace flotilla::cli
