// Chat encoding against the official fixtures and the extra cases produced by the official
// encoder; completion parsing; malformed messages.
#include "tokenizer/chat_encoding.h"

#include "gtest/gtest.h"
#include "tests/tokenizer/test_data.h"

namespace flotilla {
namespace {

using ojson = nlohmann::ordered_json;
using testing::ProjectTokenizer;
using testing::ReadFileOrDie;
using testing::ReadJsonOrDie;
using testing::RepoPath;

std::string DataPath(const std::string& name) {
  return RepoPath("tests/data/chat-encoding/" + name);
}
std::string Msg(const absl::Status& s) { return std::string(s.message()); }

ChatEncodeOptions OptionsFromKwargs(const ojson& kwargs) {
  ChatEncodeOptions o;
  o.thinking_mode =
      kwargs.at("thinking_mode") == "thinking" ? ThinkingMode::kThinking : ThinkingMode::kChat;
  if (kwargs.contains("drop_thinking")) o.drop_thinking = kwargs["drop_thinking"].get<bool>();
  if (kwargs.contains("reasoning_effort") && !kwargs["reasoning_effort"].is_null()) {
    o.reasoning_effort =
        kwargs["reasoning_effort"] == "max" ? ReasoningEffort::kMax : ReasoningEffort::kHigh;
  }
  return o;
}

TEST(ChatEncodingTest, OfficialFixtures) {
  // Case 1 carries top-level tools, attached to messages[0]; case 4 is chat mode.
  const ThinkingMode modes[] = {ThinkingMode::kThinking, ThinkingMode::kThinking,
                                ThinkingMode::kThinking, ThinkingMode::kChat};
  for (int n = 1; n <= 4; ++n) {
    ojson input = ReadJsonOrDie(DataPath("test_input_" + std::to_string(n) + ".json"));
    ojson messages = input;
    if (input.is_object()) {
      messages = input["messages"];
      if (input.contains("tools")) messages[0]["tools"] = input["tools"];
    }
    ChatEncodeOptions options;
    options.thinking_mode = modes[n - 1];
    auto prompt = EncodeChatJson(messages, nullptr, options);
    ASSERT_TRUE(prompt.ok()) << "fixture " << n << ": " << Msg(prompt.status());
    const std::string want = ReadFileOrDie(DataPath("test_output_" + std::to_string(n) + ".txt"));
    EXPECT_EQ(*prompt, want) << "fixture " << n;

    // And the token ids of the prompt.
    const ojson ids = ReadJsonOrDie(DataPath("test_output_" + std::to_string(n) + ".ids.json"));
    auto got = ProjectTokenizer().Encode(*prompt);
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(*got, ids["ids"].get<std::vector<int32_t>>()) << "fixture " << n;
  }
}

TEST(ChatEncodingTest, ExtraEncodeCases) {
  const ojson doc = ReadJsonOrDie(DataPath("extra_cases.json"));
  ASSERT_EQ(doc["encode_cases"].size(), 18u);
  for (const ojson& c : doc["encode_cases"]) {
    const std::string name = c["name"];
    const ojson context = c.contains("context") ? c["context"] : ojson();
    auto prompt = EncodeChatJson(c["messages"], context, OptionsFromKwargs(c["kwargs"]));
    ASSERT_TRUE(prompt.ok()) << name << ": " << Msg(prompt.status());
    EXPECT_EQ(*prompt, c["expected_prompt"].get<std::string>()) << name;
  }
}

TEST(ChatEncodingTest, ExtraParseCases) {
  const ojson doc = ReadJsonOrDie(DataPath("extra_cases.json"));
  ASSERT_EQ(doc["parse_cases"].size(), 6u);
  for (const ojson& c : doc["parse_cases"]) {
    const std::string name = c["name"];
    const ThinkingMode mode =
        c["thinking_mode"] == "thinking" ? ThinkingMode::kThinking : ThinkingMode::kChat;
    auto parsed = ParseCompletion(c["completion"].get<std::string>(), mode);
    if (c.contains("expected_error")) {
      ASSERT_FALSE(parsed.ok()) << name;
      std::string want = c["expected_error"];
      const std::string prefix = "AssertionError: ";
      if (want.rfind(prefix, 0) == 0) want = want.substr(prefix.size());
      EXPECT_EQ(Msg(parsed.status()), want) << name;
    } else {
      ASSERT_TRUE(parsed.ok()) << name << ": " << Msg(parsed.status());
      EXPECT_EQ(ParsedCompletionToJson(*parsed), c["expected_message"]) << name;
    }
  }
}

TEST(ChatEncodingTest, SpecWorkedExamples) {
  // Spec §9 quirks, kept byte-exact.
  ChatEncodeOptions chat;
  auto glued = EncodeChatJson(
      ojson::parse(R"([{"role":"user","content":"a"},{"role":"system","content":"NOTE"},
                       {"role":"user","content":"b"}])"),
      nullptr, chat);
  ASSERT_TRUE(glued.ok());
  EXPECT_EQ(*glued, "<｜begin▁of▁sentence｜><｜User｜>aNOTE<｜User｜>b<｜Assistant｜></think>");

  auto null_user =
      EncodeChatJson(ojson::parse(R"([{"role":"user","content":null}])"), nullptr, chat);
  ASSERT_TRUE(null_user.ok());
  EXPECT_EQ(*null_user, "<｜begin▁of▁sentence｜><｜User｜><｜Assistant｜></think>");

  ChatEncodeOptions no_bos;
  no_bos.add_bos = false;
  EXPECT_EQ(*EncodeChatJson(ojson::parse(R"([{"role":"user","content":"Q"}])"), nullptr, no_bos),
            "<｜User｜>Q<｜Assistant｜></think>");

  // Chat mode, action task: </think> then the action token.
  auto action = EncodeChatJson(
      ojson::parse(R"([{"role":"user","content":"weather in Paris","task":"action"}])"), nullptr,
      chat);
  EXPECT_EQ(*action,
            "<｜begin▁of▁sentence｜><｜User｜>weather in Paris<｜Assistant｜></think><｜action｜>");
}

TEST(ChatEncodingTest, ResponseFormatAndListToolResults) {
  ChatEncodeOptions chat;
  auto prompt = EncodeChatJson(ojson::parse(R"([
      {"role":"system","content":"S","response_format":{"type":"json_object","n":1.0}},
      {"role":"user","content":"q"},
      {"role":"assistant","content":"","tool_calls":[
        {"id":"x","type":"function","function":{"name":"f","arguments":"not json"}}]},
      {"role":"tool","tool_call_id":"x","content":[{"type":"text","text":"t1"},
                                                    {"type":"image_url"},
                                                    {"type":"text","text":"t2"}]}])"),
                               nullptr, chat);
  ASSERT_TRUE(prompt.ok()) << Msg(prompt.status());
  EXPECT_EQ(*prompt,
            "<｜begin▁of▁sentence｜>S\n\n## Response Format:\n\nYou MUST strictly adhere to the "
            "following schema to reply:\n{\"type\": \"json_object\", \"n\": 1.0}<｜User｜>q"
            "<｜Assistant｜></think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
            "<｜DSML｜parameter name=\"arguments\" string=\"true\">not json</｜DSML｜parameter>\n"
            "</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜><｜User｜><tool_result>"
            "t1\n\n[Unsupported image_url]\n\nt2</tool_result><｜Assistant｜></think>");
}

struct MalformedCase {
  const char* messages;
  const char* want;  // substring of the error
};

TEST(ChatEncodingTest, MalformedMessagesNameIndexAndField) {
  const MalformedCase cases[] = {
      {R"([{"role":"user","content":"a"},{"role":"robot","content":"b"}])",
       "messages[1].role: unknown role 'robot'"},
      {R"([{"content":"a"}])", "messages[0].role: expected a string, got null"},
      {R"([{"role":"user","content":"a"},{"role":"tool","content":"r"}])",
       "messages[1]: a tool message must follow an assistant message with tool_calls"},
      {R"([{"role":"user","content":"a"},
           {"role":"assistant","content":"","tool_calls":[{"id":"c1","type":"function",
             "function":{"name":"f","arguments":"{}"}}]},
           {"role":"tool","tool_call_id":"c2","content":"r"}])",
       "messages[2].tool_call_id: 'c2' matches no tool call of the preceding assistant message "
       "(messages[1])"},
      {R"([{"role":"user","content":"a","task":"summarize"}])",
       "messages[0].task: unknown task 'summarize'"},
      {R"([{"role":"user","content":[{"type":"text","text":"hi"}]}])",
       "messages[0].content: expected a string, got an array"},
      {R"([{"role":"system","content":5}])",
       "messages[0].content: expected a string, got a number"},
      {R"([{"role":"developer","content":""}])",
       "messages[0].content: a developer message needs content"},
      {R"([{"role":"latest_reminder","content":null}])",
       "messages[0].content: expected a string, got null"},
      {R"([{"role":"user","content":"a"},{"role":"assistant","content":"",
           "tool_calls":[{"function":{"name":"f","arguments":{"x":1}}}]}])",
       "messages[1].tool_calls[0].function.arguments: expected a JSON string, got an object"},
      {R"([{"role":"user","content":"a"},{"role":"assistant","content":"",
           "tool_calls":[{"function":{"name":"f","arguments":"[1, 2]"}}]}])",
       "messages[1].tool_calls[0].function.arguments: the arguments must be a JSON object"},
      {R"([{"role":"user","content":"a"},{"role":"assistant","reasoning_content":7}])",
       "messages[1].reasoning_content: expected a string, got a number"},
      {R"([{"role":"user","content":"a","wo_eos":"yes"}])",
       "messages[0].wo_eos: expected a boolean"},
      {R"([{"role":"system","content":"s","tools":[{"type":"function"}]}])",
       "messages[0].tools[0]: missing \"function\""},
      {R"({"role":"user"})", "messages: expected an array of messages"},
  };
  for (const MalformedCase& c : cases) {
    auto r = EncodeChatJson(ojson::parse(c.messages), nullptr, ChatEncodeOptions());
    ASSERT_FALSE(r.ok()) << c.messages;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(Msg(r.status()).find(c.want), std::string::npos)
        << "got: " << Msg(r.status()) << "\nwant: " << c.want;
  }
  // Errors in the context name the context list.
  auto r = EncodeChatJson(ojson::parse(R"([{"role":"user","content":"a"}])"),
                          ojson::parse(R"([{"role":"bot"}])"), ChatEncodeOptions());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(Msg(r.status()).find("context[0].role"), std::string::npos) << Msg(r.status());
}

TEST(ChatEncodingTest, ToolResultMayAnswerACallInTheContext) {
  ChatEncodeOptions chat;
  auto r = EncodeChatJson(ojson::parse(R"([{"role":"tool","tool_call_id":"c1","content":"r"}])"),
                          ojson::parse(R"([{"role":"user","content":"a"},
                       {"role":"assistant","content":"","tool_calls":[{"id":"c1",
                         "type":"function","function":{"name":"f","arguments":"{}"}}]}])"),
                          chat);
  ASSERT_TRUE(r.ok()) << Msg(r.status());
  EXPECT_EQ(*r, "<｜User｜><tool_result>r</tool_result><｜Assistant｜></think>");
}

struct ParseErrorCase {
  const char* completion;
  ThinkingMode mode;
  const char* want;
};

TEST(CompletionParserTest, MalformedCompletions) {
  const ParseErrorCase cases[] = {
      {"no close", ThinkingMode::kThinking, "Invalid thinking format: missing </think>"},
      {"r\n\n<｜DSML｜tool_calls>\n</｜DSML｜tool_calls></think>x<｜end▁of▁sentence｜>",
       ThinkingMode::kThinking, "Invalid thinking format: missing </think>"},
      {"a<think>b<｜end▁of▁sentence｜>", ThinkingMode::kChat,
       "Unexpected special token '<think>' in content"},
      {"\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"x\" "
       "string=\"true\">1</｜DSML｜parameter>\n<｜DSML｜parameter name=\"x\" "
       "string=\"true\">2</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>"
       "<｜end▁of▁sentence｜>",
       ThinkingMode::kChat, "Duplicate parameter name: 'x'"},
      {"\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke nam=\"f\">\n</｜DSML｜invoke>\n"
       "</｜DSML｜tool_calls><｜end▁of▁sentence｜>",
       ThinkingMode::kChat, "Tool name format error"},
      {"\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"x\" "
       "string=\"maybe\">1</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>"
       "<｜end▁of▁sentence｜>",
       ThinkingMode::kChat, "Parameter format error"},
      {"\n\n<｜DSML｜tool_calls> <｜DSML｜invoke name=\"f\">\n</｜DSML｜invoke>\n"
       "</｜DSML｜tool_calls><｜end▁of▁sentence｜>",
       ThinkingMode::kChat, "Tool call format error: expected '>\\n' but got '> '"},
      {"\n\n<｜DSML｜tool_calls>\n", ThinkingMode::kChat, "Missing special token in tool calls"},
      {"bad \xFF", ThinkingMode::kChat, "not valid UTF-8"},
  };
  for (const ParseErrorCase& c : cases) {
    auto r = ParseCompletion(c.completion, c.mode);
    ASSERT_FALSE(r.ok()) << c.completion;
    EXPECT_NE(Msg(r.status()).find(c.want), std::string::npos)
        << "got: " << Msg(r.status()) << "\nwant: " << c.want;
  }
}

TEST(CompletionParserTest, RoundTripsTheEncodersToolCalls) {
  // What the encoder writes for an assistant turn parses back to the same call; the empty
  // parameter list (an empty line) and multi-line string values included.
  ChatEncodeOptions chat;
  chat.add_bos = false;
  auto prompt = EncodeChatJson(ojson::parse(R"([{"role":"user","content":"u"},
      {"role":"assistant","content":"ok","tool_calls":[
        {"id":"1","type":"function","function":{"name":"f","arguments":"{}"}},
        {"id":"2","type":"function","function":{"name":"g",
          "arguments":"{\"s\": \"a\\nb<c\", \"n\": [1, 2.5], \"o\": {\"k\": \"v\"}}"}}]}])"),
                               nullptr, chat);
  ASSERT_TRUE(prompt.ok());
  const std::string head = "<｜User｜>u<｜Assistant｜></think>";
  ASSERT_EQ(prompt->rfind(head, 0), 0u);
  auto parsed = ParseCompletion(prompt->substr(head.size()), ThinkingMode::kChat);
  ASSERT_TRUE(parsed.ok()) << Msg(parsed.status());
  EXPECT_EQ(parsed->content, "ok");
  ASSERT_EQ(parsed->tool_calls.size(), 2u);
  EXPECT_EQ(parsed->tool_calls[0].name, "f");
  EXPECT_EQ(parsed->tool_calls[0].arguments, "{}");
  EXPECT_EQ(parsed->tool_calls[1].arguments,
            "{\"s\": \"a\\nb<c\", \"n\": [1, 2.5], \"o\": {\"k\": \"v\"}}");
}

TEST(CompletionParserTest, ToolCallsMayEndWithoutEos) {
  auto r = ParseCompletion(
      "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke "
      "name=\"f\">\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>",
      ThinkingMode::kChat);
  ASSERT_TRUE(r.ok()) << Msg(r.status());
  EXPECT_EQ(r->tool_calls.size(), 1u);
}

}  // namespace
}  // namespace flotilla
