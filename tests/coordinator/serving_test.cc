// The Generate stream through a real in-process gRPC server with a fake scheduler behind the
// front door: validation (INVALID_ARGUMENT naming the field), codes from the scheduler passed
// through, events streamed in order, chunked prompts reassembled exactly, chat fixtures giving
// the reference ids.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tokenizer/chat_encoding.h"
#include "tests/coordinator/serving_test_util.h"

namespace flotilla::testing {
namespace {

// ---- validation ----

struct BadCase {
  std::string name;
  std::vector<v1::GenerateRequest> messages;
  std::string fragment;
};

std::vector<BadCase> BadCases() {
  const auto text = v1::PROMPT_KIND_TEXT;
  const auto chat = v1::PROMPT_KIND_CHAT;
  const auto ids = v1::PROMPT_KIND_TOKEN_IDS;
  auto sampling = [](std::function<void(v1::SamplingParams*)> f) {
    return [f](v1::GenerateHeader* h) { f(h->mutable_sampling()); };
  };
  auto chat_json = [&](const std::string& json) {
    return std::vector<v1::GenerateRequest>{Header(chat), TextChunk(json, true)};
  };
  std::vector<BadCase> c;
  c.push_back({"no header", {TextChunk("hi", true)}, "no header: stream message 1 is a prompt"});
  c.push_back({"nothing at all", {}, "no header: the stream ended before"});
  c.push_back({"second header",
               {Header(text), Header(text), TextChunk("hi", true)},
               "stream message 2 is a second header"});
  c.push_back({"empty message",
               {Header(text), v1::GenerateRequest()},
               "stream message 2 sets neither header nor chunk"});
  c.push_back({"ids chunk for text",
               {Header(text), IdsChunk({1, 2}, true)},
               "a token_ids chunk, but the header's prompt kind is text"});
  c.push_back({"ids chunk for chat",
               {Header(chat), IdsChunk({1, 2}, true)},
               "a token_ids chunk, but the header's prompt kind is chat"});
  c.push_back({"text chunk for ids",
               {Header(ids), TextChunk("hi", true)},
               "a text chunk, but the header's prompt kind is token ids"});
  c.push_back({"id above vocab",
               {Header(ids), IdsChunk({5, 6}), IdsChunk({7, 129280}, true)},
               "prompt token id at index 3 is 129280, not below the model's vocabulary size "
               "129280"});
  c.push_back({"negative id",
               {Header(ids), IdsChunk({5, -1}, true)},
               "prompt token id at index 1 is -1: token ids are non-negative"});
  c.push_back({"empty text prompt", {Header(text)}, "empty prompt: no text was sent"});
  c.push_back(
      {"empty text chunk", {Header(text), TextChunk("", true)}, "empty prompt: no text was sent"});
  c.push_back({"empty ids prompt",
               {Header(ids), IdsChunk({}, true)},
               "empty prompt: no token ids were sent"});
  c.push_back({"empty chat prompt", {Header(chat)}, "empty prompt: no messages JSON was sent"});
  c.push_back(
      {"temperature NaN",
       {Header(text, sampling([](auto* s) { s->set_temperature(std::nanf("")); })),
        TextChunk("hi", true)},
       "sampling.temperature: nan (must be >= 0 and finite; 0 is greedy)"});
  c.push_back(
      {"temperature negative",
       {Header(text, sampling([](auto* s) { s->set_temperature(-1); })), TextChunk("hi", true)},
       "sampling.temperature: -1"});
  c.push_back({"top_p 0",
               {Header(text, sampling([](auto* s) { s->set_top_p(0); })), TextChunk("hi", true)},
               "sampling.top_p: 0 (must be in (0, 1])"});
  c.push_back({"top_p above 1",
               {Header(text, sampling([](auto* s) { s->set_top_p(1.5f); })), TextChunk("hi", true)},
               "sampling.top_p: 1.5"});
  c.push_back({"top_k negative",
               {Header(text, sampling([](auto* s) { s->set_top_k(-2); })), TextChunk("hi", true)},
               "sampling.top_k: -2 (must be >= 0"});
  c.push_back(
      {"max_new_tokens 0",
       {Header(text, sampling([](auto* s) { s->set_max_new_tokens(0); })), TextChunk("hi", true)},
       "sampling.max_new_tokens: 0 (must be >= 1)"});
  c.push_back(
      {"max_new_tokens above context",
       {Header(text, sampling([](auto* s) { s->set_max_new_tokens(65); })), TextChunk("hi", true)},
       "sampling.max_new_tokens: 65 is above the model's maximum context of 64 tokens"});
  c.push_back({"prompt + max_new_tokens above context",
               {Header(ids, sampling([](auto* s) { s->set_max_new_tokens(30); })),
                IdsChunk(std::vector<int32_t>(40, 100), true)},
               "the model's maximum context is 64 tokens, but the request needs 70 (40 in the "
               "prompt + 30 sampling.max_new_tokens)"});
  c.push_back({"prompt fills context",
               {Header(ids), IdsChunk(std::vector<int32_t>(64, 100), true)},
               "fill the model's maximum context of 64 tokens"});
  c.push_back({"too many ids",
               {Header(ids), IdsChunk(std::vector<int32_t>(40, 100)),
                IdsChunk(std::vector<int32_t>(40, 100), true)},
               "prompt too large: more than 64 token ids"});
  c.push_back({"text chunk over the cap",
               {Header(text), TextChunk(std::string(1025, 'a'), true)},
               "a text chunk of 1025 bytes is over the 1024-byte chunk limit"});
  c.push_back({"ids chunk over the cap",
               {Header(ids), IdsChunk(std::vector<int32_t>(257, 100), true)},
               "a token_ids chunk of 257 ids is over the limit of 256 ids per chunk"});
  c.push_back({"text over the total cap",
               {Header(text), TextChunk(std::string(1000, 'a')), TextChunk(std::string(1000, 'a')),
                TextChunk(std::string(1000, 'a'), true)},
               "prompt too large: the text exceeds 2048 bytes"});
  c.push_back({"invalid UTF-8",
               {Header(text), TextChunk("ab"),
                TextChunk("\xff"
                          "cd",
                          true)},
               "prompt text is not valid UTF-8 (byte offset 2)"});
  c.push_back({"truncated UTF-8",
               {Header(text), TextChunk("ab\xe2\x82", true)},
               "prompt text is not valid UTF-8 (byte offset 2)"});
  c.push_back({"unset prompt kind",
               {Header(v1::PROMPT_KIND_UNSPECIFIED), TextChunk("hi", true)},
               "header.prompt_kind is unset"});
  c.push_back({"unknown prompt kind",
               {Header(static_cast<v1::PromptKind>(99)), TextChunk("hi", true)},
               "header.prompt_kind: unknown value 99"});
  c.push_back({"unknown reasoning effort",
               {Header(chat,
                       [](auto* h) {
                         h->mutable_chat()->set_reasoning_effort(
                             static_cast<v1::ReasoningEffort>(7));
                       }),
                TextChunk(R"([{"role": "user", "content": "hi"}])", true)},
               "header.chat.reasoning_effort: unknown value 7"});
  c.push_back({"empty stop string",
               {Header(text, sampling([](auto* s) {
                         s->add_stop("ok");
                         s->add_stop("");
                       })),
                TextChunk("hi", true)},
               "sampling.stop[1]: a stop string must not be empty"});
  c.push_back({"too many stop strings",
               {Header(text, sampling([](auto* s) {
                         for (int i = 0; i < 17; ++i) s->add_stop(absl::StrCat("s", i));
                       })),
                TextChunk("hi", true)},
               "sampling.stop: 17 stop strings (at most 16)"});
  c.push_back({"other model",
               {Header(text, [](auto* h) { h->set_model("gpt-9"); }), TextChunk("hi", true)},
               "header.model: 'gpt-9' is not served here (this server serves 'test-model')"});
  c.push_back({"tools for a text prompt",
               {Header(text, [](auto* h) { h->mutable_chat()->set_tools_json("[]"); }),
                TextChunk("hi", true)},
               "tools need the chat prompt kind"});
  c.push_back({"tools not JSON",
               {Header(chat, [](auto* h) { h->mutable_chat()->set_tools_json("[{"); }),
                TextChunk(R"([{"role": "user", "content": "hi"}])", true)},
               "header.chat.tools_json is not valid JSON"});
  c.push_back({"messages not JSON", chat_json(R"([{"role": "user", "content": )"),
               "messages is not valid JSON: [json.exception.parse_error"});
  c.push_back({"messages not a list", chat_json(R"({"role": "user", "content": "hi"})"),
               "messages: expected a JSON array of message objects, got object"});
  c.push_back({"messages empty", chat_json("[]"), "messages: the list is empty"});
  c.push_back({"unknown role", chat_json(R"([{"role": "user", "content": "a"},
                                            {"role": "wizard", "content": "b"}])"),
               "messages[1].role: unknown role 'wizard'"});
  c.push_back({"content of the wrong type",
               chat_json(R"([{"role": "user", "content": "a"}, {"role": "user", "content": 5}])"),
               "messages[1].content: expected"});
  c.push_back({"tool message without a call", chat_json(R"([{"role": "user", "content": "a"},
                             {"role": "tool", "tool_call_id": "x", "content": "42"}])"),
               "messages[1]: a tool message must follow an assistant message with tool_calls"});
  c.push_back({"tool message with an unknown call id",
               chat_json(R"([{"role": "user", "content": "a"},
                     {"role": "assistant", "content": "",
                      "tool_calls": [{"id": "c1", "type": "function",
                                      "function": {"name": "f", "arguments": "{}"}}]},
                     {"role": "tool", "tool_call_id": "c2", "content": "42"}])"),
               "messages[2].tool_call_id: 'c2' matches no tool call"});
  c.push_back({"messages not UTF-8", chat_json("[{\"role\": \"user\", \"content\": \"\xc3\"}]"),
               "messages is not valid UTF-8"});
  return c;
}

TEST_F(ServingTest, ValidationErrorsAreInvalidArgumentNamingTheProblem) {
  const auto cases = BadCases();
  ASSERT_GE(cases.size(), 15u);
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.name);
    const CallResult r = Call(c.messages);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << r.status.error_message();
    EXPECT_NE(r.status.error_message().find(c.fragment), std::string::npos)
        << "message: " << r.status.error_message() << "\nwanted: " << c.fragment;
    EXPECT_TRUE(r.events.empty());
  }
  EXPECT_TRUE(backend_->submitted().empty()) << "a refused request reached the scheduler";
  // The server keeps serving after all of that.
  const CallResult ok = Call({Header(v1::PROMPT_KIND_TEXT), TextChunk("Hello", true)});
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
}

TEST_F(ServingTest, GreedyIgnoresTemperatureAndDefaultsFillTheRequest) {
  const CallResult r = Call({Header(v1::PROMPT_KIND_TOKEN_IDS,
                                    [](auto* h) {
                                      h->mutable_sampling()->set_greedy(true);
                                      h->mutable_sampling()->set_temperature(0);
                                      h->set_priority(7);
                                    }),
                             IdsChunk(std::vector<int32_t>(60, 42), true)});
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  const auto submitted = backend_->submitted();
  ASSERT_EQ(submitted.size(), 1u);
  EXPECT_TRUE(submitted[0].sampling.greedy);
  EXPECT_EQ(submitted[0].priority, 7);
  // Unset max_new_tokens: min(256, context left) = 64 - 60.
  EXPECT_EQ(submitted[0].sampling.max_new_tokens, 4);
  EXPECT_FLOAT_EQ(submitted[0].sampling.top_p, 1.0f);
}

// Temperature 0 means greedy, as OpenAI and vLLM users mean it (issue 13, item 8).
TEST_F(ServingTest, TemperatureZeroIsGreedy) {
  const CallResult r = Call({Header(v1::PROMPT_KIND_TOKEN_IDS,
                                    [](auto* h) {
                                      h->mutable_sampling()->set_greedy(false);
                                      h->mutable_sampling()->set_temperature(0);
                                      h->mutable_sampling()->set_skip_special_tokens(true);
                                    }),
                             IdsChunk({5, 6, 7}, true)});
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  const auto submitted = backend_->submitted();
  ASSERT_EQ(submitted.size(), 1u);
  EXPECT_TRUE(submitted[0].sampling.greedy);
  EXPECT_TRUE(submitted[0].sampling.skip_special_tokens);
}

// ---- errors from the scheduler ----

TEST_F(ServingTest, SchedulerRefusalsPassThroughWithTheirCodes) {
  backend_->set_submit_status(absl::ResourceExhaustedError(
      "request needs 123456 KV bytes (prompt 2 + max_new_tokens 8); the DP group pool holds 1000"));
  CallResult r = Call({Header(v1::PROMPT_KIND_TEXT), TextChunk("Hello", true)});
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(r.status.error_message().find("123456 KV bytes"), std::string::npos);

  backend_->set_submit_status(absl::UnavailableError("draining: not admitting new requests"));
  r = Call({Header(v1::PROMPT_KIND_TEXT), TextChunk("Hello", true)});
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(r.status.error_message(), "draining: not admitting new requests");
  EXPECT_EQ(front_door_->num_active(), 0);

  backend_->set_submit_status(absl::OkStatus());
  backend_->set_run_error(absl::UnavailableError("worker rank 2 died at step 17"));
  r = Call({Header(v1::PROMPT_KIND_TEXT), TextChunk("Hello", true)});
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(r.status.error_message(), "worker rank 2 died at step 17");
  ASSERT_EQ(r.events.size(), 1u);
  EXPECT_TRUE(r.events[0].has_admitted());
  EXPECT_EQ(front_door_->num_active(), 0);
}

// ---- streaming ----

TEST_F(ServingTest, EventsStreamInOrder) {
  const std::string prompt = "Hello world, how are you?";
  const CallResult r = Call(
      {Header(v1::PROMPT_KIND_TEXT, [](auto* h) { h->mutable_sampling()->set_max_new_tokens(6); }),
       TextChunk(prompt, true)});
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  const auto want_prompt = ProjectTokenizer().Encode(prompt).value();
  ASSERT_EQ(LastPrompt(), want_prompt);
  const GenerateRequest request = backend_->submitted().back();
  const std::vector<int32_t> want_tokens = FakeBackend::ExpectedTokens(request);
  ASSERT_EQ(want_tokens.size(), 6u);

  ASSERT_EQ(r.events.size(), 2 + want_tokens.size() + 1);
  const v1::Admitted& admitted = r.events[0].admitted();
  ASSERT_TRUE(r.events[0].has_admitted());
  EXPECT_EQ(admitted.request_id(), request.id);
  EXPECT_GT(admitted.request_id(), 0u);
  EXPECT_EQ(admitted.prompt_tokens(), static_cast<int64_t>(want_prompt.size()));
  EXPECT_EQ(admitted.max_new_tokens(), 6);
  EXPECT_EQ(admitted.kv_bytes_reserved(), 1000 * want_prompt.size());
  ASSERT_TRUE(r.events[1].has_progress());
  EXPECT_EQ(r.events[1].progress().prefill_total(), static_cast<int64_t>(want_prompt.size()));
  std::vector<int32_t> got_tokens;
  std::string got_text;
  for (size_t i = 2; i < 2 + want_tokens.size(); ++i) {
    ASSERT_TRUE(r.events[i].has_token()) << i;
    got_tokens.insert(got_tokens.end(), r.events[i].token().ids().begin(),
                      r.events[i].token().ids().end());
    got_text += r.events[i].token().text();
  }
  EXPECT_EQ(got_tokens, want_tokens);
  EXPECT_EQ(got_text, ProjectTokenizer().Decode(want_tokens).value());
  const v1::GenerateResponse& last = r.events.back();
  ASSERT_TRUE(last.has_finished());
  EXPECT_EQ(last.finished().reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(last.finished().usage().prompt_tokens(), static_cast<int64_t>(want_prompt.size()));
  EXPECT_EQ(last.finished().usage().completion_tokens(), 6);
  EXPECT_DOUBLE_EQ(last.finished().usage().time_to_first_token_s(), 0.001);
  EXPECT_EQ(front_door_->num_active(), 0);
}

TEST_F(ServingTest, ConcurrentStreamsGetTheirOwnEvents) {
  std::vector<std::thread> threads;
  std::vector<CallResult> results(6);
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] {
      results[i] =
          Call({Header(v1::PROMPT_KIND_TOKEN_IDS), IdsChunk({100 + i, 200 + i, 300 + i}, true)});
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(results[i].status.ok()) << results[i].status.error_message();
    std::vector<int32_t> tokens;
    for (const auto& e : results[i].events) {
      if (e.has_token())
        tokens.insert(tokens.end(), e.token().ids().begin(), e.token().ids().end());
    }
    EXPECT_EQ(tokens, (std::vector<int32_t>{100 + i, 200 + i, 300 + i, 100 + i, 200 + i, 300 + i,
                                            100 + i, 200 + i}));
  }
}

// ---- chunked prompts ----

TEST_F(ServingTest, ChunkedTextIsReassembledExactly) {
  // Pieces of 7 bytes cut through multi-byte characters; the whole text is what is encoded.
  const std::string text = "Grüße aus Zürich — ça va? 你好，世界！ 🚀 and some ASCII at the end.";
  std::vector<v1::GenerateRequest> messages = {Header(v1::PROMPT_KIND_TEXT)};
  for (const std::string& piece : Pieces(text, 7)) messages.push_back(TextChunk(piece));
  messages.push_back(TextChunk("", true));  // an empty final chunk ends it
  const CallResult r = Call(messages);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(LastPrompt(), ProjectTokenizer().Encode(text).value());

  // Ended by the half-close instead of `last`.
  messages.pop_back();
  const CallResult r2 = Call(messages);
  ASSERT_TRUE(r2.status.ok()) << r2.status.error_message();
  EXPECT_EQ(LastPrompt(), ProjectTokenizer().Encode(text).value());
}

TEST_F(ServingTest, ChunkedIdsAreReassembledExactly) {
  std::vector<int32_t> ids;
  for (int i = 0; i < 60; ++i) ids.push_back((i * 7919) % 129280);
  std::vector<v1::GenerateRequest> messages = {Header(
      v1::PROMPT_KIND_TOKEN_IDS, [](auto* h) { h->mutable_sampling()->set_max_new_tokens(4); })};
  for (size_t i = 0; i < ids.size(); i += 13) {
    messages.push_back(IdsChunk(
        std::vector<int32_t>(ids.begin() + i, ids.begin() + std::min(ids.size(), i + 13))));
  }
  messages.back().mutable_chunk()->set_last(true);
  const CallResult r = Call(messages);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(LastPrompt(), ids);
}

// A long prompt through the default limits: many 4 MiB-bounded chunks, one request.
TEST_F(ServingTest, LongPromptInManyChunks) {
  TearDown();
  StartServer();
  std::vector<int32_t> ids(300000);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 31) % 128000);
  std::vector<v1::GenerateRequest> messages = {Header(v1::PROMPT_KIND_TOKEN_IDS)};
  for (size_t i = 0; i < ids.size(); i += 65536) {
    messages.push_back(IdsChunk(
        std::vector<int32_t>(ids.begin() + i, ids.begin() + std::min(ids.size(), i + 65536))));
  }
  const CallResult r = Call(messages);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(LastPrompt(), ids);
}

// ---- chat ----

// The official fixtures through the server: messages JSON streamed in pieces, tools in the
// header; the prompt ids are the fixture's ids.
TEST_F(ServingTest, ChatFixturesGiveTheReferenceIds) {
  TearDown();
  StartServer();
  const bool thinking[] = {true, true, true, false};
  for (int n = 1; n <= 4; ++n) {
    SCOPED_TRACE("fixture " + std::to_string(n));
    const auto input = ReadJsonOrDie(
        RepoPath("tests/data/chat-encoding/test_input_" + std::to_string(n) + ".json"));
    nlohmann::ordered_json messages = input;
    std::string tools_json;
    if (input.is_object()) {
      messages = input["messages"];
      tools_json = input["tools"].dump();
    }
    std::vector<v1::GenerateRequest> stream = {
        Header(v1::PROMPT_KIND_CHAT, [&](v1::GenerateHeader* h) {
          h->mutable_chat()->set_thinking(thinking[n - 1]);
          h->mutable_chat()->set_tools_json(tools_json);
        })};
    for (const std::string& piece : Pieces(messages.dump(), 97)) stream.push_back(TextChunk(piece));
    const CallResult r = Call(stream);
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    const auto want = ReadJsonOrDie(RepoPath("tests/data/chat-encoding/test_output_" +
                                             std::to_string(n) + ".ids.json"))["ids"]
                          .get<std::vector<int32_t>>();
    EXPECT_EQ(LastPrompt(), want);
  }
}

TEST_F(ServingTest, ChatToolsGoOnALeadingSystemMessage) {
  TearDown();
  StartServer();
  const std::string tools =
      R"([{"type": "function", "function": {"name": "get_time", "parameters": {}}}])";
  const std::string messages = R"([{"role": "user", "content": "Time?"}])";
  const CallResult r = Call(
      {Header(v1::PROMPT_KIND_CHAT, [&](auto* h) { h->mutable_chat()->set_tools_json(tools); }),
       TextChunk(messages, true)});
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  const auto want_text =
      EncodeChatJson(nlohmann::ordered_json::parse(
                         R"([{"role": "system", "content": "", "tools": )" + tools + R"(},
              {"role": "user", "content": "Time?"}])"),
                     nullptr, ChatEncodeOptions());
  ASSERT_TRUE(want_text.ok()) << want_text.status();
  EXPECT_EQ(LastPrompt(), ProjectTokenizer().Encode(*want_text).value());

  // Tools both in the header and on the system message: refused.
  const CallResult twice = Call(
      {Header(v1::PROMPT_KIND_CHAT, [&](auto* h) { h->mutable_chat()->set_tools_json(tools); }),
       TextChunk(R"([{"role": "system", "content": "", "tools": )" + tools +
                     R"(}, {"role": "user", "content": "Time?"}])",
                 true)});
  EXPECT_EQ(twice.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(twice.status.error_message().find("tools given twice"), std::string::npos);

  // An error in the client's messages names the client's own index, not a shifted one.
  const CallResult bad = Call(
      {Header(v1::PROMPT_KIND_CHAT, [&](auto* h) { h->mutable_chat()->set_tools_json(tools); }),
       TextChunk(R"([{"role": "user", "content": "a"}, {"role": "tool", "content": "1"}])", true)});
  EXPECT_EQ(bad.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(bad.status.error_message().find("messages[1]: a tool message"), std::string::npos)
      << bad.status.error_message();
}

}  // namespace
}  // namespace flotilla::testing
