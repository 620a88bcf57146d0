#include "coordinator/http_server.h"

#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <list>
#include <mutex>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "coordinator/openai_api.h"

namespace flotilla {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using ojson = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kPollInterval = std::chrono::milliseconds(50);

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch())
      .count();
}

// Set by each connection's thread: when its current write began (0: not writing). The write
// watchdog reads it.
thread_local std::atomic<int64_t>* t_write_since = nullptr;

// Marks a write in progress on this thread's connection.
struct WriteClock {
  WriteClock() {
    if (t_write_since != nullptr) t_write_since->store(NowMs());
  }
  ~WriteClock() {
    if (t_write_since != nullptr) t_write_since->store(0);
  }
};

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Events of one API request's choices, from the engine thread to the connection's thread.
class ChoiceQueue {
 public:
  void Push(int choice, const RequestEvent& e) {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    events_.emplace_back(choice, e);
    cv_.notify_one();
  }
  bool PopFor(std::pair<int, RequestEvent>* out, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return !events_.empty(); })) return false;
    *out = std::move(events_.front());
    events_.pop_front();
    return true;
  }
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    events_.clear();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<int, RequestEvent>> events_;
  bool closed_ = false;
};

// Whether the peer closed its side (or the socket failed). Never blocks.
bool PeerGone(int fd) {
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  if (::poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
  if (p.revents & POLLIN) {
    char c;
    const ssize_t n = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0;
  }
  return false;
}

// Compares without stopping at the first difference (the key's length is not a secret).
bool ConstantTimeEqual(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

// The endpoint label of a request path in the metrics.
std::string PathLabel(const std::string& path) {
  if (path == "/v1/chat/completions") return "chat_completions";
  if (path == "/v1/completions") return "completions";
  if (path == "/v1/models" || path.rfind("/v1/models/", 0) == 0) return "models";
  if (path == "/metrics") return "metrics";
  return "other";
}

const char* EndpointLabel(ApiEndpoint e) {
  return e == ApiEndpoint::kChatCompletions ? "chat_completions" : "completions";
}

std::string OutcomeFor(int http_status) {
  if (http_status < 400) return "ok";
  if (http_status == 429 || http_status == 503) return "rejected";
  if (http_status < 500) return "client_error";
  return "server_error";
}

// One choice of a running API request.
struct Choice {
  uint64_t id = 0;
  OutputParser parser{ThinkingMode::kChat, false};
  std::string content, reasoning;  // non-streamed answers collect here
  std::vector<ParsedToolCall> tool_calls;
  int64_t completion_tokens = 0, reasoning_tokens = 0;
  FinishReason reason = FinishReason::kStop;
  bool finished = false;
  bool started = false;  // streamed: the role chunk went out
  Clock::time_point last_token;
  std::vector<TokenLogprob> logprobs;  // not yet sent (streamed) / all (whole)
  size_t text_offset = 0;              // completions: where the next token's text starts
};

}  // namespace

struct HttpServer::Impl {
  HttpOptions options;
  FrontDoor* front_door = nullptr;
  const Tokenizer* tokenizer = nullptr;
  ServingMetrics* metrics = nullptr;
  HttpCallbacks callbacks;

  net::io_context io;
  std::unique_ptr<tcp::acceptor> acceptor;
  std::unique_ptr<net::ssl::context> tls;
  int port = 0;
  std::thread accept_thread;
  std::atomic<bool> stopping{false};

  std::mutex mu;  // guards the connection list
  struct Connection {
    std::shared_ptr<tcp::socket> socket;
    std::thread thread;
    std::atomic<bool> done{false};
    std::atomic<int64_t> write_since_ms{0};  // see WriteClock
    bool stalled = false;                    // the watchdog closed it
  };
  std::thread watchdog_thread;
  void WatchWrites();  // closes connections whose write is stalled, until `stopping`
  std::list<Connection> connections;
  bool shut_down = false;

  void AcceptLoop();
  void Reap();  // joins finished connection threads (mu held)
  template <class Stream>
  void Serve(Stream& stream, tcp::socket& socket);
  template <class Stream>
  bool Handle(Stream& stream, tcp::socket& socket, http::request<http::string_body>& req);
  template <class Stream>
  bool Generate(Stream& stream, tcp::socket& socket, const http::request<http::string_body>& req,
                ApiEndpoint endpoint, Clock::time_point arrival);
};

namespace {

template <class Stream>
bool WriteResponse(Stream& stream, unsigned version, bool keep_alive, int status,
                   const std::string& content_type, std::string body, int retry_after_s = 0) {
  http::response<http::string_body> res{static_cast<http::status>(status), version};
  res.set(http::field::server, "flotilla");
  res.set(http::field::content_type, content_type);
  if (retry_after_s > 0) res.set(http::field::retry_after, std::to_string(retry_after_s));
  if (status == 401) res.set(http::field::www_authenticate, "Bearer");
  res.keep_alive(keep_alive);
  res.body() = std::move(body);
  res.prepare_payload();
  beast::error_code ec;
  WriteClock clock;
  http::write(stream, res, ec);
  return !ec;
}

template <class Stream>
bool WriteError(Stream& stream, unsigned version, bool keep_alive, const absl::Status& status,
                int retry_after_s) {
  const int code = HttpStatusFor(status);
  return WriteResponse(stream, version, keep_alive, code, "application/json",
                       ErrorBody(status).dump(-1, ' ', false, ojson::error_handler_t::replace),
                       code == 429 || code == 503 ? retry_after_s : 0);
}

// Server-Sent Events over a chunked response.
template <class Stream>
class SseWriter {
 public:
  SseWriter(Stream& stream, unsigned version) : stream_(stream), version_(version) {}
  bool Begin() {
    http::response<http::empty_body> res{http::status::ok, version_};
    res.set(http::field::server, "flotilla");
    res.set(http::field::content_type, "text/event-stream");
    res.set(http::field::cache_control, "no-cache");
    res.chunked(true);
    res.keep_alive(true);
    http::response_serializer<http::empty_body> sr{res};
    beast::error_code ec;
    WriteClock clock;
    http::write_header(stream_, sr, ec);
    return !ec;
  }
  bool Data(const std::string& payload) {
    const std::string event = absl::StrCat("data: ", payload, "\n\n");
    beast::error_code ec;
    WriteClock clock;
    net::write(stream_, http::make_chunk(net::buffer(event)), ec);
    return !ec;
  }
  bool End() {
    if (!Data("[DONE]")) return false;
    beast::error_code ec;
    WriteClock clock;
    net::write(stream_, http::make_chunk_last(), ec);
    return !ec;
  }

 private:
  Stream& stream_;
  unsigned version_;
};

std::string Dump(const ojson& j) { return j.dump(-1, ' ', false, ojson::error_handler_t::replace); }

std::string TokenText(const Tokenizer& tokenizer, int32_t id) {
  auto text = tokenizer.Decode(std::vector<int32_t>{id});
  return text.ok() ? *text : std::string();
}

ojson Bytes(const std::string& s) {
  ojson out = ojson::array();
  for (const char c : s) out.push_back(static_cast<int>(static_cast<unsigned char>(c)));
  return out;
}

// Chat: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}.
ojson ChatLogprobs(const Tokenizer& tokenizer, const std::vector<TokenLogprob>& lps) {
  ojson content = ojson::array();
  for (const TokenLogprob& lp : lps) {
    const std::string text = TokenText(tokenizer, lp.token_id);
    ojson top = ojson::array();
    for (const auto& [id, v] : lp.top) {
      const std::string t = TokenText(tokenizer, id);
      top.push_back({{"token", t}, {"logprob", v}, {"bytes", Bytes(t)}});
    }
    content.push_back({{"token", text},
                       {"logprob", lp.logprob},
                       {"bytes", Bytes(text)},
                       {"top_logprobs", std::move(top)}});
  }
  return {{"content", std::move(content)}};
}

// Completions: {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}.
ojson CompletionLogprobs(const Tokenizer& tokenizer, const std::vector<TokenLogprob>& lps,
                         size_t* text_offset) {
  ojson tokens = ojson::array(), values = ojson::array(), tops = ojson::array(),
        offsets = ojson::array();
  for (const TokenLogprob& lp : lps) {
    const std::string text = TokenText(tokenizer, lp.token_id);
    tokens.push_back(text);
    values.push_back(lp.logprob);
    ojson top = ojson::object();
    for (const auto& [id, v] : lp.top) top[TokenText(tokenizer, id)] = v;
    tops.push_back(std::move(top));
    offsets.push_back(*text_offset);
    *text_offset += text.size();
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(values)},
          {"top_logprobs", std::move(tops)},
          {"text_offset", std::move(offsets)}};
}

}  // namespace

void HttpServer::Impl::Reap() {
  for (auto it = connections.begin(); it != connections.end();) {
    if (it->done.load()) {
      it->thread.join();
      it = connections.erase(it);
    } else {
      ++it;
    }
  }
}

void HttpServer::Impl::WatchWrites() {
  while (!stopping.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const int64_t now = NowMs();
    std::lock_guard<std::mutex> lock(mu);
    for (Connection& c : connections) {
      const int64_t since = c.write_since_ms.load();
      if (since == 0 || c.stalled || now - since < options.write_stall.count()) continue;
      // The blocked write fails; the connection's thread cancels its requests and ends.
      c.stalled = true;
      ::shutdown(c.socket->native_handle(), SHUT_RDWR);
    }
  }
}

void HttpServer::Impl::AcceptLoop() {
  while (!stopping.load()) {
    auto socket = std::make_shared<tcp::socket>(io);
    beast::error_code ec;
    acceptor->accept(*socket, ec);
    if (stopping.load()) break;
    if (ec) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    std::lock_guard<std::mutex> lock(mu);
    Reap();
    if (static_cast<int>(connections.size()) >= options.max_connections) {
      // Over the limit: answer 503 on this thread and close.
      beast::tcp_stream s(std::move(*socket));
      WriteError(s, 11, false,
                 absl::UnavailableError(
                     absl::StrCat("too many connections (at most ", options.max_connections, ")")),
                 options.retry_after_s);
      continue;
    }
    connections.emplace_back();
    Connection& c = connections.back();
    c.socket = socket;
    c.thread = std::thread([this, &c] {
      t_write_since = &c.write_since_ms;
      if (tls) {
        beast::ssl_stream<tcp::socket&> stream(*c.socket, *tls);
        beast::error_code hec;
        stream.handshake(net::ssl::stream_base::server, hec);
        if (!hec) {
          Serve(stream, *c.socket);
          beast::error_code sec;
          stream.shutdown(sec);
        }
      } else {
        Serve(*c.socket, *c.socket);
      }
      beast::error_code cec;
      c.socket->shutdown(tcp::socket::shutdown_both, cec);
      c.done.store(true);
    });
  }
}

template <class Stream>
void HttpServer::Impl::Serve(Stream& stream, tcp::socket& socket) {
  beast::flat_buffer buffer;
  while (!stopping.load()) {
    http::request_parser<http::string_body> parser;
    parser.body_limit(options.max_body_bytes);
    parser.header_limit(64 * 1024);
    beast::error_code ec;
    // The body is held in memory: its declared length is reserved from the prompt budget
    // before it is read (the budget's wait, then 429 naming it).
    PromptMemory::Lease body_memory = front_door->NewMemoryLease();
    http::read_header(stream, buffer, parser, ec);
    if (!ec && parser.content_length().has_value() &&
        *parser.content_length() <= options.max_body_bytes) {
      const absl::Status reserved = body_memory.Resize(
          static_cast<int64_t>(*parser.content_length()),
          [&socket] { return PeerGone(socket.native_handle()); }, "the HTTP request body");
      if (!reserved.ok()) {
        if (reserved.code() == absl::StatusCode::kCancelled) return;
        WriteError(stream, parser.get().version(), false, reserved, options.retry_after_s);
        // The body is read and dropped (closing with it unread would reset the connection
        // before the client reads the answer); then the connection closes.
        std::vector<char> scratch(64 << 10);
        size_t left =
            *parser.content_length() - std::min(buffer.size(), size_t(*parser.content_length()));
        while (left > 0) {
          const size_t n =
              stream.read_some(net::buffer(scratch.data(), std::min(left, scratch.size())), ec);
          if (ec) break;
          left -= n;
        }
        return;
      }
    }
    if (!ec) http::read(stream, buffer, parser, ec);
    if (ec == http::error::body_limit) {
      WriteResponse(stream, 11, false, 413, "application/json",
                    Dump(ErrorBody(absl::InvalidArgumentError(
                        absl::StrCat("body: larger than ", options.max_body_bytes, " bytes")))));
      return;
    }
    if (ec) {
      if (ec != http::error::end_of_stream && ec != net::error::eof &&
          ec != net::error::connection_reset && ec != net::error::operation_aborted &&
          parser.got_some()) {
        WriteResponse(stream, 11, false, 400, "application/json",
                      Dump(ErrorBody(absl::InvalidArgumentError(
                          absl::StrCat("request: malformed HTTP (", ec.message(), ")")))));
      }
      return;
    }
    http::request<http::string_body> req = parser.release();
    const bool keep_alive = req.keep_alive();
    if (!Handle(stream, socket, req)) return;
    if (!keep_alive) return;  // "Connection: close" (or HTTP/1.0): the answer was the last
  }
}

template <class Stream>
bool HttpServer::Impl::Handle(Stream& stream, tcp::socket& socket,
                              http::request<http::string_body>& req) {
  const Clock::time_point arrival = Clock::now();
  const unsigned version = req.version();
  const bool keep = req.keep_alive();
  std::string target(req.target());
  if (const size_t q = target.find('?'); q != std::string::npos) target.resize(q);
  const bool get = req.method() == http::verb::get;
  const bool post = req.method() == http::verb::post;

  if (target == "/health") {
    if (!get) {
      return WriteResponse(
          stream, version, keep, 405, "application/json",
          Dump(ErrorBody(absl::InvalidArgumentError("method: /health takes GET"))));
    }
    if (callbacks.draining && callbacks.draining()) {
      return WriteResponse(stream, version, keep, 503, "application/json",
                           "{\"status\":\"draining\"}", options.retry_after_s);
    }
    return WriteResponse(stream, version, keep, 200, "application/json", "{\"status\":\"ok\"}");
  }

  if (!options.api_key.empty()) {
    const std::string auth(req[http::field::authorization]);
    const std::string prefix = "Bearer ";
    const bool ok = absl::StartsWith(auth, prefix) &&
                    ConstantTimeEqual(auth.substr(prefix.size()), options.api_key);
    if (!ok) {
      metrics->CountRequest(PathLabel(target), "unauthorized");
      return WriteError(stream, version, keep,
                        absl::UnauthenticatedError(
                            auth.empty() ? "authorization: missing; send \"Authorization: Bearer "
                                           "<key>\""
                                         : "authorization: the API key is not valid"),
                        0);
    }
  }

  if (target == "/v1/chat/completions" || target == "/v1/completions") {
    if (!post) {
      return WriteResponse(stream, version, keep, 405, "application/json",
                           Dump(ErrorBody(absl::InvalidArgumentError(
                               absl::StrCat("method: ", target, " takes POST")))));
    }
    return Generate(
        stream, socket, req,
        target == "/v1/completions" ? ApiEndpoint::kCompletions : ApiEndpoint::kChatCompletions,
        arrival);
  }
  if (get && target == "/metrics") {
    const SchedulerStats stats =
        callbacks.scheduler_stats ? callbacks.scheduler_stats() : SchedulerStats{};
    return WriteResponse(stream, version, keep, 200, "text/plain; version=0.0.4",
                         metrics->Render(stats));
  }
  const std::string model = front_door->options().model_name;
  const ojson model_json = {{"id", model},
                            {"object", "model"},
                            {"created", 0},
                            {"owned_by", "flotilla"},
                            {"max_model_len", front_door->max_context()}};
  if (get && target == "/v1/models") {
    return WriteResponse(stream, version, keep, 200, "application/json",
                         Dump({{"object", "list"}, {"data", ojson::array({model_json})}}));
  }
  if (get && target == "/v1/models/" + model) {
    return WriteResponse(stream, version, keep, 200, "application/json", Dump(model_json));
  }
  if (get && absl::StartsWith(target, "/v1/models/")) {
    return WriteError(stream, version, keep,
                      absl::NotFoundError(absl::StrCat("model: '", target.substr(11),
                                                       "' does not exist here (this server "
                                                       "serves '",
                                                       model, "')")),
                      0);
  }
  return WriteError(stream, version, keep,
                    absl::NotFoundError(absl::StrCat(
                        "path: no endpoint ", std::string(req.method_string()), " ", target)),
                    0);
}

template <class Stream>
bool HttpServer::Impl::Generate(Stream& stream, tcp::socket& socket,
                                const http::request<http::string_body>& req, ApiEndpoint endpoint,
                                Clock::time_point arrival) {
  const unsigned version = req.version();
  const bool keep = req.keep_alive();
  const std::string label = EndpointLabel(endpoint);
  auto fail = [&](const absl::Status& status) {
    metrics->CountRequest(label, OutcomeFor(HttpStatusFor(status)));
    return WriteError(stream, version, keep, status, options.retry_after_s);
  };

  const ojson body = ojson::parse(req.body(), nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return fail(absl::InvalidArgumentError("body: not valid JSON"));
  const std::string& model = front_door->options().model_name;
  absl::StatusOr<ApiRequest> parsed = endpoint == ApiEndpoint::kChatCompletions
                                          ? ParseChatRequest(body, model)
                                          : ParseCompletionRequest(body, model);
  if (!parsed.ok()) return fail(parsed.status());
  ApiRequest& api = *parsed;

  // One front-door request per choice; choice i samples with seed + i.
  std::vector<GenerateRequest> requests;
  for (int i = 0; i < api.n; ++i) {
    PromptAssembler prompt = front_door->NewPrompt();
    prompt.SetCancelled([&socket] { return PeerGone(socket.native_handle()); });
    GenerateHeader header = api.header;
    header.sampling.seed += static_cast<uint64_t>(i);
    absl::Status s = prompt.AddHeader(std::move(header));
    const size_t piece = front_door->options().max_chunk_bytes;
    if (api.header.prompt_kind == PromptKind::kTokenIds) {
      for (size_t at = 0; s.ok() && at < api.prompt_ids.size(); at += piece / 4) {
        PromptChunk chunk;
        chunk.kind = PromptChunk::Kind::kTokenIds;
        chunk.token_ids.assign(
            api.prompt_ids.begin() + at,
            api.prompt_ids.begin() + std::min(api.prompt_ids.size(), at + piece / 4));
        s = prompt.AddChunk(std::move(chunk));
      }
    } else {
      for (size_t at = 0; s.ok() && at < api.prompt_text.size(); at += piece) {
        PromptChunk chunk;
        chunk.kind = PromptChunk::Kind::kText;
        chunk.text = api.prompt_text.substr(at, piece);
        s = prompt.AddChunk(std::move(chunk));
      }
    }
    if (s.ok()) s = prompt.EndOfStream();
    if (!s.ok()) return fail(s);
    auto request = front_door->Prepare(std::move(prompt));
    if (!request.ok()) return fail(request.status());
    requests.push_back(std::move(request).value());
  }
  const int64_t prompt_tokens = static_cast<int64_t>(requests[0].prompt.size());
  const uint64_t first_id = requests[0].id;
  std::string echo_text;
  if (api.echo) {
    if (api.header.prompt_kind == PromptKind::kText) {
      echo_text = api.prompt_text;
    } else {
      auto text = tokenizer->Decode(api.prompt_ids);
      if (!text.ok()) return fail(absl::InvalidArgumentError(text.status().message()));
      echo_text = *text;
    }
  }

  std::vector<Choice> choices(api.n);
  auto queue = std::make_shared<ChoiceQueue>();
  struct CloseOnExit {
    ChoiceQueue* q;
    ~CloseOnExit() { q->Close(); }
  } close_on_exit{queue.get()};
  auto cancel_all = [&](bool only_unfinished) {
    for (const Choice& c : choices) {
      if (c.id != 0 && !(only_unfinished && c.finished)) front_door->Cancel(c.id, false);
    }
  };
  for (int i = 0; i < api.n; ++i) {
    Choice& c = choices[i];
    c.parser = OutputParser(api.mode, api.parse_tool_calls);
    if (!api.forced_block.empty()) c.parser.StartInToolCalls(api.forced_block);
    c.last_token = arrival;
    const uint64_t id = requests[i].id;
    absl::Status s = front_door->Submit(std::move(requests[i]),
                                        [queue, i](const RequestEvent& e) { queue->Push(i, e); });
    if (!s.ok()) {
      cancel_all(false);
      return fail(s);
    }
    c.id = id;
  }
  metrics->AddTokens(prompt_tokens * api.n, 0);

  const bool chat = endpoint == ApiEndpoint::kChatCompletions;
  const std::string object_id = absl::StrCat(chat ? "chatcmpl-" : "cmpl-", first_id);
  const int64_t created = static_cast<int64_t>(std::time(nullptr));
  const std::string object =
      chat ? (api.stream ? "chat.completion.chunk" : "chat.completion") : "text_completion";
  auto envelope = [&](ojson choices_json) {
    ojson j = {{"id", object_id},
               {"object", object},
               {"created", created},
               {"model", front_door->options().model_name},
               {"choices", std::move(choices_json)}};
    return j;
  };
  auto usage_json = [&]() {
    int64_t completion = 0, reasoning = 0;
    for (const Choice& c : choices) {
      completion += c.completion_tokens;
      reasoning += c.reasoning_tokens;
    }
    ojson u = {{"prompt_tokens", prompt_tokens},
               {"completion_tokens", completion},
               {"total_tokens", prompt_tokens + completion}};
    if (chat) u["completion_tokens_details"] = {{"reasoning_tokens", reasoning}};
    return u;
  };

  SseWriter<Stream> sse(stream, version);
  if (api.stream && !sse.Begin()) {
    cancel_all(false);
    metrics->CountRequest(label, "cancelled");
    return false;
  }
  // A streamed delta of choice i, or nothing when it is empty.
  auto stream_delta = [&](int i, const OutputDelta& d, const char* finish) -> bool {
    Choice& c = choices[i];
    ojson choice;
    if (chat) {
      ojson delta = ojson::object();
      if (!c.started) {
        delta["role"] = "assistant";
        delta["content"] = "";
        c.started = true;
      }
      if (!d.reasoning_content.empty()) delta["reasoning_content"] = d.reasoning_content;
      if (!d.content.empty()) delta["content"] = d.content;
      if (!d.tool_calls.empty()) {
        ojson calls = ojson::array();
        for (const ParsedToolCall& call : d.tool_calls) {
          const int index = static_cast<int>(c.tool_calls.size());
          calls.push_back(ToolCallJson(call, c.id, index));
          c.tool_calls.push_back(call);
        }
        delta["tool_calls"] = std::move(calls);
      }
      if (delta.empty() && finish == nullptr) return true;
      choice = {{"index", i},
                {"delta", std::move(delta)},
                {"logprobs", nullptr},
                {"finish_reason", finish == nullptr ? ojson(nullptr) : ojson(finish)}};
      if (api.header.sampling.logprobs) {
        choice["logprobs"] = ChatLogprobs(*tokenizer, c.logprobs);
        c.logprobs.clear();
      }
    } else {
      if (d.content.empty() && finish == nullptr) return true;
      choice = {{"index", i},
                {"text", d.content},
                {"logprobs", nullptr},
                {"finish_reason", finish == nullptr ? ojson(nullptr) : ojson(finish)}};
      if (api.header.sampling.logprobs) {
        choice["logprobs"] = CompletionLogprobs(*tokenizer, c.logprobs, &c.text_offset);
        c.logprobs.clear();
      }
    }
    ojson chunk = envelope(ojson::array({std::move(choice)}));
    if (api.include_usage) chunk["usage"] = nullptr;
    return sse.Data(Dump(chunk));
  };
  auto collect = [&](int i, const OutputDelta& d) {
    Choice& c = choices[i];
    c.reasoning += d.reasoning_content;
    c.content += d.content;
    for (const ParsedToolCall& call : d.tool_calls) c.tool_calls.push_back(call);
  };
  if (api.stream && api.echo) {
    for (int i = 0; i < api.n; ++i) {
      OutputDelta d;
      d.content = echo_text;
      if (!stream_delta(i, d, nullptr)) {
        cancel_all(false);
        metrics->CountRequest(label, "cancelled");
        return false;
      }
    }
  }

  int num_finished = 0;
  bool first_token_seen = false;
  std::pair<int, RequestEvent> item;
  while (num_finished < api.n) {
    if (!queue->PopFor(&item, kPollInterval)) {
      if (PeerGone(socket.native_handle()) || stopping.load()) {
        cancel_all(true);
        metrics->CountRequest(label, "cancelled");
        return false;
      }
      continue;
    }
    const int i = item.first;
    const RequestEvent& e = item.second;
    Choice& c = choices[i];
    if (e.kind == RequestEvent::Kind::kError) {
      cancel_all(true);
      const absl::Status error =
          e.error.ok() ? absl::InternalError(absl::StrCat("request ", c.id, " failed")) : e.error;
      metrics->CountRequest(label, OutcomeFor(HttpStatusFor(error)));
      if (!api.stream) return WriteError(stream, version, keep, error, options.retry_after_s);
      sse.Data(Dump(ErrorBody(error)));
      sse.End();
      return false;
    }
    OutputDelta delta;
    const char* finish = nullptr;
    if (e.kind == RequestEvent::Kind::kToken) {
      const Clock::time_point now = Clock::now();
      if (!first_token_seen) {
        metrics->ObserveTimeToFirstToken(Seconds(now - arrival));
        first_token_seen = true;
      } else if (c.completion_tokens > 0) {
        metrics->ObserveInterTokenLatency(Seconds(now - c.last_token));
      }
      c.last_token = now;
      const int64_t n = static_cast<int64_t>(e.token_ids.size());
      if (chat && c.parser.in_reasoning()) c.reasoning_tokens += n;
      c.completion_tokens += n;
      metrics->AddTokens(0, n);
      c.logprobs.insert(c.logprobs.end(), e.logprobs.begin(), e.logprobs.end());
      if (chat) {
        delta = c.parser.Push(e.text);
      } else {
        delta.content = e.text;
      }
    } else if (e.kind == RequestEvent::Kind::kFinished) {
      if (chat) delta = c.parser.Finish();
      c.reason = e.reason;
      c.finished = true;
      ++num_finished;
      const bool calls = !c.tool_calls.empty() || !delta.tool_calls.empty();
      finish = ApiFinishReason(e.reason, calls);
    } else {
      continue;  // Admitted, Progress
    }
    if (api.stream) {
      if (!stream_delta(i, delta, finish)) {
        cancel_all(true);
        metrics->CountRequest(label, "cancelled");
        return false;
      }
    } else {
      collect(i, delta);
    }
  }
  metrics->ObserveEndToEndLatency(Seconds(Clock::now() - arrival));
  metrics->CountRequest(label, "ok");

  if (api.stream) {
    if (api.include_usage) {
      ojson chunk = envelope(ojson::array());
      chunk["usage"] = usage_json();
      if (!sse.Data(Dump(chunk))) return false;
    }
    return sse.End() && keep;
  }
  ojson out_choices = ojson::array();
  for (int i = 0; i < api.n; ++i) {
    const Choice& c = choices[i];
    const char* finish = ApiFinishReason(c.reason, !c.tool_calls.empty());
    if (chat) {
      ojson message = {{"role", "assistant"},
                       {"content", c.content.empty() && !c.tool_calls.empty() ? ojson(nullptr)
                                                                              : ojson(c.content)}};
      if (api.mode == ThinkingMode::kThinking) message["reasoning_content"] = c.reasoning;
      if (!c.tool_calls.empty()) {
        ojson calls = ojson::array();
        for (size_t k = 0; k < c.tool_calls.size(); ++k) {
          ojson call = ToolCallJson(c.tool_calls[k], c.id, static_cast<int>(k));
          call.erase("index");
          calls.push_back(std::move(call));
        }
        message["tool_calls"] = std::move(calls);
      }
      out_choices.push_back(
          {{"index", i},
           {"message", std::move(message)},
           {"logprobs",
            api.header.sampling.logprobs ? ChatLogprobs(*tokenizer, c.logprobs) : ojson(nullptr)},
           {"finish_reason", finish}});
    } else {
      size_t offset = 0;
      out_choices.push_back({{"index", i},
                             {"text", echo_text + c.content},
                             {"logprobs", api.header.sampling.logprobs
                                              ? CompletionLogprobs(*tokenizer, c.logprobs, &offset)
                                              : ojson(nullptr)},
                             {"finish_reason", finish}});
    }
  }
  ojson response = envelope(std::move(out_choices));
  response["usage"] = usage_json();
  return WriteResponse(stream, version, keep, 200, "application/json", Dump(response));
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() { Shutdown().IgnoreError(); }

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpOptions& options,
                                                              FrontDoor* front_door,
                                                              const Tokenizer* tokenizer,
                                                              ServingMetrics* metrics,
                                                              HttpCallbacks callbacks) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->front_door = front_door;
  impl->tokenizer = tokenizer;
  impl->metrics = metrics;
  impl->callbacks = std::move(callbacks);
  if (!options.tls_cert_file.empty() || !options.tls_key_file.empty()) {
    if (options.tls_cert_file.empty() || options.tls_key_file.empty()) {
      return absl::InvalidArgumentError("TLS needs both a certificate and a key file");
    }
    impl->tls = std::make_unique<net::ssl::context>(net::ssl::context::tls_server);
    impl->tls->set_options(net::ssl::context::default_workarounds | net::ssl::context::no_sslv2 |
                           net::ssl::context::no_sslv3 | net::ssl::context::no_tlsv1 |
                           net::ssl::context::no_tlsv1_1);
    beast::error_code ec;
    impl->tls->use_certificate_chain_file(options.tls_cert_file, ec);
    if (ec) {
      return absl::InvalidArgumentError(
          absl::StrCat("TLS certificate ", options.tls_cert_file, ": ", ec.message()));
    }
    impl->tls->use_private_key_file(options.tls_key_file, net::ssl::context::pem, ec);
    if (ec) {
      return absl::InvalidArgumentError(
          absl::StrCat("TLS key ", options.tls_key_file, ": ", ec.message()));
    }
  }
  beast::error_code ec;
  const auto address = net::ip::make_address(options.address, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("HTTP address '", options.address, "': ", ec.message()));
  }
  const std::string requested = absl::StrCat(options.address, ":", options.port);
  impl->acceptor = std::make_unique<tcp::acceptor>(impl->io);
  const tcp::endpoint endpoint(address, static_cast<uint16_t>(options.port));
  impl->acceptor->open(endpoint.protocol(), ec);
  if (!ec) impl->acceptor->set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) impl->acceptor->bind(endpoint, ec);
  if (!ec) impl->acceptor->listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("HTTP: cannot listen on ", requested, ": ", ec.message()));
  }
  impl->port = impl->acceptor->local_endpoint().port();
  Impl* raw = impl.get();
  impl->accept_thread = std::thread([raw] { raw->AcceptLoop(); });
  impl->watchdog_thread = std::thread([raw] { raw->WatchWrites(); });
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

int HttpServer::port() const { return impl_->port; }

std::string HttpServer::endpoint() const {
  return absl::StrCat(impl_->options.address, ":", impl_->port);
}

absl::Status HttpServer::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->shut_down) return absl::OkStatus();
    impl_->shut_down = true;
  }
  impl_->stopping.store(true);
  beast::error_code ec;
  // Wakes the blocked accept (an accept on a shut-down listening socket fails at once). The
  // acceptor is closed only once its thread has left: closing it while accept() runs on it is
  // a data race on the socket object (TSan reports it).
  ::shutdown(impl_->acceptor->native_handle(), SHUT_RDWR);
  if (impl_->accept_thread.joinable()) impl_->accept_thread.join();
  impl_->acceptor->close(ec);
  if (impl_->watchdog_thread.joinable()) impl_->watchdog_thread.join();
  std::lock_guard<std::mutex> lock(impl_->mu);
  for (auto& c : impl_->connections) {
    // Unblocks reads; a thread waiting for events sees `stopping` within one poll interval.
    ::shutdown(c.socket->native_handle(), SHUT_RDWR);
  }
  for (auto& c : impl_->connections) c.thread.join();
  impl_->connections.clear();
  return absl::OkStatus();
}

}  // namespace flotilla
