#include "coordinator/openai_api.h"

#include <cmath>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/step_plan.h"
#include "tokenizer/chat_tokens.h"

namespace flotilla {
namespace {

using ojson = nlohmann::ordered_json;

absl::Status Invalid(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

const ojson* Find(const ojson& body, const char* key) {
  const auto it = body.find(key);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string Describe(const ojson& v) {
  std::string s = v.dump();
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return absl::StrCat(s, " (", v.type_name(), ")");
}

absl::StatusOr<double> Number(const ojson& body, const char* key, double fallback) {
  const ojson* v = Find(body, key);
  if (v == nullptr) return fallback;
  if (!v->is_number()) return Invalid(key, absl::StrCat("expected a number, got ", Describe(*v)));
  return v->get<double>();
}

absl::StatusOr<bool> Bool(const ojson& body, const char* key, bool fallback) {
  const ojson* v = Find(body, key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean())
    return Invalid(key, absl::StrCat("expected true or false, got ", Describe(*v)));
  return v->get<bool>();
}

// An integer field; `*present` says whether it was given.
absl::StatusOr<int64_t> Integer(const ojson& body, const char* key, int64_t fallback,
                                bool* present = nullptr) {
  const ojson* v = Find(body, key);
  if (present != nullptr) *present = v != nullptr;
  if (v == nullptr) return fallback;
  if (v->is_number_integer()) return v->get<int64_t>();
  if (v->is_number_float()) {
    const double d = v->get<double>();
    if (std::floor(d) == d && std::fabs(d) < 9e15) return static_cast<int64_t>(d);
  }
  return Invalid(key, absl::StrCat("expected an integer, got ", Describe(*v)));
}

absl::Status CheckModel(const ojson& body, const std::string& served) {
  const ojson* v = Find(body, "model");
  if (v == nullptr) return Invalid("model", "required (this server serves '" + served + "')");
  if (!v->is_string())
    return Invalid("model", absl::StrCat("expected a string, got ", Describe(*v)));
  if (v->get<std::string>() != served) {
    return absl::NotFoundError(absl::StrCat("model: '", v->get<std::string>(),
                                            "' does not exist here (this server serves '", served,
                                            "')"));
  }
  return absl::OkStatus();
}

// The fields chat and completions share: sampling, n, stream, stop, max tokens, logprobs.
absl::Status ParseCommon(const ojson& body, ApiRequest* r) {
  SamplingOptions& s = r->header.sampling;
  ASSIGN_OR_RETURN(const double temperature, Number(body, "temperature", 1.0));
  if (!(temperature >= 0 && temperature <= 2)) {
    return Invalid("temperature", absl::StrCat(temperature, " is outside [0, 2]"));
  }
  s.greedy = temperature == 0;
  s.temperature = s.greedy ? 1.0f : static_cast<float>(temperature);
  ASSIGN_OR_RETURN(const double top_p, Number(body, "top_p", 1.0));
  if (!(top_p > 0 && top_p <= 1))
    return Invalid("top_p", absl::StrCat(top_p, " is outside (0, 1]"));
  s.top_p = static_cast<float>(top_p);
  ASSIGN_OR_RETURN(s.top_k, Integer(body, "top_k", 0));
  if (s.top_k == -1) s.top_k = 0;  // -1 means all tokens in several servers' dialects
  if (s.top_k < 0) return Invalid("top_k", absl::StrCat(s.top_k, " (must be >= 0; 0 = all)"));
  bool has_seed = false;
  ASSIGN_OR_RETURN(const int64_t seed, Integer(body, "seed", 0, &has_seed));
  if (has_seed) {
    s.seed = static_cast<uint64_t>(seed);
  } else {
    // No seed: each request samples differently, as OpenAI clients expect.
    std::random_device rd;
    s.seed = (uint64_t{rd()} << 32) ^ rd();
  }
  ASSIGN_OR_RETURN(s.ignore_eos, Bool(body, "ignore_eos", false));
  ASSIGN_OR_RETURN(const int64_t experts, Integer(body, "experts_per_token", 0));
  if (experts < 0 || experts > 255) {
    return Invalid("experts_per_token", absl::StrCat(experts,
                                                     " (must be 1..the checkpoint's "
                                                     "experts per token)"));
  }
  s.experts_per_token = static_cast<int32_t>(experts);
  // Sampling controls this server does not apply are refused, not ignored.
  for (const char* key : {"frequency_penalty", "presence_penalty"}) {
    ASSIGN_OR_RETURN(const double v, Number(body, key, 0.0));
    if (v != 0) return Invalid(key, absl::StrCat(v, ": penalties are not supported (only 0)"));
  }
  if (const ojson* bias = Find(body, "logit_bias"); bias != nullptr && !bias->empty()) {
    return Invalid("logit_bias", "not supported (only an empty object)");
  }

  bool has_max = false, has_max_completion = false;
  ASSIGN_OR_RETURN(const int64_t max_tokens, Integer(body, "max_tokens", 0, &has_max));
  ASSIGN_OR_RETURN(const int64_t max_completion,
                   Integer(body, "max_completion_tokens", 0, &has_max_completion));
  if (has_max_completion) {
    if (max_completion < 1) {
      return Invalid("max_completion_tokens", absl::StrCat(max_completion, " (must be >= 1)"));
    }
    r->header.max_new_tokens = max_completion;
  } else if (has_max) {
    if (max_tokens < 1) return Invalid("max_tokens", absl::StrCat(max_tokens, " (must be >= 1)"));
    r->header.max_new_tokens = max_tokens;
  }

  ASSIGN_OR_RETURN(const int64_t n, Integer(body, "n", 1));
  if (n < 1 || n > kMaxChoices) {
    return Invalid("n", absl::StrCat(n, " is outside [1, ", kMaxChoices, "]"));
  }
  r->n = static_cast<int>(n);

  ASSIGN_OR_RETURN(r->stream, Bool(body, "stream", false));
  if (const ojson* so = Find(body, "stream_options")) {
    if (!r->stream) return Invalid("stream_options", "only allowed with \"stream\": true");
    if (!so->is_object()) {
      return Invalid("stream_options", absl::StrCat("expected an object, got ", Describe(*so)));
    }
    ASSIGN_OR_RETURN(r->include_usage, Bool(*so, "include_usage", false));
  }

  if (const ojson* stop = Find(body, "stop")) {
    if (stop->is_string()) {
      s.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (size_t i = 0; i < stop->size(); ++i) {
        if (!(*stop)[i].is_string()) {
          return Invalid(absl::StrCat("stop[", i, "]"),
                         absl::StrCat("expected a string, got ", Describe((*stop)[i])));
        }
        s.stop.push_back((*stop)[i].get<std::string>());
      }
    } else {
      return Invalid(
          "stop", absl::StrCat("expected a string or an array of strings, got ", Describe(*stop)));
    }
  }
  return absl::OkStatus();
}

// Chat: `logprobs` true and `top_logprobs` 0..20. Completions: `logprobs` an integer 0..20 (the
// number of alternatives), not with `echo` (prompt tokens get no log probabilities).
absl::Status ParseLogprobs(const ojson& body, ApiRequest* r) {
  SamplingOptions& s = r->header.sampling;
  const ojson* lp = Find(body, "logprobs");
  if (r->endpoint == ApiEndpoint::kChatCompletions) {
    ASSIGN_OR_RETURN(s.logprobs, Bool(body, "logprobs", false));
    bool has_top = false;
    ASSIGN_OR_RETURN(const int64_t top, Integer(body, "top_logprobs", 0, &has_top));
    if (top < 0 || top > kMaxTopLogprobs) {
      return Invalid("top_logprobs", absl::StrCat(top, " is outside [0, ", kMaxTopLogprobs, "]"));
    }
    if (has_top && !s.logprobs) return Invalid("top_logprobs", "needs \"logprobs\": true");
    s.top_logprobs = static_cast<int32_t>(top);
    return absl::OkStatus();
  }
  if (lp == nullptr) return absl::OkStatus();
  ASSIGN_OR_RETURN(const int64_t top, Integer(body, "logprobs", 0));
  if (top < 0 || top > kMaxTopLogprobs) {
    return Invalid("logprobs", absl::StrCat(top, " is outside [0, ", kMaxTopLogprobs, "]"));
  }
  if (r->echo) {
    return Invalid("logprobs",
                   "not with \"echo\": this server gives prompt tokens no log "
                   "probabilities");
  }
  s.logprobs = true;
  s.top_logprobs = static_cast<int32_t>(top);
  return absl::OkStatus();
}

// OpenAI content: a string, or a list of {"type": "text", "text"} parts (joined by "\n").
absl::Status NormalizeContent(ojson* message, size_t index) {
  auto it = message->find("content");
  if (it == message->end() || !it->is_array()) return absl::OkStatus();
  if (message->value("role", "") == "tool") return absl::OkStatus();  // the encoder reads parts
  std::string text;
  for (size_t p = 0; p < it->size(); ++p) {
    const ojson& part = (*it)[p];
    const std::string field = absl::StrCat("messages[", index, "].content[", p, "]");
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
        !part["text"].is_string()) {
      return Invalid(field, absl::StrCat("expected a {\"type\": \"text\", \"text\": ...} part "
                                         "(this model reads text only), got ",
                                         Describe(part)));
    }
    if (p > 0) text += "\n";
    text += part["text"].get<std::string>();
  }
  *it = text;
  return absl::OkStatus();
}

absl::Status ParseThinking(const ojson& body, ApiRequest* r) {
  ChatPromptOptions& chat = r->header.chat;
  bool thinking = false, explicit_thinking = false;
  if (const ojson* kw = Find(body, "chat_template_kwargs")) {
    if (!kw->is_object()) {
      return Invalid("chat_template_kwargs",
                     absl::StrCat("expected an object, got ", Describe(*kw)));
    }
    if (const ojson* t = Find(*kw, "thinking")) {
      if (!t->is_boolean()) {
        return Invalid("chat_template_kwargs.thinking",
                       absl::StrCat("expected true or false, got ", Describe(*t)));
      }
      thinking = t->get<bool>();
      explicit_thinking = true;
    }
  }
  if (const ojson* e = Find(body, "reasoning_effort")) {
    if (!e->is_string()) {
      return Invalid("reasoning_effort", absl::StrCat("expected a string, got ", Describe(*e)));
    }
    const std::string effort = e->get<std::string>();
    if (effort == "none") {
      if (!explicit_thinking) thinking = false;
    } else if (effort == "minimal" || effort == "low" || effort == "medium" || effort == "high") {
      chat.reasoning_effort = ReasoningEffort::kHigh;
      if (!explicit_thinking) thinking = true;
    } else if (effort == "max" || effort == "xhigh") {
      chat.reasoning_effort = ReasoningEffort::kMax;
      if (!explicit_thinking) thinking = true;
    } else {
      return Invalid(
          "reasoning_effort",
          absl::StrCat("'", effort, "' (expected none, minimal, low, medium, high, xhigh or max)"));
    }
  }
  chat.thinking = thinking;
  r->mode = thinking ? ThinkingMode::kThinking : ThinkingMode::kChat;
  return absl::OkStatus();
}

absl::Status ParseTools(const ojson& body, ApiRequest* r) {
  const ojson* tools = Find(body, "tools");
  const ojson* choice = Find(body, "tool_choice");
  std::vector<std::string> names;
  if (tools != nullptr) {
    if (!tools->is_array())
      return Invalid("tools", absl::StrCat("expected an array, got ", Describe(*tools)));
    for (size_t i = 0; i < tools->size(); ++i) {
      const ojson& t = (*tools)[i];
      const std::string field = absl::StrCat("tools[", i, "]");
      if (!t.is_object() || t.value("type", "") != "function" || !t.contains("function") ||
          !t["function"].is_object()) {
        return Invalid(field, "expected {\"type\": \"function\", \"function\": {...}}");
      }
      const auto name = t["function"].find("name");
      if (name == t["function"].end() || !name->is_string() || name->get<std::string>().empty()) {
        return Invalid(field + ".function.name", "expected a non-empty string");
      }
      names.push_back(name->get<std::string>());
    }
  }
  std::string mode = names.empty() ? "none" : "auto";
  std::string forced_name;
  if (choice != nullptr) {
    if (choice->is_string()) {
      mode = choice->get<std::string>();
      if (mode != "none" && mode != "auto" && mode != "required") {
        return Invalid("tool_choice",
                       absl::StrCat("'", mode,
                                    "' (expected none, auto, required or "
                                    "{\"type\": \"function\", \"function\": {\"name\"}})"));
      }
    } else if (choice->is_object() && choice->value("type", "") == "function" &&
               choice->contains("function") && (*choice)["function"].is_object() &&
               (*choice)["function"].value("name", "") != "") {
      mode = "named";
      forced_name = (*choice)["function"]["name"].get<std::string>();
    } else {
      return Invalid("tool_choice", absl::StrCat("expected none, auto, required or {\"type\": "
                                                 "\"function\", \"function\": {\"name\"}}, got ",
                                                 Describe(*choice)));
    }
    if (mode != "none" && names.empty()) {
      return Invalid("tool_choice", absl::StrCat("'", mode == "named" ? forced_name : mode,
                                                 "' needs a non-empty \"tools\" list"));
    }
    if (mode == "named" && std::find(names.begin(), names.end(), forced_name) == names.end()) {
      return Invalid("tool_choice.function.name",
                     absl::StrCat("'", forced_name, "' is not one of the tools"));
    }
  }
  if (mode == "none") return absl::OkStatus();  // tools are not shown to the model
  r->header.chat.tools_json = tools->dump();
  r->parse_tool_calls = true;
  if (mode == "required" || mode == "named") {
    // The prompt opens the block itself, so the model can only continue it. Thinking mode closes
    // the reasoning first: a forced call has none.
    namespace tk = chat_tokens;
    std::string block = ">\n";
    if (mode == "named") {
      absl::StrAppend(&block, std::string(tk::kInvokeStart), " name=\"", forced_name, "\">\n");
    }
    r->forced_block = block;
    r->header.chat.assistant_prefix =
        absl::StrCat(r->mode == ThinkingMode::kThinking ? std::string(tk::kThinkEnd) : "",
                     std::string(tk::kToolCallsStart), block);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ApiRequest> ParseChatRequest(const ojson& body, const std::string& served_model) {
  if (!body.is_object()) return Invalid("body", "expected a JSON object");
  ApiRequest r;
  r.endpoint = ApiEndpoint::kChatCompletions;
  r.header.prompt_kind = PromptKind::kChat;
  RETURN_IF_ERROR(CheckModel(body, served_model));
  RETURN_IF_ERROR(ParseCommon(body, &r));
  RETURN_IF_ERROR(ParseLogprobs(body, &r));
  const ojson* messages = Find(body, "messages");
  if (messages == nullptr) return Invalid("messages", "required");
  if (!messages->is_array() || messages->empty()) {
    return Invalid("messages", absl::StrCat("expected a non-empty array of messages, got ",
                                            Describe(*messages)));
  }
  ojson copy = *messages;
  for (size_t i = 0; i < copy.size(); ++i) {
    if (!copy[i].is_object()) {
      return Invalid(absl::StrCat("messages[", i, "]"),
                     absl::StrCat("expected an object, got ", Describe(copy[i])));
    }
    RETURN_IF_ERROR(NormalizeContent(&copy[i], i));
  }
  r.prompt_text = copy.dump();
  RETURN_IF_ERROR(ParseThinking(body, &r));
  RETURN_IF_ERROR(ParseTools(body, &r));
  if (const ojson* echo = Find(body, "echo"); echo != nullptr) {
    return Invalid("echo", "a completions field; chat completions do not echo");
  }
  return r;
}

absl::StatusOr<ApiRequest> ParseCompletionRequest(const ojson& body,
                                                  const std::string& served_model) {
  if (!body.is_object()) return Invalid("body", "expected a JSON object");
  ApiRequest r;
  r.endpoint = ApiEndpoint::kCompletions;
  RETURN_IF_ERROR(CheckModel(body, served_model));
  RETURN_IF_ERROR(ParseCommon(body, &r));
  ASSIGN_OR_RETURN(r.echo, Bool(body, "echo", false));
  RETURN_IF_ERROR(ParseLogprobs(body, &r));
  if (!r.header.max_new_tokens.has_value()) r.header.max_new_tokens = 16;  // OpenAI's default
  const ojson* prompt = Find(body, "prompt");
  if (prompt == nullptr) return Invalid("prompt", "required");
  const ojson* single = prompt;
  if (prompt->is_array() && !prompt->empty() &&
      (prompt->front().is_string() || prompt->front().is_array())) {
    if (prompt->size() != 1) {
      return Invalid("prompt", absl::StrCat(prompt->size(),
                                            " prompts: this server takes one prompt per request"));
    }
    single = &prompt->front();
  }
  if (single->is_string()) {
    r.header.prompt_kind = PromptKind::kText;
    r.prompt_text = single->get<std::string>();
    if (r.prompt_text.empty()) return Invalid("prompt", "empty");
  } else if (single->is_array()) {
    r.header.prompt_kind = PromptKind::kTokenIds;
    if (single->empty()) return Invalid("prompt", "an empty list of token ids");
    for (size_t i = 0; i < single->size(); ++i) {
      const ojson& id = (*single)[i];
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
        return Invalid(absl::StrCat("prompt[", i, "]"),
                       absl::StrCat("expected a non-negative token id, got ", Describe(id)));
      }
      r.prompt_ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
    }
  } else {
    return Invalid("prompt", absl::StrCat("expected a string or an array of token ids, got ",
                                          Describe(*prompt)));
  }
  if (Find(body, "suffix") != nullptr) {
    return Invalid("suffix", "not supported: this model has no fill-in-the-middle format");
  }
  return r;
}

int HttpStatusFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kResourceExhausted:
      // The scheduler's refusal of a request larger than a DP group's whole KV pool
      // (scheduler.cc) can never succeed: the client's error, not a reason to retry.
      // Nor can a prompt larger than the whole prompt memory budget (prompt_memory.cc).
      return absl::StrContains(status.message(), "whole pool") ||
                     absl::StrContains(status.message(), "budget (--prompt-memory); send")
                 ? 400
                 : 429;
    case absl::StatusCode::kUnavailable:
      return 503;
    default:
      return 500;
  }
}

ojson ErrorBody(const absl::Status& status) {
  const int http = HttpStatusFor(status);
  const std::string message(status.message());
  std::string type = "invalid_request_error", code;
  ojson param = nullptr;
  switch (http) {
    case 401:
      type = "authentication_error";
      code = "invalid_api_key";
      break;
    case 404:
      type = "not_found_error";
      code = absl::StartsWith(message, "model:") ? "model_not_found" : "not_found";
      break;
    case 429:
      type = "rate_limit_error";
      code = "rate_limit_exceeded";
      break;
    case 503:
      type = "service_unavailable_error";
      code = "service_unavailable";
      break;
    case 500:
      type = "server_error";
      code = "internal_error";
      break;
    default:
      if (absl::StrContains(message, "maximum context") ||
          absl::StrContains(message, "prompt too large") ||
          absl::StrContains(message, "whole pool")) {
        code = "context_length_exceeded";
      }
      break;
  }
  // The field the message names: its text up to the first ": ".
  if (http == 400) {
    const size_t colon = message.find(": ");
    if (colon != std::string::npos && message.find(' ') >= colon) param = message.substr(0, colon);
  }
  return {{"error",
           {{"message", message},
            {"type", type},
            {"param", param},
            {"code", code.empty() ? ojson(nullptr) : ojson(code)}}}};
}

const char* ApiFinishReason(FinishReason reason, bool made_tool_calls) {
  if (reason == FinishReason::kLength) return "length";
  return made_tool_calls ? "tool_calls" : "stop";
}

ojson ToolCallJson(const ParsedToolCall& call, uint64_t request_id, int index) {
  return {{"index", index},
          {"id", absl::StrCat("call_", request_id, "_", index)},
          {"type", "function"},
          {"function", {{"name", call.name}, {"arguments", call.arguments}}}};
}

}  // namespace flotilla
