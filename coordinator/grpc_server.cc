#include "coordinator/grpc_server.h"

#include <grpc/grpc.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "comm/grpc_convert.h"
#include "coordinator/stall_watchdog.h"
#include "flotilla/v1/flotilla.grpc.pb.h"
#include "grpc/health/v1/health.pb.h"

namespace flotilla {

namespace {

using Stream = grpc::ServerReaderWriter<v1::GenerateResponse, v1::GenerateRequest>;

// How often a stream waiting for events checks whether its client is still there.
constexpr auto kPollInterval = std::chrono::milliseconds(50);

// ---- protos -> plain structs ----

absl::StatusOr<PromptKind> PromptKindFromProto(int kind, absl::string_view field) {
  switch (kind) {
    case v1::PROMPT_KIND_TEXT:
      return PromptKind::kText;
    case v1::PROMPT_KIND_CHAT:
      return PromptKind::kChat;
    case v1::PROMPT_KIND_TOKEN_IDS:
      return PromptKind::kTokenIds;
    case v1::PROMPT_KIND_UNSPECIFIED:
      return absl::InvalidArgumentError(
          absl::StrCat(field,
                       " is unset (PROMPT_KIND_TEXT, PROMPT_KIND_CHAT or "
                       "PROMPT_KIND_TOKEN_IDS)"));
    default:
      return absl::InvalidArgumentError(absl::StrCat(field, ": unknown value ", kind));
  }
}

absl::StatusOr<ChatPromptOptions> ChatFromProto(const v1::ChatOptions& in,
                                                absl::string_view field) {
  ChatPromptOptions out;
  out.thinking = in.thinking();
  out.keep_thinking = in.keep_thinking();
  out.tools_json = in.tools_json();
  switch (in.reasoning_effort()) {
    case v1::REASONING_EFFORT_UNSPECIFIED:
      out.reasoning_effort = ReasoningEffort::kNone;
      break;
    case v1::REASONING_EFFORT_HIGH:
      out.reasoning_effort = ReasoningEffort::kHigh;
      break;
    case v1::REASONING_EFFORT_MAX:
      out.reasoning_effort = ReasoningEffort::kMax;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".reasoning_effort: unknown value ", in.reasoning_effort()));
  }
  return out;
}

absl::StatusOr<GenerateHeader> HeaderFromProto(const v1::GenerateHeader& in) {
  GenerateHeader h;
  ASSIGN_OR_RETURN(h.prompt_kind, PromptKindFromProto(in.prompt_kind(), "header.prompt_kind"));
  ASSIGN_OR_RETURN(h.chat, ChatFromProto(in.chat(), "header.chat"));
  const v1::SamplingParams& s = in.sampling();
  h.sampling.greedy = s.greedy();
  if (s.has_temperature()) h.sampling.temperature = s.temperature();
  if (s.has_top_p()) h.sampling.top_p = s.top_p();
  h.sampling.top_k = s.top_k();
  h.sampling.seed = s.seed();
  if (s.has_max_new_tokens()) h.max_new_tokens = s.max_new_tokens();
  h.sampling.stop.assign(s.stop().begin(), s.stop().end());
  h.sampling.ignore_eos = s.ignore_eos();
  h.sampling.skip_special_tokens = s.skip_special_tokens();
  h.priority = in.priority();
  h.model = in.model();
  h.sampling.experts_per_token = in.experts_per_token();
  return h;
}

PromptChunk ChunkFromProto(v1::PromptChunk* in) {
  PromptChunk c;
  c.last = in->last();
  switch (in->piece_case()) {
    case v1::PromptChunk::kText:
      c.kind = PromptChunk::Kind::kText;
      c.text = std::move(*in->mutable_text());
      break;
    case v1::PromptChunk::kTokenIds:
      c.kind = PromptChunk::Kind::kTokenIds;
      c.token_ids.assign(in->token_ids().ids().begin(), in->token_ids().ids().end());
      break;
    case v1::PromptChunk::PIECE_NOT_SET:
      break;
  }
  return c;
}

// ---- plain structs -> protos ----

v1::FinishReason FinishReasonToProto(FinishReason r) {
  switch (r) {
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kStopString:
      return v1::FINISH_REASON_STOP_STRING;
    case FinishReason::kCancelled:
      return v1::FINISH_REASON_CANCELLED;
    case FinishReason::kError:
      return v1::FINISH_REASON_ERROR;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

void ModelInfoToProto(const ModelInfo& in, v1::ModelInfo* out) {
  const ModelConfig& c = in.config;
  out->set_name(in.name);
  out->set_model_type(c.model_type);
  for (const auto& a : c.architectures) out->add_architectures(a);
  out->set_vocab_size(in.model_vocab_size);
  out->set_tokenizer_vocab_size(in.tokenizer_vocab_size);
  out->set_max_context(c.max_position_embeddings);
  out->set_hidden_size(c.hidden_size);
  out->set_num_hidden_layers(c.num_hidden_layers);
  out->set_num_attention_heads(c.num_attention_heads);
  out->set_n_routed_experts(c.n_routed_experts);
  out->set_num_experts_per_tok(c.num_experts_per_tok);
  out->set_quantized(c.Quantized());
  out->set_expert_dtype(c.expert_dtype);
  out->set_bos_token_id(in.bos_id);
  out->set_eos_token_id(in.eos_id);
  v1::ParallelLayout* layout = out->mutable_layout();
  layout->set_num_workers(static_cast<int32_t>(in.layout.num_workers));
  layout->set_tp(static_cast<int32_t>(in.layout.tp));
  layout->set_dp(static_cast<int32_t>(in.layout.dp));
  layout->set_ep(static_cast<int32_t>(in.layout.ep));
}

void WorkerReportToProto(const WorkerReport& in, v1::WorkerReport* out) {
  out->set_world_rank(in.world_rank);
  out->set_address(in.address);
  out->set_error(in.error);
  WorkerHealthToProto(in.health, out->mutable_health());
  WorkerLoadProgressToProto(in.load, out->mutable_load());
  WorkerStatsToProto(in.stats, out->mutable_stats());
}

void ClusterStatusToProto(const ClusterStatus& in, v1::ClusterStatus* out) {
  v1::SchedulerStatus* s = out->mutable_scheduler();
  s->set_running(in.scheduler.running);
  s->set_queued(in.scheduler.queued);
  s->set_steps(in.scheduler.steps);
  s->set_tokens_generated(in.scheduler.tokens_generated);
  for (const auto& g : in.scheduler.groups) {
    v1::KvGroupStatus* pg = s->add_groups();
    pg->set_pages_total(g.pages_total);
    pg->set_pages_used(g.pages_used);
    pg->set_page_bytes(g.page_bytes);
    pg->set_sequences(g.sequences);
  }
  out->set_draining(in.draining);
  for (const auto& w : in.workers) WorkerReportToProto(w, out->add_workers());
}

// Events of one request, from the engine thread to the stream's handler thread.
class EventQueue {
 public:
  void Push(const RequestEvent& e) {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    events_.push_back(e);
    cv_.notify_one();
  }
  // False when nothing came within `timeout`.
  bool PopFor(RequestEvent* out, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return !events_.empty(); })) return false;
    *out = std::move(events_.front());
    events_.pop_front();
    return true;
  }
  // Later events are dropped (the stream is over).
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    events_.clear();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<RequestEvent> events_;
  bool closed_ = false;
};

// After a chunk marked `last` the prompt is complete, but the client may still send: its
// half-close is expected, anything else is a mistake to refuse rather than ignore. A thread
// reads on while the handler writes (the sync API allows one reader and one writer at once).
class AfterLastReader {
 public:
  AfterLastReader(Stream* stream, bool start) {
    if (!start) return;
    state_ = kPending;
    thread_ = std::thread([this, stream] {
      v1::GenerateRequest more;
      state_ = stream->Read(&more) ? kExtra : kClosed;
    });
  }
  ~AfterLastReader() { FLOTILLA_CHECK(!thread_.joinable()); }  // Finish was called

  bool extra() const { return state_ == kExtra; }

  // Ends the reader; returns `status`. A read still pending (the client neither sent more nor
  // half-closed) is ended by closing the call with `status` itself.
  grpc::Status Finish(grpc::ServerContext* ctx, grpc::Status status) {
    if (!thread_.joinable()) return status;
    if (state_ == kPending) {
      grpc_call_cancel_with_status(ctx->c_call(),
                                   static_cast<grpc_status_code>(status.error_code()),
                                   status.error_message().c_str(), nullptr);
    }
    thread_.join();
    return status;
  }

 private:
  enum State { kNone, kPending, kClosed, kExtra };
  std::atomic<State> state_{kNone};
  std::thread thread_;
};

void EventToProto(const RequestEvent& e, uint64_t id, int64_t prompt_tokens, int64_t max_new_tokens,
                  v1::GenerateResponse* out) {
  out->Clear();
  switch (e.kind) {
    case RequestEvent::Kind::kAdmitted: {
      v1::Admitted* a = out->mutable_admitted();
      a->set_request_id(id);
      a->set_kv_bytes_reserved(e.kv_bytes_reserved);
      a->set_queue_position(e.queue_position);
      a->set_prompt_tokens(prompt_tokens);
      a->set_max_new_tokens(max_new_tokens);
      break;
    }
    case RequestEvent::Kind::kProgress:
      out->mutable_progress()->set_prefill_done(e.prefill_done);
      out->mutable_progress()->set_prefill_total(e.prefill_total);
      break;
    case RequestEvent::Kind::kToken: {
      v1::TokenDelta* t = out->mutable_token();
      t->mutable_ids()->Add(e.token_ids.begin(), e.token_ids.end());
      t->set_text(e.text);
      break;
    }
    case RequestEvent::Kind::kFinished: {
      v1::Finished* f = out->mutable_finished();
      f->set_reason(FinishReasonToProto(e.reason));
      v1::Usage* u = f->mutable_usage();
      u->set_prompt_tokens(e.usage.prompt_tokens);
      u->set_completion_tokens(e.usage.completion_tokens);
      u->set_time_to_first_token_s(e.usage.time_to_first_token_s);
      u->set_time_per_output_token_s(e.usage.time_per_output_token_s);
      break;
    }
    case RequestEvent::Kind::kError:
      break;  // ends the stream with a status instead
  }
}

class FlotillaService final : public v1::Flotilla::Service {
 public:
  FlotillaService(FrontDoor* front_door, ServingCallbacks callbacks, std::string api_key,
                  size_t max_message_bytes, std::chrono::milliseconds upload_idle,
                  std::chrono::milliseconds write_stall)
      : front_door_(front_door),
        callbacks_(std::move(callbacks)),
        api_key_(std::move(api_key)),
        max_message_bytes_(max_message_bytes),
        watchdog_(upload_idle, write_stall) {}

  // grpc::Status::OK when no key is required or the call carries it.
  grpc::Status Authorize(const grpc::ServerContext* ctx) const {
    if (api_key_.empty()) return grpc::Status::OK;
    const auto& md = ctx->client_metadata();
    const auto it = md.find("authorization");
    if (it == md.end()) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "authorization: missing; send the metadata \"authorization: Bearer "
                          "<key>\"");
    }
    const std::string got(it->second.data(), it->second.size());
    const std::string want = "Bearer " + api_key_;
    unsigned diff = got.size() == want.size() ? 0 : 1;
    for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
      diff |= static_cast<unsigned char>(got[i] ^ want[i]);
    }
    if (diff != 0) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "authorization: the API key is not valid");
    }
    return grpc::Status::OK;
  }

  void set_server(grpc::Server* server) {
    server_ = server;
    UpdateHealth();
  }

  // Health, overall ("") and for flotilla.v1.Flotilla: SERVING unless drained, stopped or
  // told otherwise (a worker missing its deadline). The health and reflection services report
  // SERVING until shutdown.
  void set_serving(bool serving) {
    serving_ = serving;
    UpdateHealth();
  }
  void set_shut_down() {
    shut_down_ = true;
    serving_ = false;
    UpdateHealth();
  }
  void UpdateHealth() {
    std::lock_guard<std::mutex> lock(health_mu_);
    grpc::Server* server = server_.load();
    if (server == nullptr || server->GetHealthCheckService() == nullptr) return;
    const bool serving = serving_ && !drained_;
    grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
    health->SetServingStatus(serving);
    health->SetServingStatus(v1::Flotilla::service_full_name(), serving);
    // The services that answer whatever the model's state: health and reflection.
    for (const char* name : {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}) {
      health->SetServingStatus(name, !shut_down_);
    }
  }

  grpc::Status Generate(grpc::ServerContext* ctx, Stream* stream) override {
    StallWatchdog::Watch watch;
    watch.ctx = ctx;
    watchdog_.Add(&watch);
    grpc::Status status = GenerateStream(ctx, stream, &watch);
    watchdog_.Remove(&watch);
    if (watch.fired) status = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, watch.reason);
    if (callbacks_.on_generate_done) callbacks_.on_generate_done(OutcomeOf(status));
    return status;
  }

  static const char* OutcomeOf(const grpc::Status& s) {
    switch (s.error_code()) {
      case grpc::StatusCode::OK:
        return "ok";
      case grpc::StatusCode::CANCELLED:
        return "cancelled";
      case grpc::StatusCode::UNAUTHENTICATED:
        return "unauthorized";
      case grpc::StatusCode::RESOURCE_EXHAUSTED:
      case grpc::StatusCode::UNAVAILABLE:
        return "rejected";
      case grpc::StatusCode::INVALID_ARGUMENT:
      case grpc::StatusCode::NOT_FOUND:
      case grpc::StatusCode::OUT_OF_RANGE:
      case grpc::StatusCode::FAILED_PRECONDITION:
        return "client_error";
      default:
        return "server_error";
    }
  }

  grpc::Status GenerateStream(grpc::ServerContext* ctx, Stream* stream,
                              StallWatchdog::Watch* watch) {
    if (grpc::Status auth = Authorize(ctx); !auth.ok()) return auth;
    // 1. The prompt: a header, then chunks until `last` or the client's half-close. Each chunk
    // is checked and tokenized as it comes.
    PromptAssembler prompt = front_door_->NewPrompt();
    prompt.SetCancelled([ctx] { return ctx->IsCancelled(); });
    v1::GenerateRequest in;
    int64_t num_messages = 0;
    while (!prompt.complete()) {
      StallWatchdog::Begin(watch, StallWatchdog::Wait::kUpload);
      const bool got = stream->Read(&in);
      StallWatchdog::End(watch);
      if (!got) {
        if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
        if (absl::Status s = prompt.EndOfStream(); !s.ok()) return ToGrpc(s);
        break;
      }
      ++num_messages;
      absl::Status s;
      switch (in.message_case()) {
        case v1::GenerateRequest::kHeader: {
          auto header = HeaderFromProto(in.header());
          s = header.ok() ? prompt.AddHeader(std::move(header).value()) : header.status();
          break;
        }
        case v1::GenerateRequest::kChunk:
          s = prompt.AddChunk(ChunkFromProto(in.mutable_chunk()));
          break;
        case v1::GenerateRequest::MESSAGE_NOT_SET:
          s = absl::InvalidArgumentError(
              absl::StrCat("stream message ", num_messages, " sets neither header nor chunk"));
          break;
      }
      in.Clear();  // a big chunk's buffer goes now, not with the next message
      if (!s.ok()) return ToGrpc(s);
    }
    AfterLastReader after_last(stream, prompt.ended_by_last());
    const int64_t last_message = prompt.num_messages();
    const grpc::Status status =
        RunRequest(ctx, stream, watch, std::move(prompt), after_last, last_message);
    return after_last.Finish(ctx, status);
  }

  static grpc::Status ExtraAfterLast(int64_t last_message) {
    return grpc::Status(
        grpc::StatusCode::INVALID_ARGUMENT,
        absl::StrCat("stream message ", last_message + 1,
                     ": sent after the prompt was complete (chunk.last was set on stream message ",
                     last_message, "); nothing may follow it but the client's half-close"));
  }

  // The prompt is complete: tokenize what is left, submit, relay the events.
  grpc::Status RunRequest(grpc::ServerContext* ctx, Stream* stream, StallWatchdog::Watch* watch,
                          PromptAssembler prompt, const AfterLastReader& after_last,
                          int64_t last_message) {
    auto request = front_door_->Prepare(std::move(prompt));
    if (!request.ok()) return ToGrpc(request.status());
    if (after_last.extra()) return ExtraAfterLast(last_message);
    const uint64_t id = request->id;
    const int64_t prompt_tokens = static_cast<int64_t>(request->prompt.size());
    const int64_t max_new_tokens = request->sampling.max_new_tokens;

    // 2. Submit; events come through the queue, this thread alone writes them.
    auto queue = std::make_shared<EventQueue>();
    struct CloseOnExit {
      EventQueue* q;
      ~CloseOnExit() { q->Close(); }
    } close_on_exit{queue.get()};
    absl::Status submitted = front_door_->Submit(
        std::move(request).value(), [queue](const RequestEvent& e) { queue->Push(e); });
    if (!submitted.ok()) return ToGrpc(submitted);

    v1::GenerateResponse out;
    RequestEvent event;
    while (true) {
      const bool got = queue->PopFor(&event, kPollInterval);
      if (after_last.extra()) {
        front_door_->Cancel(id, /*notify=*/false);
        return ExtraAfterLast(last_message);
      }
      if (!got) {
        if (ctx->IsCancelled()) {
          front_door_->Cancel(id, /*notify=*/false);
          return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
        }
        continue;
      }
      if (event.kind == RequestEvent::Kind::kError) {
        if (event.error.ok()) {
          return grpc::Status(grpc::StatusCode::INTERNAL,
                              absl::StrCat("request ", id, " failed without a reason"));
        }
        return ToGrpc(event.error);
      }
      EventToProto(event, id, prompt_tokens, max_new_tokens, &out);
      StallWatchdog::Begin(watch, StallWatchdog::Wait::kWrite);
      const bool written = stream->Write(out);
      StallWatchdog::End(watch);
      if (!written) {
        front_door_->Cancel(id, /*notify=*/false);
        return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
      }
      if (event.kind == RequestEvent::Kind::kFinished) return grpc::Status::OK;
    }
  }

  grpc::Status Cancel(grpc::ServerContext* ctx, const v1::CancelRequest* in,
                      v1::CancelResponse* out) override {
    if (grpc::Status auth = Authorize(ctx); !auth.ok()) return auth;
    out->set_found(front_door_->Cancel(in->request_id(), /*notify=*/true));
    return grpc::Status::OK;
  }

  grpc::Status Tokenize(grpc::ServerContext* ctx, const v1::TokenizeRequest* in,
                        v1::TokenizeResponse* out) override {
    if (grpc::Status auth = Authorize(ctx); !auth.ok()) return auth;
    auto kind = PromptKindFromProto(in->prompt_kind(), "prompt_kind");
    if (!kind.ok()) return ToGrpc(kind.status());
    auto chat = ChatFromProto(in->chat(), "chat");
    if (!chat.ok()) return ToGrpc(chat.status());
    auto result =
        front_door_->Tokenize(*kind, in->text(), *chat, [ctx] { return ctx->IsCancelled(); });
    if (!result.ok()) return ToGrpc(result.status());
    out->mutable_ids()->Add(result->ids.begin(), result->ids.end());
    // A text prompt is the client's own text: echoing it could double the reply.
    if (*kind == PromptKind::kChat) out->set_prompt(std::move(result->prompt));
    if (out->ByteSizeLong() > max_message_bytes_) {
      const size_t bytes = out->ByteSizeLong();
      out->Clear();
      return grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          absl::StrCat("Tokenize: the reply (", result->ids.size(), " ids",
                       *kind == PromptKind::kChat ? " and the rendered prompt" : "", ") would be ",
                       bytes, " bytes, above the ", max_message_bytes_,
                       "-byte message limit; send less text per call"));
    }
    return grpc::Status::OK;
  }

  grpc::Status GetModelInfo(grpc::ServerContext* ctx, const v1::GetModelInfoRequest*,
                            v1::ModelInfo* out) override {
    if (grpc::Status auth = Authorize(ctx); !auth.ok()) return auth;
    ModelInfoToProto(callbacks_.model_info ? callbacks_.model_info() : front_door_->ModelSummary(),
                     out);
    return grpc::Status::OK;
  }

  grpc::Status GetClusterStatus(grpc::ServerContext* ctx, const v1::GetClusterStatusRequest*,
                                v1::ClusterStatus* out) override {
    if (grpc::Status auth = Authorize(ctx); !auth.ok()) return auth;
    const ClusterStatus status =
        callbacks_.cluster_status ? callbacks_.cluster_status() : ClusterStatus{};
    ClusterStatusToProto(status, out);
    out->set_draining(status.draining || drained_.load());
    out->set_active_requests(front_door_->num_active());
    const PromptMemoryStats m = front_door_->PromptMemoryUse();
    v1::PromptMemoryStatus* pm = out->mutable_prompt_memory();
    pm->set_budget_bytes(m.budget_bytes);
    pm->set_reserved_bytes(m.reserved_bytes);
    pm->set_peak_reserved_bytes(m.peak_reserved_bytes);
    pm->set_uploads(m.uploads);
    pm->set_upload_bytes(m.upload_bytes);
    pm->set_refused(m.refused);
    return grpc::Status::OK;
  }

  grpc::Status Drain(grpc::ServerContext* ctx, const v1::DrainRequest*,
                     v1::DrainResponse*) override {
    if (grpc::Status auth = Authorize(ctx); !auth.ok()) return auth;
    if (!callbacks_.drain) {
      return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this server has no drain hook");
    }
    absl::Status s = callbacks_.drain();
    if (!s.ok()) return ToGrpc(s);
    drained_ = true;
    UpdateHealth();
    return grpc::Status::OK;
  }

 private:
  FrontDoor* front_door_;
  ServingCallbacks callbacks_;
  std::string api_key_;
  std::atomic<grpc::Server*> server_{nullptr};  // set once it is built
  std::atomic<bool> drained_{false};
  std::atomic<bool> serving_{true};
  std::atomic<bool> shut_down_{false};
  size_t max_message_bytes_;
  std::mutex health_mu_;  // orders the health updates
  StallWatchdog watchdog_;
};

}  // namespace

struct ServingServer::Impl {
  std::unique_ptr<FlotillaService> service;
  std::unique_ptr<grpc::Server> server;
  std::string address;
  int port = 0;
  std::mutex shutdown_mu;
  bool shut_down = false;
};

ServingServer::ServingServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ServingServer::~ServingServer() { Shutdown(std::chrono::system_clock::now()).IgnoreError(); }

absl::StatusOr<std::unique_ptr<ServingServer>> ServingServer::Start(const ServingOptions& options,
                                                                    FrontDoor* front_door,
                                                                    ServingCallbacks callbacks) {
  // Both are process-wide switches read when a server is built.
  grpc::EnableDefaultHealthCheckService(true);
  // gRPC's health service is not built from a generated class, so its descriptor would be
  // missing from reflection; this one is (and naming it keeps it linked in).
  (void)grpc::health::v1::HealthCheckRequest::descriptor();
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  auto impl = std::make_unique<Impl>();
  impl->service = std::make_unique<FlotillaService>(
      front_door, std::move(callbacks), options.api_key, size_t(options.max_message_bytes),
      options.upload_idle, options.write_stall);
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!options.tls_cert_file.empty() || !options.tls_key_file.empty()) {
    auto read = [](const std::string& path, std::string* out) {
      std::ifstream in(path, std::ios::binary);
      if (!in) return false;
      std::ostringstream ss;
      ss << in.rdbuf();
      *out = ss.str();
      return !out->empty();
    };
    grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
    if (!read(options.tls_cert_file, &pair.cert_chain)) {
      return absl::InvalidArgumentError(
          absl::StrCat("TLS certificate ", options.tls_cert_file, ": cannot read it"));
    }
    if (!read(options.tls_key_file, &pair.private_key)) {
      return absl::InvalidArgumentError(
          absl::StrCat("TLS key ", options.tls_key_file, ": cannot read it"));
    }
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back(std::move(pair));
    credentials = grpc::SslServerCredentials(ssl);
  }
  impl->address = options.address;
  grpc::ServerBuilder builder;
  const std::string requested = Endpoint(options.address, options.port);
  builder.AddListeningPort(requested, credentials, &impl->port);
  // gRPC sets SO_REUSEPORT by default: a second server on a busy port would silently share it.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.RegisterService(impl->service.get());
  impl->server = builder.BuildAndStart();
  if (impl->server == nullptr || impl->port == 0) {
    return absl::UnavailableError(absl::StrCat("serving: cannot listen on ", requested));
  }
  impl->service->set_server(impl->server.get());
  return std::unique_ptr<ServingServer>(new ServingServer(std::move(impl)));
}

int ServingServer::port() const { return impl_->port; }

void ServingServer::SetServing(bool serving) { impl_->service->set_serving(serving); }

std::string ServingServer::endpoint() const { return Endpoint(impl_->address, impl_->port); }

absl::Status ServingServer::Shutdown(std::chrono::system_clock::time_point deadline) {
  std::lock_guard<std::mutex> lock(impl_->shutdown_mu);
  if (impl_->shut_down) return absl::OkStatus();
  impl_->service->set_shut_down();
  impl_->server->Shutdown(deadline);
  impl_->server->Wait();
  impl_->shut_down = true;
  return absl::OkStatus();
}

}  // namespace flotilla
