#include "coordinator/front_door.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <unordered_set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/step_plan.h"
#include "tokenizer/chat_message.h"
#include "tokenizer/python_json.h"
#include "tokenizer/utf8.h"

namespace flotilla {

namespace {

absl::Status Invalid(absl::string_view message) { return absl::InvalidArgumentError(message); }

// Any error of a prompt the client sent is the client's: INVALID_ARGUMENT, message kept.
absl::Status AsInvalid(const absl::Status& status, absl::string_view prefix) {
  if (status.ok()) return status;
  return absl::InvalidArgumentError(prefix.empty() ? std::string(status.message())
                                                   : absl::StrCat(prefix, ": ", status.message()));
}

absl::StatusOr<nlohmann::ordered_json> ParseJsonText(const std::string& text,
                                                     absl::string_view what) {
  const size_t bad = utf8::FindInvalid(text);
  if (bad != text.size()) {
    return Invalid(absl::StrCat(what, " is not valid UTF-8 (byte offset ", bad, ")"));
  }
  // Python's reading of JSON (repeated keys, big integers), which the prompt format embeds.
  std::optional<nlohmann::ordered_json> value = ParseJsonKeepingNumbers(text);
  if (value.has_value()) return std::move(value).value();
  // Refused: nlohmann's exception text says where the JSON breaks. It is caught right here.
  try {
    const nlohmann::ordered_json probe = nlohmann::ordered_json::parse(text);
    (void)probe;
  } catch (const nlohmann::json::exception& e) {
    return Invalid(absl::StrCat(what, " is not valid JSON: ", e.what()));
  }
  return Invalid(absl::StrCat(what, " is not valid JSON (a number is out of range)"));
}

// A tokenizer error about `what` ("prompt text", "rendered chat prompt"): INVALID_ARGUMENT.
absl::Status TextError(const absl::Status& status, absl::string_view what) {
  if (status.ok() || status.code() == absl::StatusCode::kCancelled) return status;
  absl::string_view m = status.message();
  if (absl::StartsWith(m, "text ")) return Invalid(absl::StrCat(what, m.substr(4)));
  return Invalid(absl::StrCat(what, ": ", m));
}

}  // namespace

const char* PromptKindName(PromptKind kind) {
  switch (kind) {
    case PromptKind::kText:
      return "text";
    case PromptKind::kChat:
      return "chat";
    case PromptKind::kTokenIds:
      return "token ids";
  }
  return "?";
}

struct FrontDoor::ActiveSet {
  std::mutex mu;
  std::unordered_set<uint64_t> ids;

  void Insert(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu);
    ids.insert(id);
  }
  bool Erase(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu);
    return ids.erase(id) > 0;
  }
};

// ---- PromptAssembler ----

std::string PromptAssembler::Where() const {
  return absl::StrCat("stream message ", num_messages_);
}

absl::Status PromptAssembler::AddHeader(GenerateHeader header) {
  ++num_messages_;
  if (has_header_) {
    return Invalid(absl::StrCat(Where(),
                                " is a second header: a Generate stream has exactly one "
                                "header, its first message; the rest are prompt chunks"));
  }
  RETURN_IF_ERROR(front_door_->CheckHeader(header));
  header_ = std::move(header);
  has_header_ = true;
  return absl::OkStatus();
}

absl::Status PromptAssembler::AddChunk(PromptChunk chunk) {
  ++num_messages_;
  if (!has_header_) {
    return Invalid(absl::StrCat("no header: ", Where(),
                                " is a prompt chunk, but the first message of a Generate stream "
                                "must be the header"));
  }
  if (complete_) {
    return Invalid(absl::StrCat(Where(),
                                ": the prompt was already complete (an earlier chunk "
                                "had `last` set)"));
  }
  ++num_chunks_;
  const FrontDoorOptions& opt = front_door_->options_;
  const PromptKind kind = header_.prompt_kind;
  switch (chunk.kind) {
    case PromptChunk::Kind::kNone:
      break;
    case PromptChunk::Kind::kText: {
      if (kind == PromptKind::kTokenIds) {
        return Invalid(absl::StrCat(Where(),
                                    ": a text chunk, but the header's prompt kind is "
                                    "token ids (send token_ids chunks)"));
      }
      if (chunk.text.size() > opt.max_chunk_bytes) {
        return Invalid(absl::StrCat(Where(), ": a text chunk of ", chunk.text.size(),
                                    " bytes is over the ", opt.max_chunk_bytes,
                                    "-byte chunk limit; split the prompt into smaller chunks"));
      }
      const int64_t limit = front_door_->MaxPromptBytes();
      if (bytes_received_ + static_cast<int64_t>(chunk.text.size()) > limit) {
        return Invalid(absl::StrCat(
            "prompt too large: ", kind == PromptKind::kChat ? "the messages JSON" : "the text",
            " exceeds ", limit, " bytes (", opt.max_prompt_bytes_per_token,
            " bytes per token of the model's ", front_door_->max_context(), "-token context) at ",
            Where()));
      }
      RETURN_IF_ERROR(AddText(std::move(chunk.text)));
      break;
    }
    case PromptChunk::Kind::kTokenIds: {
      if (kind != PromptKind::kTokenIds) {
        return Invalid(absl::StrCat(Where(),
                                    ": a token_ids chunk, but the header's prompt kind is ",
                                    PromptKindName(kind), " (send text chunks)"));
      }
      const size_t max_ids = opt.max_chunk_bytes / sizeof(int32_t);
      if (chunk.token_ids.size() > max_ids) {
        return Invalid(absl::StrCat(Where(), ": a token_ids chunk of ", chunk.token_ids.size(),
                                    " ids is over the limit of ", max_ids,
                                    " ids per chunk; split the prompt into smaller chunks"));
      }
      const int64_t total = static_cast<int64_t>(ids_.size() + chunk.token_ids.size());
      if (total > front_door_->max_context()) {
        return Invalid(absl::StrCat("prompt too large: more than ", front_door_->max_context(),
                                    " token ids (the model's context) by ", Where()));
      }
      RETURN_IF_ERROR(front_door_->CheckIds(chunk.token_ids, static_cast<int64_t>(ids_.size())));
      const int64_t held = static_cast<int64_t>(
          std::max(ids_.capacity(), ids_.size() + chunk.token_ids.size()) * sizeof(int32_t));
      RETURN_IF_ERROR(lease_.Resize(held, cancelled_, Where()));
      ids_.insert(ids_.end(), chunk.token_ids.begin(), chunk.token_ids.end());
      bytes_received_ += static_cast<int64_t>(chunk.token_ids.size() * sizeof(int32_t));
      lease_.SetUploadBytes(bytes_received_);
      break;
    }
  }
  if (chunk.last) {
    complete_ = true;
    ended_by_last_ = true;
    lease_.EndUpload();
  }
  return absl::OkStatus();
}

absl::Status PromptAssembler::EndOfStream() {
  if (!has_header_) {
    return Invalid(
        "no header: the stream ended before its first message, which must be the header");
  }
  complete_ = true;
  lease_.EndUpload();
  return absl::OkStatus();
}

int64_t PromptAssembler::MaxPromptTokens() const {
  const int64_t context = front_door_->max_context();
  return header_.max_new_tokens.has_value() ? context - *header_.max_new_tokens : context - 1;
}

absl::Status PromptAssembler::CheckTokenCount(int64_t num_tokens, const std::string& where) const {
  const int64_t max_tokens = MaxPromptTokens();
  if (num_tokens <= max_tokens) return absl::OkStatus();
  const int64_t context = front_door_->max_context();
  return Invalid(absl::StrCat(
      "prompt too large: more than ", max_tokens, " tokens by ", where, " (the model's maximum ",
      "context is ", context, " tokens",
      header_.max_new_tokens.has_value()
          ? absl::StrCat(", less ", *header_.max_new_tokens, " sampling.max_new_tokens")
          : std::string(", less at least one for output"),
      ")"));
}

int64_t PromptAssembler::HeldBytes() const {
  if (encoder_ != nullptr) return static_cast<int64_t>(encoder_->memory_bytes());
  return static_cast<int64_t>(text_.capacity() + ids_.capacity() * sizeof(int32_t));
}

absl::Status PromptAssembler::AddText(std::string text) {
  const int64_t n = static_cast<int64_t>(text.size());
  if (header_.prompt_kind == PromptKind::kChat) {
    // Held as it is until complete (the JSON is parsed whole); grown geometrically.
    const size_t need = text_.size() + text.size();
    const size_t capacity = need <= text_.capacity()
                                ? text_.capacity()
                                : std::max(need, text_.capacity() + text_.capacity() / 2);
    RETURN_IF_ERROR(lease_.Resize(static_cast<int64_t>(capacity) + n, cancelled_, Where()));
    text_.reserve(capacity);
    text_ += text;
    text = std::string();
  } else {
    if (encoder_ == nullptr) {
      encoder_ = std::make_unique<IncrementalEncoder>(front_door_->tokenizer_);
    }
    // The chunk, the ids it can add (at most one per byte) and the work of tokenizing it.
    const int64_t work =
        kWorkBytesPerPromptByte *
        std::min<int64_t>(static_cast<int64_t>(encoder_->held_bytes()) + n,
                          2 * static_cast<int64_t>(IncrementalEncoder::kDefaultStepBytes));
    RETURN_IF_ERROR(
        lease_.Resize(HeldBytes() + n * (1 + sizeof(int32_t)) + work, cancelled_, Where()));
    // In pieces, so that a client gone mid-chunk stops the work and the ids are counted early.
    const size_t piece = IncrementalEncoder::kDefaultStepBytes;
    for (size_t at = 0; at < text.size(); at += piece) {
      if (cancelled_ && cancelled_()) return absl::CancelledError("the client went away");
      absl::Status s = encoder_->Append(std::string_view(text).substr(at, piece));
      if (!s.ok()) return TextError(s, "prompt text");
      RETURN_IF_ERROR(CheckTokenCount(
          static_cast<int64_t>(encoder_->ids().size()),
          absl::StrCat("byte ", encoder_->bytes_in(), " of the text (", Where(), ")")));
    }
    text = std::string();
  }
  bytes_received_ += n;
  lease_.SetUploadBytes(bytes_received_);
  return lease_.Resize(HeldBytes(), cancelled_, Where());
}

// ---- FrontDoor ----

FrontDoor::FrontDoor(const ModelConfig& config, const Tokenizer* tokenizer, RequestSink* sink,
                     FrontDoorOptions options)
    : config_(config),
      tokenizer_(tokenizer),
      sink_(sink),
      options_(std::move(options)),
      memory_(options_.prompt_memory_bytes, options_.prompt_memory_wait),
      active_(std::make_shared<ActiveSet>()) {}

int64_t FrontDoor::MaxPromptBytes() const {
  return max_context() * options_.max_prompt_bytes_per_token;
}

absl::Status FrontDoor::CheckHeader(const GenerateHeader& h) const {
  if (!h.model.empty() && !options_.model_name.empty() && h.model != options_.model_name) {
    return Invalid(absl::StrCat("header.model: '", h.model,
                                "' is not served here (this server "
                                "serves '",
                                options_.model_name, "')"));
  }
  if (h.prompt_kind != PromptKind::kChat && !h.chat.tools_json.empty()) {
    return Invalid(absl::StrCat("header.chat.tools_json: tools need the chat prompt kind, not ",
                                PromptKindName(h.prompt_kind)));
  }
  if (h.prompt_kind == PromptKind::kChat && !h.chat.tools_json.empty()) {
    ASSIGN_OR_RETURN(const auto tools, ParseJsonText(h.chat.tools_json, "header.chat.tools_json"));
    if (!tools.is_array()) {
      return Invalid(absl::StrCat("header.chat.tools_json: expected a JSON array of tools, got ",
                                  tools.type_name()));
    }
  }
  const SamplingOptions& s = h.sampling;
  if (!s.greedy && !(s.temperature >= 0 && std::isfinite(s.temperature))) {
    return Invalid(absl::StrCat("sampling.temperature: ", s.temperature,
                                " (must be >= 0 and finite; 0 is greedy)"));
  }
  if (!(s.top_p > 0 && s.top_p <= 1)) {
    return Invalid(absl::StrCat("sampling.top_p: ", s.top_p, " (must be in (0, 1])"));
  }
  if (s.top_k < 0) {
    return Invalid(absl::StrCat("sampling.top_k: ", s.top_k, " (must be >= 0; 0 = all tokens)"));
  }
  if (h.max_new_tokens.has_value()) {
    const int64_t n = *h.max_new_tokens;
    if (n < 1) {
      return Invalid(absl::StrCat("sampling.max_new_tokens: ", n, " (must be >= 1)"));
    }
    if (n > max_context()) {
      return Invalid(absl::StrCat("sampling.max_new_tokens: ", n,
                                  " is above the model's maximum context of ", max_context(),
                                  " tokens"));
    }
  }
  if (s.experts_per_token < 0 || s.experts_per_token > config_.num_experts_per_tok) {
    return Invalid(absl::StrCat(
        "experts_per_token: ", s.experts_per_token, " (must be 1..", config_.num_experts_per_tok,
        ", the checkpoint's experts per token; 0 or unset for all of them)"));
  }
  if (s.top_logprobs < 0 || s.top_logprobs > kMaxTopLogprobs) {
    return Invalid(absl::StrCat("sampling.top_logprobs: ", s.top_logprobs, " (must be 0..",
                                kMaxTopLogprobs, ")"));
  }
  if (s.top_logprobs > 0 && !s.logprobs) {
    return Invalid("sampling.top_logprobs: needs sampling.logprobs");
  }
  if (s.stop.size() > options_.max_stop_strings) {
    return Invalid(absl::StrCat("sampling.stop: ", s.stop.size(), " stop strings (at most ",
                                options_.max_stop_strings, ")"));
  }
  for (size_t i = 0; i < s.stop.size(); ++i) {
    const std::string& stop = s.stop[i];
    if (stop.empty()) {
      return Invalid(absl::StrCat("sampling.stop[", i, "]: a stop string must not be empty"));
    }
    if (stop.size() > options_.max_stop_bytes) {
      return Invalid(absl::StrCat("sampling.stop[", i, "]: ", stop.size(), " bytes (at most ",
                                  options_.max_stop_bytes, ")"));
    }
    if (!utf8::IsValid(stop)) {
      return Invalid(absl::StrCat("sampling.stop[", i, "]: not valid UTF-8"));
    }
  }
  return absl::OkStatus();
}

absl::Status FrontDoor::CheckIds(const std::vector<int32_t>& ids, int64_t first_idx) const {
  const int64_t vocab = tokenizer_->model_vocab_size();
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    const int64_t idx = first_idx + static_cast<int64_t>(i);
    if (id < 0) {
      return Invalid(absl::StrCat("prompt token id at index ", idx, " is ", id,
                                  ": token ids are non-negative"));
    }
    if (id >= vocab) {
      return Invalid(absl::StrCat("prompt token id at index ", idx, " is ", id,
                                  ", not below the model's vocabulary size ", vocab));
    }
    RETURN_IF_ERROR(
        AsInvalid(tokenizer_->CheckId(id), absl::StrCat("prompt token id at index ", idx)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> FrontDoor::EncodeText(
    std::string_view text, absl::string_view what, int64_t max_tokens, PromptMemory::Lease* lease,
    const std::function<bool()>& cancelled) const {
  IncrementalEncoder encoder(tokenizer_);
  const size_t piece = IncrementalEncoder::kDefaultStepBytes;
  const int64_t base = lease->bytes();
  const int64_t work =
      kWorkBytesPerPromptByte * static_cast<int64_t>(std::min(text.size(), 2 * piece));
  for (size_t at = 0; at < text.size(); at += piece) {
    if (cancelled && cancelled()) return absl::CancelledError("the client went away");
    // The ids so far (at most one per byte), the next piece's and the work.
    const int64_t ids_bytes = static_cast<int64_t>(
        (encoder.ids().capacity() + std::min(piece, text.size() - at)) * sizeof(int32_t));
    RETURN_IF_ERROR(lease->Resize(base + ids_bytes + work, cancelled, std::string(what)));
    RETURN_IF_ERROR(TextError(encoder.Append(text.substr(at, piece)), what));
    if (max_tokens >= 0 && static_cast<int64_t>(encoder.ids().size()) > max_tokens) {
      return Invalid(absl::StrCat("prompt too large: ", what, " is more than ", max_tokens,
                                  " tokens by byte ", encoder.bytes_in(), " (the model's maximum ",
                                  "context is ", max_context(), " tokens, less the output)"));
    }
  }
  RETURN_IF_ERROR(TextError(encoder.Finish(), what));
  std::vector<int32_t> ids = encoder.TakeIds();
  RETURN_IF_ERROR(lease->Resize(base + static_cast<int64_t>(ids.capacity() * sizeof(int32_t)),
                                cancelled, std::string(what)));
  return ids;
}

absl::StatusOr<std::string> FrontDoor::RenderChat(const std::string& messages_json,
                                                  const ChatPromptOptions& chat) const {
  ASSIGN_OR_RETURN(const nlohmann::ordered_json list, ParseJsonText(messages_json, "messages"));
  if (!list.is_array()) {
    return Invalid(
        absl::StrCat("messages: expected a JSON array of message objects, got ", list.type_name()));
  }
  if (list.empty()) return Invalid("messages: the list is empty");
  auto parsed = ChatMessagesFromJson(list, "messages");
  if (!parsed.ok()) return AsInvalid(parsed.status(), "");
  std::vector<ChatMessage> messages = std::move(parsed).value();

  ChatEncodeOptions options;
  options.thinking_mode = chat.thinking ? ThinkingMode::kThinking : ThinkingMode::kChat;
  options.reasoning_effort = chat.reasoning_effort;
  options.drop_thinking = !chat.keep_thinking;
  options.add_bos = true;

  bool inserted_system = false;
  if (!chat.tools_json.empty()) {
    ASSIGN_OR_RETURN(nlohmann::ordered_json tools,
                     ParseJsonText(chat.tools_json, "header.chat.tools_json"));
    nlohmann::ordered_json holder = nlohmann::ordered_json::array();
    holder.push_back({{"role", "system"}, {"content", ""}, {"tools", std::move(tools)}});
    auto system = ChatMessagesFromJson(holder, "tools");
    if (!system.ok()) return AsInvalid(system.status(), "header.chat.tools_json");
    if (messages.front().role == ChatRole::kSystem) {
      if (!messages.front().tools.is_null() && !messages.front().tools.empty()) {
        return Invalid("tools given twice: in header.chat.tools_json and in messages[0].tools");
      }
      messages.front().tools = std::move(system->front().tools);
    } else {
      messages.insert(messages.begin(), std::move(system->front()));
      inserted_system = true;
    }
  }
  auto text = EncodeChat(messages, {}, options);
  if (!text.ok() && inserted_system) {
    // Name the client's own indices: the same error without the added system message.
    messages.erase(messages.begin());
    auto plain = EncodeChat(messages, {}, options);
    if (!plain.ok()) return AsInvalid(plain.status(), "");
  }
  if (!text.ok()) return AsInvalid(text.status(), "");
  text->append(chat.assistant_prefix);
  return text;
}

absl::StatusOr<GenerateRequest> FrontDoor::Prepare(PromptAssembler prompt) {
  if (!prompt.complete_) return Invalid("the prompt is not complete");
  const GenerateHeader& h = prompt.header_;
  const std::function<bool()>& cancelled = prompt.cancelled_;
  std::vector<int32_t> ids;
  switch (h.prompt_kind) {
    case PromptKind::kText: {
      if (prompt.encoder_ == nullptr || prompt.encoder_->bytes_in() == 0) {
        return Invalid("empty prompt: no text was sent");
      }
      IncrementalEncoder& encoder = *prompt.encoder_;
      const int64_t work = kWorkBytesPerPromptByte * static_cast<int64_t>(encoder.held_bytes());
      RETURN_IF_ERROR(prompt.lease_.Resize(prompt.HeldBytes() + work, cancelled, "the prompt"));
      RETURN_IF_ERROR(TextError(encoder.Finish(), "prompt text"));
      ids = encoder.TakeIds();
      break;
    }
    case PromptKind::kChat: {
      if (prompt.text_.empty()) return Invalid("empty prompt: no messages JSON was sent");
      // The parsed JSON and the rendered prompt: a few times the JSON, within the work bound.
      const int64_t json_bytes = static_cast<int64_t>(prompt.text_.size());
      RETURN_IF_ERROR(prompt.lease_.Resize(
          prompt.HeldBytes() + kWorkBytesPerPromptByte * json_bytes, cancelled, "the chat prompt"));
      ASSIGN_OR_RETURN(std::string rendered, RenderChat(prompt.text_, h.chat));
      prompt.text_ = std::string();
      RETURN_IF_ERROR(prompt.lease_.Resize(static_cast<int64_t>(rendered.capacity()), cancelled,
                                           "the chat prompt"));
      ASSIGN_OR_RETURN(ids, EncodeText(rendered, "rendered chat prompt", prompt.MaxPromptTokens(),
                                       &prompt.lease_, cancelled));
      break;
    }
    case PromptKind::kTokenIds:
      if (prompt.ids_.empty()) return Invalid("empty prompt: no token ids were sent");
      ids = std::move(prompt.ids_);
      break;
  }
  if (ids.empty()) return Invalid("empty prompt: it encodes to no tokens");

  const int64_t num_prompt = static_cast<int64_t>(ids.size());
  const int64_t context = max_context();
  int64_t max_new = 0;
  if (h.max_new_tokens.has_value()) {
    max_new = *h.max_new_tokens;
    if (num_prompt + max_new > context) {
      return Invalid(absl::StrCat("the model's maximum context is ", context,
                                  " tokens, but the request needs ", num_prompt + max_new, " (",
                                  num_prompt, " in the prompt + ", max_new,
                                  " sampling.max_new_tokens)"));
    }
  } else {
    if (num_prompt >= context) {
      return Invalid(absl::StrCat("the prompt's ", num_prompt, " tokens fill the model's maximum ",
                                  "context of ", context, " tokens: no room for output"));
    }
    max_new = std::min(options_.default_max_new_tokens, context - num_prompt);
  }

  GenerateRequest request;
  request.id = next_id_.fetch_add(1);
  request.prompt = std::move(ids);
  request.sampling = h.sampling;
  request.sampling.max_new_tokens = max_new;
  if (request.sampling.temperature == 0) request.sampling.greedy = true;  // as OpenAI and vLLM
  request.priority = h.priority;
  return request;
}

absl::Status FrontDoor::Submit(GenerateRequest request, EventSink relay) {
  const uint64_t id = request.id;
  active_->Insert(id);
  // The sink may be called from the engine thread with the scheduler's lock held, so it only
  // takes the active set's own lock; this object's callers never hold that lock while calling
  // into the sink.
  EventSink wrapped = [active = active_, id, relay = std::move(relay)](const RequestEvent& e) {
    if (e.kind == RequestEvent::Kind::kFinished || e.kind == RequestEvent::Kind::kError) {
      active->Erase(id);
    }
    relay(e);
  };
  absl::Status status = sink_->Submit(std::move(request), std::move(wrapped));
  if (!status.ok()) active_->Erase(id);
  return status;
}

bool FrontDoor::Cancel(uint64_t id, bool notify) {
  bool was_active;
  {
    std::lock_guard<std::mutex> lock(active_->mu);
    was_active = active_->ids.count(id) > 0;
    // Without notify no Finished will come to take it out.
    if (!notify) active_->ids.erase(id);
  }
  if (was_active) sink_->Cancel(id, notify);
  return was_active;
}

absl::StatusOr<FrontDoor::TokenizeResult> FrontDoor::Tokenize(
    PromptKind kind, std::string text, const ChatPromptOptions& chat,
    const std::function<bool()>& cancelled) {
  PromptMemory::Lease lease = memory_.NewLease();
  TokenizeResult result;
  switch (kind) {
    case PromptKind::kText: {
      RETURN_IF_ERROR(lease.Resize(static_cast<int64_t>(text.size()), cancelled, "Tokenize"));
      ASSIGN_OR_RETURN(result.ids, EncodeText(text, "text", -1, &lease, cancelled));
      result.prompt = std::move(text);
      return result;
    }
    case PromptKind::kChat: {
      if (text.empty()) return Invalid("messages: no messages JSON was sent");
      RETURN_IF_ERROR(
          lease.Resize((1 + kWorkBytesPerPromptByte) * static_cast<int64_t>(text.size()), cancelled,
                       "Tokenize"));
      ASSIGN_OR_RETURN(result.prompt, RenderChat(text, chat));
      text = std::string();
      RETURN_IF_ERROR(
          lease.Resize(static_cast<int64_t>(result.prompt.capacity()), cancelled, "Tokenize"));
      ASSIGN_OR_RETURN(result.ids,
                       EncodeText(result.prompt, "rendered chat prompt", -1, &lease, cancelled));
      return result;
    }
    case PromptKind::kTokenIds:
      break;
  }
  return Invalid("prompt_kind: Tokenize takes text or chat messages");
}

ModelInfo FrontDoor::ModelSummary() const {
  ModelInfo info;
  info.name = options_.model_name;
  info.config = config_;
  info.model_vocab_size = tokenizer_->model_vocab_size();
  info.tokenizer_vocab_size = tokenizer_->vocab_size();
  info.bos_id =
      tokenizer_->bos_id() >= 0 ? tokenizer_->bos_id() : static_cast<int32_t>(config_.bos_token_id);
  info.eos_id =
      tokenizer_->eos_id() >= 0 ? tokenizer_->eos_id() : static_cast<int32_t>(config_.eos_token_id);
  return info;
}

int64_t FrontDoor::num_active() const {
  std::lock_guard<std::mutex> lock(active_->mu);
  return static_cast<int64_t>(active_->ids.size());
}

}  // namespace flotilla
