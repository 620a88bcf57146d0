// The HTTP front door over real sockets on 127.0.0.1, in front of a FrontDoor and a FakeBackend
// whose output is scripted: the tiny test model cannot be relied on to write DSML or thinking
// tags, so the tool-call and reasoning paths are checked here with scripted token streams (the
// project tokenizer's real token boundaries), against hand-written expected messages.
#include "coordinator/http_server.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/coordinator/fake_backend.h"
#include "tests/tokenizer/test_data.h"

namespace flotilla::testing {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using json = nlohmann::ordered_json;

struct Reply {
  int status = 0;
  std::string retry_after;
  std::string body;
  json Json() const { return json::parse(body); }
  // The `data:` payloads of a Server-Sent Events body, in order.
  std::vector<std::string> Events() const {
    std::vector<std::string> out;
    size_t at = 0;
    while ((at = body.find("data: ", at)) != std::string::npos) {
      const size_t end = body.find("\n\n", at);
      out.push_back(body.substr(at + 6, end - at - 6));
      at = end;
    }
    return out;
  }
};

const std::string kToolCall =
    "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_time\">\n<｜DSML｜parameter "
    "name=\"tz\" string=\"true\">UTC</｜DSML｜parameter>\n<｜DSML｜parameter name=\"n\" "
    "string=\"false\">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
const char* kTools =
    R"([{"type":"function","function":{"name":"get_time","parameters":{"type":"object"}}}])";

class HttpServerTest : public ::testing::Test {
 protected:
  void Start(HttpOptions options = {}, HttpCallbacks callbacks = {},
             int64_t prompt_memory_bytes = int64_t{1} << 30, int64_t max_context = 4096) {
    ModelConfig config;
    config.max_position_embeddings = max_context;
    FrontDoorOptions fdo;
    fdo.model_name = "test-model";
    fdo.prompt_memory_bytes = prompt_memory_bytes;
    backend_ = std::make_unique<FakeBackend>(&ProjectTokenizer());
    front_door_ = std::make_unique<FrontDoor>(config, &ProjectTokenizer(), backend_.get(), fdo);
    options.address = "127.0.0.1";
    options.port = 0;
    auto server =
        HttpServer::Start(options, front_door_.get(), &ProjectTokenizer(), &metrics_, callbacks);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(server).value();
  }
  void SetUp() override { Start(); }
  void TearDown() override {
    if (server_) EXPECT_TRUE(server_->Shutdown().ok());
  }

  void Script(const std::string& text, FinishReason reason = FinishReason::kStop) {
    auto ids = ProjectTokenizer().Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    backend_->set_script(*ids, reason);
  }

  Reply Send(http::verb verb, const std::string& target, const std::string& body,
             const std::string& key = "") {
    net::io_context io;
    tcp::socket socket(io);
    socket.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), server_->port()));
    http::request<http::string_body> req{verb, target, 11};
    req.set(http::field::host, "127.0.0.1");
    req.set(http::field::content_type, "application/json");
    if (!key.empty()) req.set(http::field::authorization, "Bearer " + key);
    req.body() = body;
    req.prepare_payload();
    http::write(socket, req);
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 << 20);
    http::read(socket, buffer, parser);
    Reply r;
    r.status = parser.get().result_int();
    r.retry_after = std::string(parser.get()[http::field::retry_after]);
    r.body = parser.get().body();
    return r;
  }
  Reply Post(const std::string& target, const json& body, const std::string& key = "") {
    return Send(http::verb::post, target, body.dump(), key);
  }

  static json Chat(bool stream, json extra = json::object()) {
    json body = {{"model", "test-model"},
                 {"messages", {{{"role", "user"}, {"content", "What time is it?"}}}},
                 {"stream", stream}};
    for (auto& [k, v] : extra.items()) body[k] = v;
    return body;
  }

  // A streamed chat's deltas joined: reasoning, content, tool calls, finish reason; fails when a
  // content or reasoning delta shows markup.
  struct Streamed {
    std::string reasoning, content, finish;
    json tool_calls = json::array();
    int num_chunks = 0;
  };
  static Streamed Join(const Reply& r) {
    Streamed s;
    const auto events = r.Events();
    EXPECT_FALSE(events.empty());
    if (events.empty()) return s;
    EXPECT_EQ(events.back(), "[DONE]");
    for (size_t i = 0; i + 1 < events.size(); ++i) {
      const json chunk = json::parse(events[i]);
      EXPECT_EQ(chunk["object"], "chat.completion.chunk");
      if (chunk["choices"].empty()) continue;
      const json& delta = chunk["choices"][0]["delta"];
      ++s.num_chunks;
      if (delta.contains("content")) {
        const std::string c = delta["content"];
        EXPECT_EQ(c.find("DSML"), std::string::npos) << c;
        EXPECT_EQ(c.find("</think>"), std::string::npos) << c;
        s.content += c;
      }
      if (delta.contains("reasoning_content")) s.reasoning += delta["reasoning_content"];
      if (delta.contains("tool_calls")) {
        for (const auto& c : delta["tool_calls"]) s.tool_calls.push_back(c);
      }
      if (!chunk["choices"][0]["finish_reason"].is_null()) {
        s.finish = chunk["choices"][0]["finish_reason"];
      }
    }
    return s;
  }

  ServingMetrics metrics_;
  std::unique_ptr<FakeBackend> backend_;
  std::unique_ptr<FrontDoor> front_door_;
  std::unique_ptr<HttpServer> server_;
};

// A request with "Connection: close" gets its answer and then the end of the connection (the
// server used to wait for another request on it, and a client reading to the end hung).
TEST_F(HttpServerTest, ConnectionCloseEndsTheConnectionAfterTheAnswer) {
  Script("fine");
  net::io_context io;
  tcp::socket socket(io);
  socket.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), server_->port()));
  const std::string body = json{{"model", "test-model"}, {"prompt", "Hello"}}.dump();
  const std::string req = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          "Content-Type: application/json\r\nConnection: close\r\n"
                          "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  net::write(socket, net::buffer(req));
  // Read to the end on another thread, so that a connection left open fails the test instead
  // of hanging it.
  std::string reply;
  std::atomic<bool> ended{false};
  std::thread reader([&] {
    beast::error_code ec;
    char buf[4096];
    while (true) {
      const size_t n = socket.read_some(net::buffer(buf), ec);
      if (ec) break;
      reply.append(buf, n);
    }
    ended = ec == net::error::eof;
  });
  for (int i = 0; i < 200 && !ended; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_TRUE(ended.load()) << "the server kept the connection open";
  if (!ended) {
    beast::error_code ec;
    socket.shutdown(tcp::socket::shutdown_both, ec);
    socket.close(ec);
  }
  reader.join();
  EXPECT_EQ(reply.rfind("HTTP/1.1 200", 0), 0u) << reply;
  EXPECT_NE(reply.find("\"finish_reason\""), std::string::npos) << reply;
}

// Issue 13, item 5, over HTTP: a client that stops reading a streamed answer while generation
// goes on is cut off after the write-stall limit, and its request is cancelled.
TEST_F(HttpServerTest, AClientThatStopsReadingIsCutOff) {
  server_->Shutdown().IgnoreError();
  HttpOptions options;
  options.write_stall = std::chrono::milliseconds(1000);
  Start(options, {}, int64_t{1} << 30, /*max_context=*/1 << 20);
  // 200,000 tokens (some 40 MB of events) over 40 s: far more than the socket buffers hold
  // while nobody reads.
  backend_->set_script(std::vector<int32_t>(200000, 1000), FinishReason::kLength);
  backend_->set_token_interval(std::chrono::microseconds(200));
  net::io_context io;
  tcp::socket socket(io);
  socket.open(tcp::v4());
  socket.set_option(net::socket_base::receive_buffer_size(4096));
  socket.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), server_->port()));
  const std::string body =
      json{{"model", "test-model"}, {"prompt", "Hello"}, {"stream", true}, {"max_tokens", 200000}}
          .dump();
  const std::string req = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          "Content-Type: application/json\r\n"
                          "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  net::write(socket, net::buffer(req));
  ASSERT_TRUE(backend_->WaitForSubmitted(1, std::chrono::seconds(10)));
  const uint64_t id = backend_->submitted()[0].id;
  // Nothing is read: the server's writes block once the socket buffers are full.
  EXPECT_TRUE(backend_->WaitForCancel(id, std::chrono::seconds(30)));
  beast::error_code ec;
  socket.close(ec);
}

TEST_F(HttpServerTest, ABodyLargerThanThePromptMemoryBudgetIsRefusedUnread) {
  server_->Shutdown().IgnoreError();
  Start({}, {}, /*prompt_memory_bytes=*/64 << 10);
  const json body = {{"model", "test-model"}, {"prompt", std::string(100 << 10, 'a')}};
  const Reply r = Post("/v1/completions", body);
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("the HTTP request body needs"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("--prompt-memory"), std::string::npos) << r.body;
  EXPECT_EQ(front_door_->PromptMemoryUse().reserved_bytes, 0);
  // The server keeps serving, and a body within the budget is served.
  Script("fine");
  const Reply ok = Post("/v1/completions", {{"model", "test-model"}, {"prompt", "Hello"}});
  EXPECT_EQ(ok.status, 200) << ok.body;
  EXPECT_TRUE(backend_->submitted().size() == 1);
}

TEST_F(HttpServerTest, ThinkingAndToolCallWhole) {
  Script("Need time.</think>" + kToolCall);
  const Reply r = Post("/v1/chat/completions",
                       Chat(false, {{"tools", json::parse(kTools)}, {"reasoning_effort", "high"}}));
  ASSERT_EQ(r.status, 200) << r.body;
  const json j = r.Json();
  const json& m = j["choices"][0]["message"];
  EXPECT_EQ(m["reasoning_content"], "Need time.");
  EXPECT_TRUE(m["content"].is_null());
  ASSERT_EQ(m["tool_calls"].size(), 1u);
  EXPECT_EQ(m["tool_calls"][0]["type"], "function");
  EXPECT_EQ(m["tool_calls"][0]["function"]["name"], "get_time");
  EXPECT_EQ(m["tool_calls"][0]["function"]["arguments"], "{\"tz\": \"UTC\", \"n\": 3}");
  const uint64_t id = backend_->submitted().back().id;
  EXPECT_EQ(m["tool_calls"][0]["id"], "call_" + std::to_string(id) + "_0");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "tool_calls");
  // Reasoning tokens: those of "Need time." and "</think>".
  auto reasoning_ids = ProjectTokenizer().Encode("Need time.</think>");
  ASSERT_TRUE(reasoning_ids.ok());
  EXPECT_EQ(j["usage"]["completion_tokens_details"]["reasoning_tokens"], reasoning_ids->size());
  // The prompt the backend got is the thinking-mode chat with the tools block.
  const std::string prompt = *ProjectTokenizer().Decode(backend_->submitted().back().prompt);
  EXPECT_NE(prompt.find("## Tools"), std::string::npos);
  EXPECT_EQ(prompt.substr(prompt.size() - 7), "<think>");
}

TEST_F(HttpServerTest, ThinkingAndToolCallStreamed) {
  Script("Need time.</think>" + kToolCall);
  const Reply r = Post(
      "/v1/chat/completions",
      Chat(true, {{"tools", json::parse(kTools)}, {"chat_template_kwargs", {{"thinking", true}}}}));
  ASSERT_EQ(r.status, 200) << r.body;
  const Streamed s = Join(r);
  EXPECT_EQ(s.reasoning, "Need time.");
  EXPECT_EQ(s.content, "");
  ASSERT_EQ(s.tool_calls.size(), 1u);
  EXPECT_EQ(s.tool_calls[0]["index"], 0);
  EXPECT_EQ(s.tool_calls[0]["function"]["name"], "get_time");
  EXPECT_EQ(s.tool_calls[0]["function"]["arguments"], "{\"tz\": \"UTC\", \"n\": 3}");
  EXPECT_EQ(s.finish, "tool_calls");
}

TEST_F(HttpServerTest, ChatModeAnswerWithoutTagIsContent) {
  Script("The time is noon.");
  const Reply r = Post("/v1/chat/completions", Chat(false));
  ASSERT_EQ(r.status, 200) << r.body;
  const json whole = r.Json();
  const json& m = whole["choices"][0]["message"];
  EXPECT_EQ(m["content"], "The time is noon.");
  EXPECT_FALSE(m.contains("reasoning_content"));
  EXPECT_EQ(r.Json()["choices"][0]["finish_reason"], "stop");
  const Streamed s = Join(Post("/v1/chat/completions", Chat(true)));
  EXPECT_EQ(s.content, "The time is noon.");
  EXPECT_EQ(s.reasoning, "");
}

TEST_F(HttpServerTest, MissingClosingThinkTagCutByLength) {
  Script("Let me think about </thi", FinishReason::kLength);
  const json body = Chat(false, {{"reasoning_effort", "high"}});
  const Reply r = Post("/v1/chat/completions", body);
  ASSERT_EQ(r.status, 200) << r.body;
  const json whole = r.Json();
  const json& c = whole["choices"][0];
  EXPECT_EQ(c["message"]["reasoning_content"], "Let me think about </thi");
  EXPECT_EQ(c["message"]["content"], "");
  EXPECT_EQ(c["finish_reason"], "length");
  json streamed = body;
  streamed["stream"] = true;
  const Streamed s = Join(Post("/v1/chat/completions", streamed));
  EXPECT_EQ(s.reasoning, "Let me think about </thi");
  EXPECT_EQ(s.finish, "length");
}

TEST_F(HttpServerTest, MalformedDsmlIsReleasedAsContent) {
  const std::string bad =
      "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_time\"></｜DSML｜invoke>\n"
      "</｜DSML｜tool_calls>";
  Script("Checking." + bad);
  const Reply r = Post("/v1/chat/completions", Chat(false, {{"tools", json::parse(kTools)}}));
  ASSERT_EQ(r.status, 200) << r.body;
  const json whole = r.Json();
  const json& c = whole["choices"][0];
  EXPECT_EQ(c["message"]["content"], "Checking." + bad);
  EXPECT_FALSE(c["message"].contains("tool_calls"));
  EXPECT_EQ(c["finish_reason"], "stop");
}

TEST_F(HttpServerTest, TextBeforeToolCallIsContent) {
  Script("Let me look." + kToolCall);
  const Streamed s =
      Join(Post("/v1/chat/completions", Chat(true, {{"tools", json::parse(kTools)}})));
  EXPECT_EQ(s.content, "Let me look.");
  ASSERT_EQ(s.tool_calls.size(), 1u);
  EXPECT_EQ(s.finish, "tool_calls");
}

TEST_F(HttpServerTest, NamedToolChoiceOpensTheCallInThePrompt) {
  // The model continues inside the forced invoke.
  Script(
      "<｜DSML｜parameter name=\"tz\" string=\"true\">UTC</｜DSML｜parameter>\n"
      "</｜DSML｜invoke>\n</｜DSML｜tool_calls>");
  const Reply r = Post(
      "/v1/chat/completions",
      Chat(false, {{"tools", json::parse(kTools)},
                   {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_time"}}}}}}));
  ASSERT_EQ(r.status, 200) << r.body;
  const json whole = r.Json();
  const json& m = whole["choices"][0]["message"];
  ASSERT_EQ(m["tool_calls"].size(), 1u);
  EXPECT_EQ(m["tool_calls"][0]["function"]["arguments"], "{\"tz\": \"UTC\"}");
  const std::string prompt = *ProjectTokenizer().Decode(backend_->submitted().back().prompt);
  const std::string tail = "</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_time\">\n";
  ASSERT_GE(prompt.size(), tail.size());
  EXPECT_EQ(prompt.substr(prompt.size() - tail.size()), tail);
  // A tool that is not offered is refused, naming the field.
  const Reply bad = Post(
      "/v1/chat/completions",
      Chat(false, {{"tools", json::parse(kTools)},
                   {"tool_choice", {{"type", "function"}, {"function", {{"name", "nope"}}}}}}));
  EXPECT_EQ(bad.status, 400);
  EXPECT_EQ(bad.Json()["error"]["param"], "tool_choice.function.name");
}

TEST_F(HttpServerTest, ToolResultRoundTripRendersInThePrompt) {
  Script("It is noon.");
  json body = Chat(false, {{"tools", json::parse(kTools)}});
  body["messages"] = json::parse(R"([
    {"role": "user", "content": "Time in UTC?"},
    {"role": "assistant", "content": null, "reasoning_content": "Need time.",
     "tool_calls": [{"id": "call_7_0", "type": "function",
                     "function": {"name": "get_time", "arguments": "{\"tz\": \"UTC\"}"}}]},
    {"role": "tool", "tool_call_id": "call_7_0", "content": "12:00"}])");
  const Reply r = Post("/v1/chat/completions", body);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.Json()["choices"][0]["message"]["content"], "It is noon.");
  const std::string prompt = *ProjectTokenizer().Decode(backend_->submitted().back().prompt);
  EXPECT_NE(prompt.find("<｜DSML｜parameter name=\"tz\" string=\"true\">UTC</｜DSML｜parameter>"),
            std::string::npos);
  EXPECT_NE(prompt.find("<tool_result>12:00</tool_result>"), std::string::npos);
}

TEST_F(HttpServerTest, ErrorsNameTheFieldWithTheRightStatus) {
  Reply r = Post("/v1/chat/completions", Chat(false, {{"temperature", "hot"}}));
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.Json()["error"]["param"], "temperature");
  EXPECT_EQ(r.Json()["error"]["type"], "invalid_request_error");
  r = Post("/v1/chat/completions", Chat(false, {{"model", "other"}}));
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.Json()["error"]["code"], "model_not_found");
  r = Send(http::verb::get, "/v1/nowhere", "");
  EXPECT_EQ(r.status, 404);
  r = Send(http::verb::post, "/v1/completions", "{\"model\": ");
  EXPECT_EQ(r.status, 400);
  r = Post("/v1/completions", {{"model", "test-model"}, {"prompt", json::array({1, -2})}});
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.Json()["error"]["param"], "prompt[1]");
  // Prompt + max_tokens past the 4096-token context.
  r = Post("/v1/completions", {{"model", "test-model"}, {"prompt", "hi"}, {"max_tokens", 5000}});
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.Json()["error"]["code"], "context_length_exceeded");
  // Admission refusals carry Retry-After.
  backend_->set_submit_status(absl::ResourceExhaustedError("the queue is full"));
  r = Post("/v1/chat/completions", Chat(false));
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.retry_after, "1");
  backend_->set_submit_status(absl::UnavailableError("draining"));
  r = Post("/v1/chat/completions", Chat(true));
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.retry_after, "1");
  backend_->set_submit_status(absl::OkStatus());
  // And the server keeps serving.
  Script("ok");
  EXPECT_EQ(Post("/v1/chat/completions", Chat(false)).status, 200);
}

TEST_F(HttpServerTest, DisconnectCancelsWithoutNotification) {
  backend_->set_hold(true);
  {
    net::io_context io;
    tcp::socket socket(io);
    socket.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), server_->port()));
    http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
    req.set(http::field::host, "127.0.0.1");
    req.body() = Chat(true).dump();
    req.prepare_payload();
    http::write(socket, req);
    ASSERT_TRUE(backend_->WaitForSubmitted(1, std::chrono::seconds(20)));
  }  // the client goes away
  const uint64_t id = backend_->submitted()[0].id;
  ASSERT_TRUE(backend_->WaitForCancel(id, std::chrono::seconds(20)));
  EXPECT_EQ(backend_->cancels()[0], std::make_pair(id, false));
}

TEST_F(HttpServerTest, ApiKeyIsABearerToken) {
  server_->Shutdown().IgnoreError();
  HttpOptions options;
  options.api_key = "sekrit";
  Start(options);
  Script("fine");
  EXPECT_EQ(Send(http::verb::get, "/health", "").status, 200);
  Reply r = Send(http::verb::get, "/v1/models", "");
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.Json()["error"]["type"], "authentication_error");
  EXPECT_EQ(Send(http::verb::get, "/v1/models", "", "wrong!").status, 401);
  EXPECT_EQ(Send(http::verb::get, "/metrics", "", "sekri").status, 401);
  r = Send(http::verb::get, "/v1/models", "", "sekrit");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.Json()["data"][0]["id"], "test-model");
  EXPECT_EQ(Post("/v1/chat/completions", Chat(false), "sekrit").status, 200);
}

TEST_F(HttpServerTest, HealthSaysDraining) {
  EXPECT_EQ(Send(http::verb::get, "/health", "").Json()["status"], "ok");
  server_->Shutdown().IgnoreError();
  HttpCallbacks callbacks;
  callbacks.draining = [] { return true; };
  Start({}, callbacks);
  const Reply r = Send(http::verb::get, "/health", "");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.retry_after, "1");
  EXPECT_EQ(r.Json()["status"], "draining");
}

TEST_F(HttpServerTest, NChoicesSampleConsecutiveSeeds) {
  Script("x");
  const Reply r = Post("/v1/chat/completions", Chat(false, {{"n", 3}, {"seed", 10}}));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.Json()["choices"].size(), 3u);
  const auto sub = backend_->submitted();
  ASSERT_EQ(sub.size(), 3u);
  EXPECT_EQ(sub[0].sampling.seed, 10u);
  EXPECT_EQ(sub[1].sampling.seed, 11u);
  EXPECT_EQ(sub[2].sampling.seed, 12u);
}

TEST_F(HttpServerTest, ExpertsPerTokenReachesTheRequest) {
  Script("x");
  ASSERT_EQ(Post("/v1/chat/completions", Chat(false, {{"experts_per_token", 3}})).status, 200);
  EXPECT_EQ(backend_->submitted().back().sampling.experts_per_token, 3);
  // The test config's checkpoint routes to num_experts_per_tok experts.
  ModelConfig config;
  const Reply r = Post("/v1/chat/completions",
                       Chat(false, {{"experts_per_token", config.num_experts_per_tok + 1}}));
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.Json()["error"]["param"], "experts_per_token");
}

TEST_F(HttpServerTest, MetricsArePrometheusText) {
  Script("one two");
  ASSERT_EQ(Post("/v1/chat/completions", Chat(false)).status, 200);
  EXPECT_EQ(Post("/v1/chat/completions", Chat(false, {{"n", 0}})).status, 400);
  const Reply r = Send(http::verb::get, "/metrics", "");
  ASSERT_EQ(r.status, 200);
  const auto ids = ProjectTokenizer().Encode("one two");
  EXPECT_NE(
      r.body.find("flotilla_requests_total{endpoint=\"chat_completions\",outcome=\"ok\"} 1\n"),
      std::string::npos)
      << r.body;
  EXPECT_NE(
      r.body.find(
          "flotilla_requests_total{endpoint=\"chat_completions\",outcome=\"client_error\"} 1\n"),
      std::string::npos);
  EXPECT_NE(r.body.find("flotilla_generated_tokens_total " + std::to_string(ids->size()) + "\n"),
            std::string::npos);
  EXPECT_NE(r.body.find("# TYPE flotilla_time_to_first_token_seconds histogram"),
            std::string::npos);
  EXPECT_NE(r.body.find("flotilla_time_to_first_token_seconds_bucket{le=\"+Inf\"} 1\n"),
            std::string::npos);
}

}  // namespace
}  // namespace flotilla::testing
