// gRPC client commands: generate, chat, status (flotilla.v1.Flotilla). Text streams to stdout as
// it arrives; then come the lines "ids: ...", "finish: ...", "usage: ..." and "timing: ..."
// (chat adds "message:" and the parsed assistant message as JSON). An error status from the
// server is printed as "flotilla CMD: CODE: message" and the exit code is the gRPC code; bad
// flags exit 1. `status` has a deadline (--timeout-s, default 60); generate and chat wait as long
// as the server streams unless --timeout-s is given, because a long generation has no useful bound
// the client could know (the server bounds each request by max_new_tokens and ends the stream).
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "tokenizer/chat_encoding.h"
#include "tokenizer/chat_tokens.h"
#include "tokenizer/python_json.h"
#include "flotilla/v1/flotilla.grpc.pb.h"
#include "google/protobuf/util/json_util.h"
#include "tools/command.h"
#include "common/flags.h"
#include "sharding/capacity.h"

namespace flotilla::cli {
namespace {

void Out(absl::string_view s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

// A status the server (or the channel) gave: the exit code is its gRPC code.
int ReportRpcError(const std::string& command, const grpc::Status& s) {
  std::fprintf(stderr, "flotilla %s: %s: %s\n", command.c_str(),
               absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code())).c_str(),
               s.error_message().c_str());
  return static_cast<int>(s.error_code());
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  return std::move(ss).str();
}

// Takes every "--stop S" out of `args` (Flags keeps one value per flag).
absl::StatusOr<std::vector<std::string>> TakeStops(std::vector<std::string>* args) {
  std::vector<std::string> stops, rest;
  for (size_t i = 0; i < args->size(); ++i) {
    if ((*args)[i] == "--stop") {
      if (i + 1 >= args->size()) return absl::InvalidArgumentError("--stop needs a value");
      stops.push_back((*args)[++i]);
    } else {
      rest.push_back((*args)[i]);
    }
  }
  *args = std::move(rest);
  return stops;
}

const std::set<std::string> kSamplingFlags = {
    "--server",   "--max-new-tokens", "--temperature", "--top-p",      "--top-k",  "--seed",
    "--priority", "--timeout-s",      "--chunk-bytes", "--model-name", "--api-key",
    "--tls-ca"};
const std::set<std::string> kSamplingBooleans = {"--greedy", "--ignore-eos", "--verbose"};

struct CallOptions {
  std::string server;
  std::chrono::seconds timeout{0};  // 0: no deadline
  int64_t chunk_bytes = 1 << 20;
  bool verbose = false;
  std::string api_key;  // sent as "authorization: Bearer KEY" when set
  std::string tls_ca;   // PEM roots: connect with TLS (empty: plaintext)
};

// Plaintext, or TLS trusting the PEM roots in `ca_file`.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> Credentials(const std::string& ca_file) {
  if (ca_file.empty()) return grpc::InsecureChannelCredentials();
  std::ifstream in(ca_file, std::ios::binary);
  std::ostringstream pem;
  pem << in.rdbuf();
  if (!in || pem.str().empty()) {
    return absl::InvalidArgumentError("--tls-ca " + ca_file + ": cannot read it");
  }
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = pem.str();
  return grpc::SslCredentials(ssl);
}

absl::StatusOr<CallOptions> ParseCallOptions(const Flags& f) {
  CallOptions o;
  ASSIGN_OR_RETURN(o.server, f.Required("--server"));
  ASSIGN_OR_RETURN(const int64_t timeout, f.Int("--timeout-s", 0));
  if (timeout < 0) return absl::InvalidArgumentError("--timeout-s must be >= 0 (0: no deadline)");
  o.timeout = std::chrono::seconds(timeout);
  ASSIGN_OR_RETURN(o.chunk_bytes, f.Int("--chunk-bytes", 1 << 20));
  if (o.chunk_bytes < 4 || o.chunk_bytes > (4 << 20)) {
    return absl::InvalidArgumentError("--chunk-bytes must be in [4, 4194304]");
  }
  o.verbose = f.Has("--verbose");
  o.api_key = f.Get("--api-key");
  o.tls_ca = f.Get("--tls-ca");
  RETURN_IF_ERROR(Credentials(o.tls_ca).status());
  return o;
}

// Sampling flags -> header. Values are checked by the server, which names the field.
absl::Status FillHeader(const Flags& f, std::vector<std::string> stops, v1::GenerateHeader* h) {
  v1::SamplingParams* s = h->mutable_sampling();
  if (f.Has("--greedy") && f.Has("--temperature")) {
    return absl::InvalidArgumentError("give --greedy or --temperature, not both");
  }
  s->set_greedy(f.Has("--greedy"));
  if (f.Has("--temperature")) {
    ASSIGN_OR_RETURN(const double t, f.Double("--temperature", 1.0));
    s->set_temperature(static_cast<float>(t));
  }
  if (f.Has("--top-p")) {
    ASSIGN_OR_RETURN(const double p, f.Double("--top-p", 1.0));
    s->set_top_p(static_cast<float>(p));
  }
  ASSIGN_OR_RETURN(const int64_t top_k, f.Int("--top-k", 0));
  s->set_top_k(top_k);
  ASSIGN_OR_RETURN(const int64_t seed, f.Int("--seed", 0));
  s->set_seed(static_cast<uint64_t>(seed));
  if (f.Has("--max-new-tokens")) {
    ASSIGN_OR_RETURN(const int64_t n, f.Int("--max-new-tokens", 0));
    s->set_max_new_tokens(n);
  }
  for (auto& stop : stops) s->add_stop(std::move(stop));
  s->set_ignore_eos(f.Has("--ignore-eos"));
  ASSIGN_OR_RETURN(const int64_t priority, f.Int("--priority", 0));
  h->set_priority(static_cast<int32_t>(priority));
  h->set_model(f.Get("--model-name"));
  return absl::OkStatus();
}

struct GenerateOutcome {
  grpc::Status status;
  std::vector<int32_t> ids;
  std::string text;
  v1::Admitted admitted;
  v1::Finished finished;
  double wall_s = 0;
};

// One Generate call: the header, the prompt in chunks (text or ids), then the events; text is
// streamed to stdout as it comes.
GenerateOutcome RunGenerate(const CallOptions& call, const v1::GenerateHeader& header,
                            const std::string& text, const std::vector<int32_t>& ids) {
  GenerateOutcome result;
  const auto start = std::chrono::steady_clock::now();
  auto stub =
      v1::Flotilla::NewStub(grpc::CreateChannel(call.server, *Credentials(call.tls_ca)));
  grpc::ClientContext ctx;
  if (call.timeout.count() > 0) ctx.set_deadline(std::chrono::system_clock::now() + call.timeout);
  if (!call.api_key.empty()) ctx.AddMetadata("authorization", "Bearer " + call.api_key);
  auto stream = stub->Generate(&ctx);

  v1::GenerateRequest message;
  *message.mutable_header() = header;
  bool writing = stream->Write(message);
  if (header.prompt_kind() == v1::PROMPT_KIND_TOKEN_IDS) {
    const size_t per_chunk = static_cast<size_t>(call.chunk_bytes) / sizeof(int32_t);
    for (size_t begin = 0; writing && begin < ids.size(); begin += per_chunk) {
      const size_t end = std::min(ids.size(), begin + per_chunk);
      v1::PromptChunk* chunk = message.mutable_chunk();
      chunk->mutable_token_ids()->mutable_ids()->Assign(ids.begin() + begin, ids.begin() + end);
      chunk->set_last(end == ids.size());
      writing = stream->Write(message);
    }
  } else {
    const size_t per_chunk = static_cast<size_t>(call.chunk_bytes);
    for (size_t begin = 0; writing && begin < text.size(); begin += per_chunk) {
      const size_t end = std::min(text.size(), begin + per_chunk);
      v1::PromptChunk* chunk = message.mutable_chunk();
      chunk->set_text(text.substr(begin, end - begin));
      chunk->set_last(end == text.size());
      writing = stream->Write(message);
    }
  }
  if (writing) stream->WritesDone();  // also ends an empty prompt

  v1::GenerateResponse event;
  while (stream->Read(&event)) {
    switch (event.event_case()) {
      case v1::GenerateResponse::kAdmitted:
        result.admitted = event.admitted();
        std::fprintf(stderr,
                     "admitted: request %llu, %lld prompt tokens, max_new_tokens %lld, "
                     "%llu KV bytes, queue position %lld\n",
                     static_cast<unsigned long long>(event.admitted().request_id()),
                     static_cast<long long>(event.admitted().prompt_tokens()),
                     static_cast<long long>(event.admitted().max_new_tokens()),
                     static_cast<unsigned long long>(event.admitted().kv_bytes_reserved()),
                     static_cast<long long>(event.admitted().queue_position()));
        break;
      case v1::GenerateResponse::kProgress:
        // A prompt that takes more than one step shows its prefill as it goes.
        if (call.verbose || event.progress().prefill_done() < event.progress().prefill_total()) {
          std::fprintf(stderr, "progress: prefill %lld / %lld tokens\n",
                       static_cast<long long>(event.progress().prefill_done()),
                       static_cast<long long>(event.progress().prefill_total()));
        }
        break;
      case v1::GenerateResponse::kToken:
        result.ids.insert(result.ids.end(), event.token().ids().begin(), event.token().ids().end());
        result.text += event.token().text();
        Out(event.token().text());
        break;
      case v1::GenerateResponse::kFinished:
        result.finished = event.finished();
        break;
      case v1::GenerateResponse::EVENT_NOT_SET:
        break;
    }
  }
  result.status = stream->Finish();
  result.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

std::string FinishName(v1::FinishReason r) {
  switch (r) {
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_STOP_STRING:
      return "stop_string";
    case v1::FINISH_REASON_CANCELLED:
      return "cancelled";
    case v1::FINISH_REASON_ERROR:
      return "error";
    default:
      return "unspecified";
  }
}

void PrintSummary(const GenerateOutcome& r) {
  const v1::Usage& u = r.finished.usage();
  Out(absl::StrCat("\nids: ", absl::StrJoin(r.ids, ","), "\n"));
  Out(absl::StrCat("finish: ", FinishName(r.finished.reason()), "\n"));
  Out(absl::StrCat("usage: prompt_tokens=", u.prompt_tokens(),
                   " completion_tokens=", u.completion_tokens(), "\n"));
  Out(absl::StrFormat("timing: ttft_s=%.6f tpot_s=%.6f wall_s=%.6f\n", u.time_to_first_token_s(),
                      u.time_per_output_token_s(), r.wall_s));
}

// ---- generate ----

int GenerateMain(const std::vector<std::string>& args_in) {
  std::vector<std::string> args = args_in;
  auto stops = TakeStops(&args);
  if (!stops.ok()) return Fail("generate", stops.status());
  std::set<std::string> with_value = kSamplingFlags;
  with_value.insert({"--prompt", "--prompt-file", "--prompt-ids", "--prompt-ids-file"});
  std::set<std::string> booleans = kSamplingBooleans;
  booleans.insert("--skip-special-tokens");
  auto f = Flags::Parse(args, with_value, booleans);
  if (!f.ok()) return Fail("generate", f.status());
  auto call = ParseCallOptions(*f);
  if (!call.ok()) return Fail("generate", call.status());
  const int sources = f->Has("--prompt") + f->Has("--prompt-file") + f->Has("--prompt-ids") +
                      f->Has("--prompt-ids-file");
  if (sources != 1) {
    return Fail("generate", absl::InvalidArgumentError(
                                "give exactly one of --prompt TEXT, --prompt-file FILE, "
                                "--prompt-ids 1,2,3 or --prompt-ids-file FILE"));
  }
  v1::GenerateHeader header;
  if (absl::Status s = FillHeader(*f, std::move(stops).value(), &header); !s.ok()) {
    return Fail("generate", s);
  }
  std::string text;
  std::vector<int32_t> ids;
  header.mutable_sampling()->set_skip_special_tokens(f->Has("--skip-special-tokens"));
  if (f->Has("--prompt-ids") || f->Has("--prompt-ids-file")) {
    header.set_prompt_kind(v1::PROMPT_KIND_TOKEN_IDS);
    auto parsed = f->Has("--prompt-ids")
                      ? ParseIdList("--prompt-ids", f->Get("--prompt-ids"))
                      : ReadIdFile("--prompt-ids-file", f->Get("--prompt-ids-file"));
    if (!parsed.ok()) return Fail("generate", parsed.status());
    ids = std::move(parsed).value();
  } else {
    header.set_prompt_kind(v1::PROMPT_KIND_TEXT);
    if (f->Has("--prompt")) {
      text = f->Get("--prompt");
    } else {
      auto read = ReadTextFile(f->Get("--prompt-file"));
      if (!read.ok()) return Fail("generate", read.status());
      text = std::move(read).value();
    }
  }
  const GenerateOutcome r = RunGenerate(*call, header, text, ids);
  if (!r.status.ok()) {
    if (!r.text.empty()) Out("\n");
    return ReportRpcError("generate", r.status);
  }
  PrintSummary(r);
  return 0;
}

// ---- chat ----

int ChatMain(const std::vector<std::string>& args_in) {
  std::vector<std::string> args = args_in;
  auto stops = TakeStops(&args);
  if (!stops.ok()) return Fail("chat", stops.status());
  std::set<std::string> with_value = kSamplingFlags;
  with_value.insert({"--messages", "--tools", "--reasoning-effort"});
  std::set<std::string> booleans = kSamplingBooleans;
  booleans.insert({"--thinking", "--keep-thinking"});
  auto f = Flags::Parse(args, with_value, booleans);
  if (!f.ok()) return Fail("chat", f.status());
  auto call = ParseCallOptions(*f);
  if (!call.ok()) return Fail("chat", call.status());
  auto path = f->Required("--messages");
  if (!path.ok()) return Fail("chat", path.status());
  auto file = ReadTextFile(*path);
  if (!file.ok()) return Fail("chat", file.status());
  // A list of messages, or {"messages": [...], "tools": [...]} as encode-chat takes.
  std::optional<nlohmann::ordered_json> doc = ParseJsonKeepingNumbers(*file);
  if (!doc.has_value()) {
    return Fail("chat", absl::InvalidArgumentError(absl::StrCat(*path, " is not valid JSON")));
  }
  nlohmann::ordered_json messages = *doc;
  nlohmann::ordered_json tools;
  if (doc->is_object()) {
    if (!doc->contains("messages")) {
      return Fail("chat", absl::InvalidArgumentError(
                              absl::StrCat(*path, ": an object needs \"messages\"")));
    }
    if (doc->contains("context")) {
      return Fail("chat", absl::InvalidArgumentError(
                              absl::StrCat(*path, ": \"context\" is not supported by the server")));
    }
    messages = (*doc)["messages"];
    if (doc->contains("tools")) tools = (*doc)["tools"];
  }
  if (f->Has("--tools")) {
    auto tools_text = ReadTextFile(f->Get("--tools"));
    if (!tools_text.ok()) return Fail("chat", tools_text.status());
    auto parsed = ParseJsonKeepingNumbers(*tools_text);
    if (!parsed.has_value()) {
      return Fail("chat", absl::InvalidArgumentError(
                              absl::StrCat(f->Get("--tools"), " is not valid JSON")));
    }
    tools = *parsed;
  }

  v1::GenerateHeader header;
  header.set_prompt_kind(v1::PROMPT_KIND_CHAT);
  if (absl::Status s = FillHeader(*f, std::move(stops).value(), &header); !s.ok()) {
    return Fail("chat", s);
  }
  const bool thinking = f->Has("--thinking");
  v1::ChatOptions* chat = header.mutable_chat();
  chat->set_thinking(thinking);
  chat->set_keep_thinking(f->Has("--keep-thinking"));
  if (!tools.is_null()) chat->set_tools_json(PythonJson(tools));
  if (f->Has("--reasoning-effort")) {
    const std::string effort = f->Get("--reasoning-effort");
    if (effort == "high") {
      chat->set_reasoning_effort(v1::REASONING_EFFORT_HIGH);
    } else if (effort == "max") {
      chat->set_reasoning_effort(v1::REASONING_EFFORT_MAX);
    } else {
      return Fail("chat", absl::InvalidArgumentError(absl::StrCat("--reasoning-effort: '", effort,
                                                                  "' (expected high or max)")));
    }
  }

  const GenerateOutcome r = RunGenerate(*call, header, PythonJson(messages), {});
  if (!r.status.ok()) {
    if (!r.text.empty()) Out("\n");
    return ReportRpcError("chat", r.status);
  }
  PrintSummary(r);
  // The parser wants the completion through EOS, special tokens kept.
  std::string completion = r.text;
  const std::string eos(chat_tokens::kEos);
  if (r.finished.reason() == v1::FINISH_REASON_STOP &&
      (completion.size() < eos.size() ||
       completion.compare(completion.size() - eos.size(), eos.size(), eos) != 0)) {
    completion += eos;
  }
  auto parsed =
      ParseCompletion(completion, thinking ? ThinkingMode::kThinking : ThinkingMode::kChat);
  if (!parsed.ok()) {
    std::fprintf(stderr, "flotilla chat: the completion does not parse as a message: %s\n",
                 std::string(parsed.status().message()).c_str());
    nlohmann::ordered_json raw = {{"role", "assistant"}, {"content", r.text}};
    Out(absl::StrCat("message: ", raw.dump(2), "\n"));
    return 0;
  }
  Out(absl::StrCat("message: ", ParsedCompletionToJson(*parsed).dump(2), "\n"));
  return 0;
}

// ---- status ----

int StatusMain(const std::vector<std::string>& args) {
  auto f = Flags::Parse(args, {"--server", "--timeout-s", "--api-key", "--tls-ca"}, {"--json"});
  if (!f.ok()) return Fail("status", f.status());
  auto server = f->Required("--server");
  if (!server.ok()) return Fail("status", server.status());
  auto timeout = f->Int("--timeout-s", 60);
  if (!timeout.ok()) return Fail("status", timeout.status());
  if (*timeout < 1) return Fail("status", absl::InvalidArgumentError("--timeout-s must be >= 1"));
  auto credentials = Credentials(f->Get("--tls-ca"));
  if (!credentials.ok()) return Fail("status", credentials.status());
  auto stub =
      v1::Flotilla::NewStub(grpc::CreateChannel(*server, *credentials));
  const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(*timeout);

  v1::ModelInfo model;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline);
    if (f->Has("--api-key")) ctx.AddMetadata("authorization", "Bearer " + f->Get("--api-key"));
    grpc::Status s = stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &model);
    if (!s.ok()) return ReportRpcError("status", s);
  }
  v1::ClusterStatus cluster;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline);
    if (f->Has("--api-key")) ctx.AddMetadata("authorization", "Bearer " + f->Get("--api-key"));
    grpc::Status s = stub->GetClusterStatus(&ctx, v1::GetClusterStatusRequest(), &cluster);
    if (!s.ok()) return ReportRpcError("status", s);
  }

  if (f->Has("--json")) {
    google::protobuf::util::JsonPrintOptions options;
    options.add_whitespace = true;
    options.preserve_proto_field_names = true;
    options.always_print_primitive_fields = true;
    std::string model_json, cluster_json;
    (void)google::protobuf::util::MessageToJsonString(model, &model_json, options);
    (void)google::protobuf::util::MessageToJsonString(cluster, &cluster_json, options);
    Out(absl::StrCat("{\"model\": ", model_json, ", \"cluster\": ", cluster_json, "}\n"));
    return 0;
  }

  Out(absl::StrCat("model: ", model.name().empty() ? "(unnamed)" : model.name(), " (",
                   model.model_type(), ", ", absl::StrJoin(model.architectures(), ","), ")\n"));
  Out(absl::StrCat("  vocab ", model.vocab_size(), " (tokenizer ", model.tokenizer_vocab_size(),
                   "), max context ", model.max_context(), " tokens, ", model.num_hidden_layers(),
                   " layers, hidden ", model.hidden_size(), ", ", model.num_attention_heads(),
                   " heads, ", model.n_routed_experts(), " experts (", model.num_experts_per_tok(),
                   " per token), ", model.quantized() ? "quantized" : "bf16",
                   model.expert_dtype().empty() ? "" : ", experts " + model.expert_dtype(),
                   ", bos ", model.bos_token_id(), ", eos ", model.eos_token_id(), "\n"));
  Out(absl::StrCat("layout: ", model.layout().num_workers(), " workers, tp ", model.layout().tp(),
                   ", dp ", model.layout().dp(), ", ep ", model.layout().ep(), "\n"));
  const v1::SchedulerStatus& s = cluster.scheduler();
  Out(absl::StrCat("scheduler: running ", s.running(), ", queued ", s.queued(), ", steps ",
                   s.steps(), ", tokens generated ", s.tokens_generated(), ", active requests ",
                   cluster.active_requests(), cluster.draining() ? ", draining" : "", "\n"));
  for (int i = 0; i < s.groups_size(); ++i) {
    const v1::KvGroupStatus& g = s.groups(i);
    Out(absl::StrCat("  dp group ", i, ": KV pages ", g.pages_used(), "/", g.pages_total(), " (",
                     g.page_bytes(), " bytes each), ", g.sequences(), " sequences\n"));
  }
  const v1::PromptMemoryStatus& pm = cluster.prompt_memory();
  Out(absl::StrCat("prompts: ", pm.uploads(), " uploads in progress (", pm.upload_bytes(),
                   " bytes received), prompt memory ", pm.reserved_bytes(), "/", pm.budget_bytes(),
                   " bytes (peak ", pm.peak_reserved_bytes(), "), ", pm.refused(),
                   " refused for want of it\n"));
  Out(absl::StrCat("workers: ", cluster.workers_size(), "\n"));
  for (const v1::WorkerReport& w : cluster.workers()) {
    std::string line = absl::StrCat("  rank ", w.world_rank(), " ", w.address(), ": ");
    if (!w.error().empty()) {
      absl::StrAppend(&line, "unreachable: ", w.error());
    } else {
      // WORKER_STATE_READY -> ready
      std::string state = absl::AsciiStrToLower(v1::WorkerState_Name(w.health().state()));
      if (absl::StartsWith(state, "worker_state_")) state = state.substr(13);
      absl::StrAppend(&line, state,
                      w.health().message().empty() ? "" : " (" + w.health().message() + ")",
                      ", loaded ", w.load().bytes_loaded(), "/", w.load().bytes_total(), " bytes",
                      w.load().error().empty() ? "" : " (load error: " + w.load().error() + ")",
                      ", dp group ", w.stats().dp_group(), ", tp rank ", w.stats().tp_rank(),
                      ", steps ", w.stats().steps(), ", KV pages ", w.stats().kv_pages_used(), "/",
                      w.stats().kv_pages_total(), " (",
                      w.stats().kv_pages_total() - w.stats().kv_pages_used(), " free, pool ",
                      FormatBytes(w.stats().kv_pool_bytes()), "), device ", w.stats().device());
    }
    Out(line + "\n");
  }
  return 0;
}

}  // namespace

#define FLOTILLA_SAMPLING_USAGE                                                              \
  "  sampling: [--max-new-tokens N] [--greedy | --temperature T [--top-p P] [--top-k K]\n"     \
  "            [--seed S]] [--stop S]... [--ignore-eos] [--priority P] [--model-name NAME]\n"  \
  "  --temperature 0 means greedy; the server's defaults are in docs/serving-api.md.\n"        \
  "  --timeout-s S: give up after S seconds (default 0: wait as long as the server streams).\n" \
  "  --chunk-bytes B: prompt bytes per stream message (default 1048576, at most 4194304).\n"   \
  "  --verbose: print every progress event (a prompt that takes more than one step always\n"   \
  "  shows its prefill progress on stderr).\n"                                                 \
  "  Output: the text as it arrives, then the lines ids:, finish:, usage:, timing:. An error\n" \
  "  from the server prints 'flotilla CMD: CODE: message' and exits with the gRPC code (3\n"    \
  "  INVALID_ARGUMENT, 8 RESOURCE_EXHAUSTED, 14 UNAVAILABLE); a bad flag exits 1.\n"

FLOTILLA_COMMAND("generate", "stream a completion from a server",
                 "usage: flotilla generate --server HOST:PORT (--prompt TEXT | --prompt-file FILE |\n"
                 "           --prompt-ids 1,2,3 | --prompt-ids-file FILE) [sampling flags]\n"
                 "           [--skip-special-tokens] [--timeout-s S] [--chunk-bytes B] [--verbose]\n"
                 "           [--api-key K] [--tls-ca ROOTS.pem]\n"
                 "  --prompt-ids-file holds token ids separated by commas or white space (for\n"
                 "  prompts too long for a command line). --skip-special-tokens leaves special\n"
                 "  tokens out of the streamed text (their ids stay in ids:).\n"
                 FLOTILLA_SAMPLING_USAGE,
                 GenerateMain);
FLOTILLA_COMMAND("chat", "chat with a server (DeepSeek-V4 chat format)",
                 "usage: flotilla chat --server HOST:PORT --messages FILE.json [--thinking]\n"
                 "           [--keep-thinking] [--reasoning-effort high|max] [--tools FILE.json]\n"
                 "           [sampling flags] [--timeout-s S] [--chunk-bytes B] [--verbose]\n"
                 "  FILE.json holds a list of messages, or {\"messages\": [...], \"tools\": [...]}.\n"
                 "  After the summary comes message: and the completion parsed back into an\n"
                 "  assistant message, as JSON.\n"
                 FLOTILLA_SAMPLING_USAGE,
                 ChatMain);
FLOTILLA_COMMAND("status", "model, scheduler and workers of a server",
                 "usage: flotilla status --server HOST:PORT [--json] [--timeout-s S] [--api-key K]\n"
                 "           [--tls-ca ROOTS.pem]\n"
                 "  Prints the model summary, the layout, the scheduler (running, queued, KV pages\n"
                 "  per DP group) and one line per worker; --json prints both replies as JSON.\n"
                 "  --timeout-s: deadline of each call (default 60).\n",
                 StatusMain);

}  // namespace flotilla::cli
