// The serving front door (design.md §3, step 2): a Generate stream's header and prompt chunks
// become one GenerateRequest — validated, tokenized (text), chat-encoded then tokenized (chat
// messages; the chat format writes BOS as text) or range-checked (token ids) — with an id of its
// own; it goes to a RequestSink (the Scheduler) and its events are relayed back.
//
// Plain structs only: the gRPC adapter (grpc_server.h) converts protos to these at the edge.
// Every refusal is INVALID_ARGUMENT with a message naming the stream message, field or index at
// fault; errors from the sink (RESOURCE_EXHAUSTED, UNAVAILABLE, ...) pass through unchanged.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/model_config.h"
#include "common/status.h"
#include "coordinator/prompt_memory.h"
#include "coordinator/request.h"
#include "coordinator/request_sink.h"
#include "tokenizer/chat_encoding.h"
#include "tokenizer/incremental_encoder.h"
#include "tokenizer/tokenizer.h"

namespace flotilla {

enum class PromptKind { kText, kChat, kTokenIds };
const char* PromptKindName(PromptKind kind);  // "text", "chat", "token ids"

struct ChatPromptOptions {
  bool thinking = false;  // thinking mode, else chat mode
  ReasoningEffort reasoning_effort = ReasoningEffort::kNone;
  bool keep_thinking = false;  // drop_thinking off
  // JSON array of OpenAI tools, "" for none. Placed on the leading system message (an empty
  // one is added when the messages do not start with a system message).
  std::string tools_json;
  // Appended to the rendered prompt: the start of the assistant's answer, which the model
  // continues (the HTTP API's forced tool calls). "" for none.
  std::string assistant_prefix;
};

// The first message of a Generate stream.
struct GenerateHeader {
  PromptKind prompt_kind = PromptKind::kText;
  // All fields but max_new_tokens, which is taken from the field below.
  SamplingOptions sampling;
  // Unset: min(FrontDoorOptions::default_max_new_tokens, context left after the prompt).
  std::optional<int64_t> max_new_tokens;
  int32_t priority = 0;
  ChatPromptOptions chat;  // kChat only
  std::string model;       // "" or the served model's name
};

// A piece of the prompt. kText pieces are raw bytes and may end inside a UTF-8 character; the
// assembled text is checked as a whole.
struct PromptChunk {
  enum class Kind { kNone, kText, kTokenIds };
  Kind kind = Kind::kNone;  // kNone: carries nothing (e.g. only `last`)
  std::string text;
  std::vector<int32_t> token_ids;
  bool last = false;  // the prompt is complete
};

struct FrontDoorOptions {
  std::string model_name;  // what ModelInfo reports; a header naming another model is refused
  int64_t default_max_new_tokens = 256;
  size_t max_chunk_bytes = size_t{4} << 20;  // text bytes, or 4 bytes per token id
  // The assembled text or messages JSON may hold at most this many bytes per token of the
  // model's context (checked while streaming; the exact token check follows tokenization).
  int64_t max_prompt_bytes_per_token = 32;
  size_t max_stop_strings = 16;
  size_t max_stop_bytes = 1024;  // per stop string
  // The budget of prompt memory over all requests (prompt_memory.h; --prompt-memory), and how
  // long a request may wait for its share before RESOURCE_EXHAUSTED.
  int64_t prompt_memory_bytes = int64_t{1} << 30;
  std::chrono::milliseconds prompt_memory_wait{2000};
};

// Bytes of working memory reserved per byte of text being tokenized or JSON being parsed and
// rendered, on top of the text itself (measured peaks are below this; see docs/serving-api.md).
inline constexpr int64_t kWorkBytesPerPromptByte = 16;

struct ParallelLayout {
  int64_t num_workers = 0, tp = 1, dp = 1, ep = 0;
};

// What GetModelInfo reports; the host fills in the layout.
struct ModelInfo {
  std::string name;
  ModelConfig config;
  int64_t model_vocab_size = 0;  // prompt ids must be below this
  int64_t tokenizer_vocab_size = 0;
  int32_t bos_id = -1, eos_id = -1;
  ParallelLayout layout;
};

class FrontDoor;

// One Generate stream's incoming messages, in order. Not thread-safe (one stream, one thread).
// After an error the assembler is dead: the stream ends with that error.
//
// Text prompts are tokenized as their chunks arrive, and every limit is checked as early as the
// bytes allow: the chunk and prompt byte limits before a chunk is taken, the context limit in
// tokens as soon as the ids so far pass it. Every chunk first reserves its memory from the front
// door's prompt budget (it may wait; RESOURCE_EXHAUSTED if it cannot). The reservation is held
// until the assembler goes (Prepare consumes it).
class PromptAssembler {
 public:
  PromptAssembler(PromptAssembler&&) = default;
  PromptAssembler& operator=(PromptAssembler&&) = default;

  // Polled while waiting for prompt memory and between pieces of tokenization: true stops the
  // work with CANCELLED (the client went away).
  void SetCancelled(std::function<bool()> cancelled) { cancelled_ = std::move(cancelled); }
  absl::Status AddHeader(GenerateHeader header);
  absl::Status AddChunk(PromptChunk chunk);
  // The client half-closed: the prompt is complete, if a header came.
  absl::Status EndOfStream();
  bool complete() const { return complete_; }
  // Whether the prompt was completed by a chunk marked `last` (rather than the end of stream).
  bool ended_by_last() const { return ended_by_last_; }
  int64_t num_messages() const { return num_messages_; }

 private:
  friend class FrontDoor;
  PromptAssembler(FrontDoor* front_door, PromptMemory::Lease lease)
      : front_door_(front_door), lease_(std::move(lease)) {}

  std::string Where() const;  // "stream message N"
  absl::Status AddText(std::string text);
  // The most prompt tokens the header allows (context less max_new_tokens, or less 1).
  int64_t MaxPromptTokens() const;
  absl::Status CheckTokenCount(int64_t num_tokens, const std::string& where) const;
  int64_t HeldBytes() const;

  FrontDoor* front_door_;
  // Declared first: released last, after the buffers below are gone.
  PromptMemory::Lease lease_;
  std::function<bool()> cancelled_;
  std::unique_ptr<IncrementalEncoder> encoder_;  // kText
  int64_t bytes_received_ = 0;
  bool ended_by_last_ = false;
  int64_t num_messages_ = 0;
  int64_t num_chunks_ = 0;
  bool has_header_ = false;
  bool complete_ = false;
  GenerateHeader header_;
  std::string text_;          // kChat: the messages JSON
  std::vector<int32_t> ids_;  // kTokenIds
};

class FrontDoor {
 public:
  // `tokenizer` and `sink` must outlive this object; the sink must stop calling event sinks
  // before this object goes away.
  FrontDoor(const ModelConfig& config, const Tokenizer* tokenizer, RequestSink* sink,
            FrontDoorOptions options = {});

  PromptAssembler NewPrompt() { return PromptAssembler(this, memory_.NewLease()); }

  // A complete prompt -> a request with a fresh id: tokenized or chat-encoded, ids checked,
  // prompt + max_new_tokens within the model's context.
  absl::StatusOr<GenerateRequest> Prepare(PromptAssembler prompt);

  // Hands the request to the sink; `relay` gets its events (possibly before this returns, and
  // from the engine thread). The request stays active until Finished or an error event.
  absl::Status Submit(GenerateRequest request, EventSink relay);

  // Cancels an active request. `notify` false: the client is gone. Returns whether it was
  // active.
  bool Cancel(uint64_t id, bool notify);

  struct TokenizeResult {
    std::vector<int32_t> ids;
    std::string prompt;  // the rendered chat prompt, or the text
  };
  // kText or kChat; the same rules as Generate prompts (but no context limit).
  // Reserves from the prompt budget like a prompt; `cancelled` may be empty.
  absl::StatusOr<TokenizeResult> Tokenize(PromptKind kind, std::string text,
                                          const ChatPromptOptions& chat,
                                          const std::function<bool()>& cancelled = {});

  ModelInfo ModelSummary() const;  // layout left at its defaults
  int64_t num_active() const;
  int64_t max_context() const { return config_.max_position_embeddings; }
  const FrontDoorOptions& options() const { return options_; }
  PromptMemoryStats PromptMemoryUse() const { return memory_.Stats(); }
  // A share of the prompt budget for bytes a front door holds itself (an HTTP body).
  PromptMemory::Lease NewMemoryLease() { return memory_.NewLease(); }

 private:
  friend class PromptAssembler;
  struct ActiveSet;

  absl::Status CheckHeader(const GenerateHeader& header) const;
  absl::Status CheckIds(const std::vector<int32_t>& ids, int64_t first_idx) const;
  absl::StatusOr<std::string> RenderChat(const std::string& messages_json,
                                         const ChatPromptOptions& chat) const;
  // Tokenizes `text` piece by piece under `lease` (grown for the work, shrunk after), stopping
  // with INVALID_ARGUMENT once the ids pass `max_tokens` (-1: no limit) and with CANCELLED when
  // `cancelled` says so. `what` names the text in errors.
  absl::StatusOr<std::vector<int32_t>> EncodeText(std::string_view text, absl::string_view what,
                                                  int64_t max_tokens, PromptMemory::Lease* lease,
                                                  const std::function<bool()>& cancelled) const;
  int64_t MaxPromptBytes() const;

  ModelConfig config_;
  const Tokenizer* tokenizer_;
  RequestSink* sink_;
  FrontDoorOptions options_;
  std::atomic<uint64_t> next_id_{1};
  PromptMemory memory_;
  std::shared_ptr<ActiveSet> active_;  // shared with the event wrappers
};

}  // namespace flotilla
