// Messages -> prompt string. The steps follow the chat-encoding spec §3-§5: fold tool messages
// into user turns, order tool results by call order, prune old reasoning, render each message
// as body + transition.
#include "tokenizer/chat_encoding.h"

#include <algorithm>

#include "absl/container/flat_hash_map.h"
#include "tokenizer/chat_tokens.h"
#include "tokenizer/python_json.h"
#include "tokenizer/string_view_compat.h"

namespace flotilla {
namespace {

namespace tk = chat_tokens;

// A block of a folded user turn: user text, or a tool result.
struct Block {
  bool is_tool = false;
  std::string_view text;  // user text or the tool result (points into a ChatMessage)
  std::string_view tool_call_id;
};

// A message after folding: user turns own their blocks; other roles point at their source.
struct Turn {
  ChatRole role;
  const ChatMessage* msg;  // the source (for a user turn: the message that opened it, or null)
  std::vector<Block> blocks;
  ChatTask task = ChatTask::kNone;
  bool strip_reasoning = false;  // pruned history: reasoning_content removed
};

const char* TaskToken(ChatTask task) {
  switch (task) {
    case ChatTask::kAction:
      return "<｜action｜>";
    case ChatTask::kQuery:
      return "<｜query｜>";
    case ChatTask::kAuthority:
      return "<｜authority｜>";
    case ChatTask::kDomain:
      return "<｜domain｜>";
    case ChatTask::kTitle:
      return "<｜title｜>";
    case ChatTask::kReadUrl:
      return "<｜read_url｜>";
    case ChatTask::kNone:
      break;
  }
  return "";
}

// §3.1: runs of user/tool messages become one user turn. A user message is not appended to a
// user turn that carries a task (a tool result is).
std::vector<Turn> FoldToolMessages(const std::vector<ChatMessage>& messages) {
  std::vector<Turn> turns;
  for (const ChatMessage& m : messages) {
    const bool prev_is_user = !turns.empty() && turns.back().role == ChatRole::kUser;
    if (m.role == ChatRole::kTool) {
      const Block block{true, m.content, m.tool_call_id};
      if (prev_is_user) {
        turns.back().blocks.push_back(block);
      } else {
        turns.push_back({ChatRole::kUser, nullptr, {block}});
      }
    } else if (m.role == ChatRole::kUser) {
      const Block block{false, m.content, {}};
      if (prev_is_user && turns.back().task == ChatTask::kNone) {
        turns.back().blocks.push_back(block);
      } else {
        turns.push_back({ChatRole::kUser, &m, {block}, m.task});
      }
    } else {
      turns.push_back({m.role, &m, {}, m.task});
    }
  }
  return turns;
}

// §3.2: tool results of a user turn follow the call order of the latest assistant with calls.
void SortToolResults(std::vector<Turn>* turns) {
  absl::flat_hash_map<std::string_view, int> order;  // call id -> position
  for (Turn& t : *turns) {
    if (t.role == ChatRole::kAssistant && !t.msg->tool_calls.empty()) {
      order.clear();
      for (size_t i = 0; i < t.msg->tool_calls.size(); ++i) {
        const std::string& id = t.msg->tool_calls[i].id;
        if (!id.empty()) order[id] = static_cast<int>(i);
      }
    } else if (t.role == ChatRole::kUser && !order.empty()) {
      std::vector<Block> tools;
      for (const Block& b : t.blocks) {
        if (b.is_tool) tools.push_back(b);
      }
      if (tools.size() < 2) continue;
      auto position = [&](const Block& b) {
        const auto it = order.find(b.tool_call_id);
        return it == order.end() ? 0 : it->second;
      };
      std::stable_sort(tools.begin(), tools.end(),
                       [&](const Block& a, const Block& b) { return position(a) < position(b); });
      size_t next = 0;
      for (Block& b : t.blocks) {
        if (b.is_tool) b = tools[next++];
      }
    }
  }
}

int LastUserIndex(const std::vector<Turn>& turns) {
  for (int i = static_cast<int>(turns.size()) - 1; i >= 0; --i) {
    if (turns[i].role == ChatRole::kUser || turns[i].role == ChatRole::kDeveloper) return i;
  }
  return -1;
}

// §3.5: before the last user/developer turn, assistants lose their reasoning and developer
// turns are removed.
std::vector<Turn> PruneHistory(const std::vector<Turn>& turns) {
  const int last_user = LastUserIndex(turns);
  std::vector<Turn> out;
  for (int i = 0; i < static_cast<int>(turns.size()); ++i) {
    const Turn& t = turns[i];
    if (t.role == ChatRole::kUser || t.role == ChatRole::kSystem ||
        t.role == ChatRole::kLatestReminder || i >= last_user) {
      out.push_back(t);
    } else if (t.role == ChatRole::kAssistant) {
      out.push_back(t);
      out.back().strip_reasoning = true;
    }
  }
  return out;
}

void AppendTools(const nlohmann::ordered_json& tools, std::string* out) {
  out->append("\n\n").append(tk::kToolsPreamble);
  for (size_t i = 0; i < tools.size(); ++i) {
    if (i > 0) out->push_back('\n');
    AppendPythonJson(tools[i], out);
  }
  out->append(tk::kToolsEpilogue);
}

void AppendToolsAndFormat(const ChatMessage& m, std::string* out) {
  if (!m.tools.is_null()) AppendTools(m.tools, out);
  if (!m.response_format.is_null()) {
    out->append("\n\n").append(tk::kResponseFormatHeader);
    AppendPythonJson(m.response_format, out);
  }
}

void AppendToolCalls(const std::vector<ChatToolCall>& calls, std::string* out) {
  out->append("\n\n<").append(tk::kDsml).append("tool_calls>\n");
  for (size_t i = 0; i < calls.size(); ++i) {
    if (i > 0) out->push_back('\n');
    absl::StrAppend(out, "<", AbslView(tk::kDsml), "invoke name=\"", calls[i].name, "\">\n");
    for (size_t j = 0; j < calls[i].params.size(); ++j) {
      const DsmlParam& p = calls[i].params[j];
      if (j > 0) out->push_back('\n');
      absl::StrAppend(out, "<", AbslView(tk::kDsml), "parameter name=\"", p.name, "\" string=\"",
                      p.is_string ? "true" : "false", "\">", p.value, "</", AbslView(tk::kDsml),
                      "parameter>");
    }
    absl::StrAppend(out, "\n</", AbslView(tk::kDsml), "invoke>");
  }
  out->append("\n</").append(tk::kDsml).append("tool_calls>");
}

struct RenderState {
  const std::vector<Turn>& turns;
  const ChatEncodeOptions& options;
  bool drop_thinking;  // effective
  int last_user;
};

// §4 and §5: body of turn `idx` and the transition that follows it.
void RenderTurn(const RenderState& st, int idx, std::string* out) {
  const Turn& t = st.turns[idx];
  const bool thinking = st.options.thinking_mode == ThinkingMode::kThinking;
  if (idx == 0 && thinking && st.options.reasoning_effort == ReasoningEffort::kMax) {
    out->append(tk::kReasoningEffortMax);
  }
  switch (t.role) {
    case ChatRole::kSystem:
      out->append(t.msg->content);
      AppendToolsAndFormat(*t.msg, out);
      break;
    case ChatRole::kDeveloper:
      out->append(tk::kUser).append(t.msg->content);
      AppendToolsAndFormat(*t.msg, out);
      break;
    case ChatRole::kUser:
      out->append(tk::kUser);
      for (size_t i = 0; i < t.blocks.size(); ++i) {
        if (i > 0) out->append("\n\n");
        if (t.blocks[i].is_tool) {
          absl::StrAppend(out, "<tool_result>", AbslView(t.blocks[i].text), "</tool_result>");
        } else {
          out->append(t.blocks[i].text);
        }
      }
      break;
    case ChatRole::kLatestReminder:
      out->append(tk::kLatestReminder).append(t.msg->content);
      break;
    case ChatRole::kAssistant: {
      const bool prev_has_task = idx > 0 && st.turns[idx - 1].task != ChatTask::kNone;
      if (thinking && !prev_has_task && (!st.drop_thinking || idx > st.last_user)) {
        if (!t.strip_reasoning) out->append(t.msg->reasoning_content);
        out->append(tk::kThinkEnd);
      }
      out->append(t.msg->content);
      if (!t.msg->tool_calls.empty()) AppendToolCalls(t.msg->tool_calls, out);
      if (!t.msg->wo_eos) out->append(tk::kEos);
      break;
    }
    case ChatRole::kTool:  // folded into user turns before rendering
      break;
  }

  const size_t next = static_cast<size_t>(idx) + 1;
  if (next < st.turns.size() && st.turns[next].role != ChatRole::kAssistant &&
      st.turns[next].role != ChatRole::kLatestReminder) {
    return;
  }
  if (t.task != ChatTask::kNone) {
    if (t.task == ChatTask::kAction) {
      out->append(tk::kAssistant).append(thinking ? tk::kThinkStart : tk::kThinkEnd);
    }
    out->append(TaskToken(t.task));
  } else if (t.role == ChatRole::kUser || t.role == ChatRole::kDeveloper) {
    out->append(tk::kAssistant);
    const bool open_thinking = thinking && (!st.drop_thinking || idx >= st.last_user);
    out->append(open_thinking ? tk::kThinkStart : tk::kThinkEnd);
  }
}

// Every tool message must answer a call of the latest assistant message before it.
absl::Status CheckToolMessages(const std::vector<ChatMessage>& context,
                               const std::vector<ChatMessage>& messages) {
  const ChatMessage* last_assistant = nullptr;
  std::string last_assistant_name;
  for (const auto* list : {&context, &messages}) {
    const char* list_name = list == &context ? "context" : "messages";
    for (size_t i = 0; i < list->size(); ++i) {
      const ChatMessage& m = (*list)[i];
      if (m.role == ChatRole::kAssistant) {
        last_assistant = &m;
        last_assistant_name = absl::StrCat(list_name, "[", i, "]");
        continue;
      }
      if (m.role != ChatRole::kTool) continue;
      if (last_assistant == nullptr || last_assistant->tool_calls.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(list_name, "[", i,
                         "]: a tool message must follow an assistant message with tool_calls"));
      }
      if (m.tool_call_id.empty()) continue;  // matched by position
      const bool found =
          std::any_of(last_assistant->tool_calls.begin(), last_assistant->tool_calls.end(),
                      [&](const ChatToolCall& c) { return c.id == m.tool_call_id; });
      if (!found) {
        return absl::InvalidArgumentError(
            absl::StrCat(list_name, "[", i, "].tool_call_id: '", m.tool_call_id,
                         "' matches no tool call of the preceding assistant message (",
                         last_assistant_name, ")"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> EncodeChat(const std::vector<ChatMessage>& messages,
                                       const std::vector<ChatMessage>& context,
                                       const ChatEncodeOptions& options) {
  RETURN_IF_ERROR(CheckToolMessages(context, messages));
  std::vector<Turn> context_turns = FoldToolMessages(context);
  std::vector<Turn> full = context_turns;
  {
    std::vector<Turn> message_turns = FoldToolMessages(messages);
    full.insert(full.end(), message_turns.begin(), message_turns.end());
  }
  SortToolResults(&full);
  const size_t num_message_turns = full.size() - context_turns.size();

  std::string prompt;
  if (options.add_bos && context.empty()) prompt.append(chat_tokens::kBos);

  bool drop_thinking = options.drop_thinking;
  for (const Turn& t : full) {
    if (t.msg != nullptr && t.role != ChatRole::kUser && !t.msg->tools.is_null()) {
      drop_thinking = false;
    }
  }

  size_t first_rendered = full.size() - num_message_turns;
  if (options.thinking_mode == ThinkingMode::kThinking && drop_thinking) {
    full = PruneHistory(full);
    // With a context, the turns to render are those that pruning the context alone would not
    // account for (the reference's rule, kept as is).
    const size_t pruned_context = PruneHistory(context_turns).size();
    first_rendered = pruned_context < full.size() ? pruned_context : full.size();
  }
  const RenderState st{full, options, drop_thinking, LastUserIndex(full)};
  for (size_t i = first_rendered; i < full.size(); ++i) {
    RenderTurn(st, static_cast<int>(i), &prompt);
  }
  return prompt;
}

absl::StatusOr<std::string> EncodeChatJson(const nlohmann::ordered_json& messages,
                                           const nlohmann::ordered_json& context,
                                           const ChatEncodeOptions& options) {
  ASSIGN_OR_RETURN(const std::vector<ChatMessage> msgs, ChatMessagesFromJson(messages, "messages"));
  std::vector<ChatMessage> ctx;
  if (!context.is_null()) {
    ASSIGN_OR_RETURN(ctx, ChatMessagesFromJson(context, "context"));
  }
  return EncodeChat(msgs, ctx, options);
}

}  // namespace flotilla
