#include "tokenizer/chat_message.h"

#include "tokenizer/python_json.h"
#include "tokenizer/string_view_compat.h"
#include "tokenizer/utf8.h"

namespace flotilla {
namespace {

using ojson = nlohmann::ordered_json;

struct RoleName {
  const char* name;
  ChatRole role;
};
constexpr RoleName kRoles[] = {
    {"system", ChatRole::kSystem},       {"user", ChatRole::kUser},
    {"assistant", ChatRole::kAssistant}, {"tool", ChatRole::kTool},
    {"developer", ChatRole::kDeveloper}, {"latest_reminder", ChatRole::kLatestReminder},
};

struct TaskName {
  const char* name;
  ChatTask task;
};
constexpr TaskName kTasks[] = {
    {"action", ChatTask::kAction}, {"query", ChatTask::kQuery}, {"authority", ChatTask::kAuthority},
    {"domain", ChatTask::kDomain}, {"title", ChatTask::kTitle}, {"read_url", ChatTask::kReadUrl},
};

const char* TypeName(const ojson& v) {
  switch (v.type()) {
    case ojson::value_t::null:
      return "null";
    case ojson::value_t::boolean:
      return "a boolean";
    case ojson::value_t::string:
      return "a string";
    case ojson::value_t::array:
      return "an array";
    case ojson::value_t::object:
      return "an object";
    default:
      return "a number";
  }
}

// Builds "messages[3].tool_calls[0].function.name: ..." errors.
class Where {
 public:
  Where(std::string_view list, size_t idx) : prefix_(absl::StrCat(AbslView(list), "[", idx, "]")) {}
  absl::Status Error(std::string_view field, std::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix_, field.empty() ? "" : ".", AbslView(field), ": ", AbslView(what)));
  }
  absl::Status WrongType(std::string_view field, const char* expected, const ojson& got) const {
    return Error(field, absl::StrCat("expected ", expected, ", got ", TypeName(got)));
  }

 private:
  std::string prefix_;
};

const ojson& Field(const ojson& obj, const char* key) {
  static const ojson kNull;
  const auto it = obj.find(key);
  return it == obj.end() ? kNull : *it;
}

// A string field that may be null or absent (read as "").
absl::Status OptionalString(const ojson& msg, const char* key, const Where& where,
                            std::string* out) {
  const ojson& v = Field(msg, key);
  if (v.is_null()) {
    out->clear();
    return absl::OkStatus();
  }
  if (!v.is_string()) return where.WrongType(key, "a string", v);
  *out = v.get<std::string>();
  return absl::OkStatus();
}

// A tool message's list content (spec: chat-encoding): text parts joined by "\n\n", every other
// part as `[Unsupported <type>]`.
absl::Status RenderToolParts(const ojson& parts, const Where& where, std::string* out) {
  out->clear();
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string field = absl::StrCat("content[", i, "]");
    const ojson& part = parts[i];
    if (!part.is_object()) return where.WrongType(field, "an object", part);
    const ojson& type = Field(part, "type");
    if (!type.is_string()) return where.WrongType(field + ".type", "a string", type);
    if (i > 0) out->append("\n\n");
    if (type.get<std::string>() == "text") {
      std::string text;
      RETURN_IF_ERROR(OptionalString(part, "text", where, &text));
      out->append(text);
    } else {
      absl::StrAppend(out, "[Unsupported ", type.get<std::string>(), "]");
    }
  }
  return absl::OkStatus();
}

absl::Status ReadToolCalls(const ojson& msg, const Where& where, ChatMessage* m) {
  const ojson& calls = Field(msg, "tool_calls");
  if (calls.is_null()) return absl::OkStatus();
  if (!calls.is_array()) return where.WrongType("tool_calls", "an array", calls);
  for (size_t j = 0; j < calls.size(); ++j) {
    const std::string field = absl::StrCat("tool_calls[", j, "]");
    const ojson& tc = calls[j];
    if (!tc.is_object()) return where.WrongType(field, "an object", tc);
    const ojson& fn = Field(tc, "function");
    if (!fn.is_object()) return where.WrongType(field + ".function", "an object", fn);
    ChatToolCall call;
    const ojson& name = Field(fn, "name");
    if (!name.is_string()) return where.WrongType(field + ".function.name", "a string", name);
    call.name = name.get<std::string>();
    const ojson& args = Field(fn, "arguments");
    if (!args.is_string()) {
      return where.WrongType(field + ".function.arguments", "a JSON string", args);
    }
    call.arguments = args.get<std::string>();
    auto params = ToolArgumentsToDsml(call.arguments);
    if (!params.ok()) {
      return where.Error(field + ".function.arguments", StdView(params.status().message()));
    }
    call.params = *std::move(params);
    for (const ojson* id : {&Field(tc, "id"), &Field(fn, "id")}) {
      if (!id->is_null() && !id->is_string())
        return where.WrongType(field + ".id", "a string", *id);
      if (call.id.empty() && id->is_string()) call.id = id->get<std::string>();
    }
    m->tool_calls.push_back(std::move(call));
  }
  return absl::OkStatus();
}

absl::Status ReadTools(const ojson& msg, const Where& where, ChatMessage* m) {
  const ojson& tools = Field(msg, "tools");
  if (tools.is_null()) return absl::OkStatus();
  if (!tools.is_array()) return where.WrongType("tools", "an array", tools);
  if (tools.empty()) return absl::OkStatus();
  m->tools = ojson::array();
  for (size_t j = 0; j < tools.size(); ++j) {
    const ojson& tool = tools[j];
    const std::string field = absl::StrCat("tools[", j, "]");
    if (!tool.is_object()) return where.WrongType(field, "an object", tool);
    if (!tool.contains("function")) return where.Error(field, "missing \"function\"");
    m->tools.push_back(tool["function"]);
  }
  return absl::OkStatus();
}

absl::StatusOr<ChatMessage> ReadMessage(const ojson& msg, const Where& where) {
  if (!msg.is_object()) return where.WrongType("", "an object", msg);
  ChatMessage m;
  const ojson& role = Field(msg, "role");
  if (!role.is_string()) return where.WrongType("role", "a string", role);
  const std::string role_name = role.get<std::string>();
  bool known = false;
  for (const RoleName& r : kRoles) {
    if (role_name == r.name) {
      m.role = r.role;
      known = true;
    }
  }
  if (!known) {
    return where.Error("role", absl::StrCat("unknown role '", role_name,
                                            "' (expected system, user, assistant, tool, "
                                            "developer or latest_reminder)"));
  }

  const ojson& content = Field(msg, "content");
  switch (m.role) {
    case ChatRole::kDeveloper:
      if (!content.is_string()) return where.WrongType("content", "a string", content);
      m.content = content.get<std::string>();
      if (m.content.empty()) return where.Error("content", "a developer message needs content");
      break;
    case ChatRole::kLatestReminder:
      if (!content.is_string()) return where.WrongType("content", "a string", content);
      m.content = content.get<std::string>();
      break;
    case ChatRole::kTool:
      if (content.is_array()) {
        RETURN_IF_ERROR(RenderToolParts(content, where, &m.content));
      } else if (content.is_string()) {
        m.content = content.get<std::string>();
      } else if (msg.contains("content")) {
        return where.WrongType("content", "a string or a list of content parts", content);
      }
      RETURN_IF_ERROR(OptionalString(msg, "tool_call_id", where, &m.tool_call_id));
      break;
    default:
      RETURN_IF_ERROR(OptionalString(msg, "content", where, &m.content));
  }

  if (m.role == ChatRole::kAssistant) {
    RETURN_IF_ERROR(OptionalString(msg, "reasoning_content", where, &m.reasoning_content));
    RETURN_IF_ERROR(ReadToolCalls(msg, where, &m));
  }
  // "tools" and "response_format" are dropped with the rest of a user/tool message's fields.
  if (m.role != ChatRole::kUser && m.role != ChatRole::kTool) {
    RETURN_IF_ERROR(ReadTools(msg, where, &m));
    const ojson& rf = Field(msg, "response_format");
    if (PythonTruthy(rf)) m.response_format = rf;
  }

  const ojson& task = Field(msg, "task");
  if (!task.is_null()) {
    if (!task.is_string()) return where.WrongType("task", "a string", task);
    const std::string name = task.get<std::string>();
    for (const TaskName& t : kTasks) {
      if (name == t.name) m.task = t.task;
    }
    if (m.task == ChatTask::kNone) {
      return where.Error("task", absl::StrCat("unknown task '", name,
                                              "' (expected action, query, authority, domain, "
                                              "title or read_url)"));
    }
  }
  const ojson& wo_eos = Field(msg, "wo_eos");
  if (!wo_eos.is_null()) {
    if (!wo_eos.is_boolean()) return where.WrongType("wo_eos", "a boolean", wo_eos);
    m.wo_eos = wo_eos.get<bool>();
  }
  return m;
}

}  // namespace

const char* ChatRoleName(ChatRole role) {
  for (const RoleName& r : kRoles) {
    if (r.role == role) return r.name;
  }
  return "?";
}

absl::StatusOr<std::vector<DsmlParam>> ToolArgumentsToDsml(std::string_view arguments) {
  std::vector<DsmlParam> params;
  const std::optional<nlohmann::ordered_json> parsed = ParseJsonKeepingNumbers(arguments);
  if (!parsed.has_value()) {
    params.push_back({"arguments", true, std::string(arguments)});
    return params;
  }
  if (!parsed->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the arguments must be a JSON object, got ", TypeName(*parsed)));
  }
  for (const auto& [key, value] : parsed->items()) {
    DsmlParam p;
    p.name = key;
    p.is_string = value.is_string();
    p.value = p.is_string ? value.get<std::string>() : PythonJson(value);
    params.push_back(std::move(p));
  }
  return params;
}

absl::StatusOr<std::vector<ChatMessage>> ChatMessagesFromJson(const nlohmann::ordered_json& list,
                                                              std::string_view list_name) {
  if (!list.is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(AbslView(list_name), ": expected an array of messages, got ", TypeName(list)));
  }
  std::vector<ChatMessage> messages;
  messages.reserve(list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    ASSIGN_OR_RETURN(ChatMessage m, ReadMessage(list[i], Where(list_name, i)));
    messages.push_back(std::move(m));
  }
  return messages;
}

}  // namespace flotilla
