// The streaming output parser against hand-written expected splits. Every case is fed whole, one
// UTF-8 character at a time, as the project tokenizer's tokens, and cut at every pair of
// character boundaries: the joined deltas must always be the same, and no delta may carry markup
// that turned out to be a tool call or the end of thinking.
#include "tokenizer/output_parser.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/tokenizer/test_data.h"
#include "tokenizer/utf8.h"

namespace flotilla {
namespace {

struct Expected {
  std::string reasoning;
  std::string content;
  std::vector<std::pair<std::string, std::string>> calls;  // name, arguments
};

struct Joined {
  std::string reasoning;
  std::string content;
  std::vector<std::pair<std::string, std::string>> calls;
  bool markup_leaked = false;
};

void Add(const OutputDelta& d, Joined* j) {
  j->reasoning += d.reasoning_content;
  j->content += d.content;
  for (const ParsedToolCall& c : d.tool_calls) j->calls.emplace_back(c.name, c.arguments);
}

Joined Feed(ThinkingMode mode, bool tools, const std::vector<std::string>& pieces,
            const std::string& forced = "", bool forbid_markup = false) {
  OutputParser parser(mode, tools);
  if (!forced.empty()) parser.StartInToolCalls(forced);
  Joined j;
  for (const std::string& p : pieces) {
    const OutputDelta d = parser.Push(p);
    if (forbid_markup && (d.content.find("｜DSML｜") != std::string::npos ||
                          d.content.find("</think>") != std::string::npos ||
                          d.reasoning_content.find("</think>") != std::string::npos)) {
      j.markup_leaked = true;
    }
    Add(d, &j);
  }
  Add(parser.Finish(), &j);
  return j;
}

// Byte offsets of UTF-8 character starts, plus the end.
std::vector<size_t> Boundaries(const std::string& s) {
  std::vector<size_t> b;
  for (size_t i = 0; i < s.size(); i += utf8::SequenceLength(static_cast<uint8_t>(s[i]))) {
    b.push_back(i);
  }
  b.push_back(s.size());
  return b;
}

void ExpectSame(const Joined& got, const Expected& want, const std::string& how) {
  EXPECT_EQ(got.reasoning, want.reasoning) << how;
  EXPECT_EQ(got.content, want.content) << how;
  EXPECT_EQ(got.calls, want.calls) << how;
}

// Runs every split of `text`; `forbid_markup`: a delta must never show DSML or "</think>".
void CheckAllSplits(ThinkingMode mode, bool tools, const std::string& text, const Expected& want,
                    bool forbid_markup, const std::string& forced = "") {
  ExpectSame(Feed(mode, tools, {text}, forced), want, "whole");
  const std::vector<size_t> b = Boundaries(text);
  std::vector<std::string> chars;
  for (size_t i = 0; i + 1 < b.size(); ++i) chars.push_back(text.substr(b[i], b[i + 1] - b[i]));
  Joined by_char = Feed(mode, tools, chars, forced, forbid_markup);
  ExpectSame(by_char, want, "one character at a time");
  EXPECT_FALSE(by_char.markup_leaked) << "one character at a time";

  auto ids = testing::ProjectTokenizer().Encode(text);
  ASSERT_TRUE(ids.ok()) << ids.status();
  std::vector<std::string> tokens;
  for (int32_t id : *ids) {
    auto piece = testing::ProjectTokenizer().Decode(std::vector<int32_t>{id});
    ASSERT_TRUE(piece.ok());
    tokens.push_back(*piece);
  }
  std::string rejoined;
  for (const auto& t : tokens) rejoined += t;
  if (rejoined == text) {  // every token decodes to whole characters
    Joined by_token = Feed(mode, tools, tokens, forced, forbid_markup);
    ExpectSame(by_token, want, "by tokens");
    EXPECT_FALSE(by_token.markup_leaked) << "by tokens";
  }

  int failures = 0;
  for (size_t i = 1; i + 1 < b.size() && failures < 3; ++i) {
    for (size_t k = i; k + 1 < b.size() && failures < 3; ++k) {
      const std::vector<std::string> pieces = {text.substr(0, b[i]), text.substr(b[i], b[k] - b[i]),
                                               text.substr(b[k])};
      const Joined got = Feed(mode, tools, pieces, forced, forbid_markup);
      if (got.reasoning != want.reasoning || got.content != want.content ||
          got.calls != want.calls || got.markup_leaked) {
        ++failures;
        ExpectSame(got, want,
                   "cut at bytes " + std::to_string(b[i]) + " and " + std::to_string(b[k]));
        EXPECT_FALSE(got.markup_leaked) << "cut at bytes " << b[i] << " and " << b[k];
      }
    }
  }
}

const std::string kCall =
    "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_time\">\n<｜DSML｜parameter "
    "name=\"tz\" string=\"true\">UTC</｜DSML｜parameter>\n<｜DSML｜parameter name=\"n\" "
    "string=\"false\">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";

TEST(OutputParser, ChatModeTextIsAllContent) {
  CheckAllSplits(ThinkingMode::kChat, true, "2 + 2 = 4.\n\nDone <b>.",
                 {"", "2 + 2 = 4.\n\nDone <b>.", {}}, true);
}

TEST(OutputParser, ChatModeNeverRoutesToReasoning) {
  // No closing tag in chat mode is the normal case: the prompt closed thinking.
  CheckAllSplits(ThinkingMode::kChat, false, "The answer is 4, no thinking here.",
                 {"", "The answer is 4, no thinking here.", {}}, true);
}

TEST(OutputParser, ThinkingModeSplitsReasoningAndContent) {
  CheckAllSplits(ThinkingMode::kThinking, true, "Simple arithmetic.</think>2 + 2 = 4.",
                 {"Simple arithmetic.", "2 + 2 = 4.", {}}, true);
}

TEST(OutputParser, ThinkingWithoutClosingTagStaysReasoning) {
  CheckAllSplits(ThinkingMode::kThinking, true, "Still thinking about </thin",
                 {"Still thinking about </thin", "", {}}, false);
}

TEST(OutputParser, ToolCallAfterReasoning) {
  CheckAllSplits(ThinkingMode::kThinking, true, "Need time.</think>" + kCall,
                 {"Need time.", "", {{"get_time", "{\"tz\": \"UTC\", \"n\": 3}"}}}, true);
}

TEST(OutputParser, ToolCallAfterContentInChatMode) {
  CheckAllSplits(ThinkingMode::kChat, true, "Let me check." + kCall,
                 {"", "Let me check.", {{"get_time", "{\"tz\": \"UTC\", \"n\": 3}"}}}, true);
}

TEST(OutputParser, TwoInvokesOneWithoutParameters) {
  const std::string text =
      "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n\n</｜DSML｜invoke>\n<｜DSML｜invoke "
      "name=\"g\">\n<｜DSML｜parameter name=\"x\" string=\"false\">[1, 2]</｜DSML｜parameter>\n"
      "</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
  CheckAllSplits(ThinkingMode::kChat, true, text, {"", "", {{"f", "{}"}, {"g", "{\"x\": [1, 2]}"}}},
                 true);
}

TEST(OutputParser, ToolCallStartingInsideReasoningEndsIt) {
  CheckAllSplits(ThinkingMode::kThinking, true, "I will call it." + kCall,
                 {"I will call it.", "", {{"get_time", "{\"tz\": \"UTC\", \"n\": 3}"}}}, true);
}

TEST(OutputParser, NearMissMarkupIsReleasedUnchanged) {
  // Prefixes of the markers that never complete.
  const std::string text = "a\n\nb\n\n<｜DSM c </thi d\n\n<x";
  CheckAllSplits(ThinkingMode::kChat, true, text, {"", text, {}}, false);
  CheckAllSplits(ThinkingMode::kThinking, true, "r </thin r2</think>" + text,
                 {"r </thin r2", text, {}}, false);
}

TEST(OutputParser, MalformedBlockIsReleasedAsContent) {
  // Missing the ">\n" after the invoke head; the strict grammar refuses it.
  const std::string bad =
      "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke "
      "name=\"f\"></｜DSML｜invoke>\n</｜DSML｜tool_calls>";
  CheckAllSplits(ThinkingMode::kChat, true, "x" + bad + " after", {"", "x" + bad + " after", {}},
                 false);
}

TEST(OutputParser, DuplicateParameterIsMalformed) {
  const std::string bad =
      "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"a\" "
      "string=\"true\">1</｜DSML｜parameter>\n<｜DSML｜parameter name=\"a\" "
      "string=\"true\">2</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
  CheckAllSplits(ThinkingMode::kChat, true, bad, {"", bad, {}}, false);
}

TEST(OutputParser, MarkerNotFollowedByBlockIsContent) {
  const std::string text = "see \n\n<｜DSML｜tool_callsX and more";
  CheckAllSplits(ThinkingMode::kChat, true, text, {"", text, {}}, false);
}

TEST(OutputParser, UnfinishedBlockIsContentAtTheEnd) {
  const std::string cut = kCall.substr(0, kCall.size() - 11);  // ends "</｜DSML｜"
  CheckAllSplits(ThinkingMode::kChat, true, "ok" + cut, {"", "ok" + cut, {}}, false);
}

TEST(OutputParser, TextAfterABlockIsContent) {
  CheckAllSplits(ThinkingMode::kChat, true, kCall + "tail",
                 {"", "tail", {{"get_time", "{\"tz\": \"UTC\", \"n\": 3}"}}}, true);
}

TEST(OutputParser, WithoutToolsDsmlIsContent) {
  CheckAllSplits(ThinkingMode::kChat, false, "q" + kCall, {"", "q" + kCall, {}}, false);
}

TEST(OutputParser, ForcedToolCallContinuesTheBlock) {
  // The prompt ended with "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_time\">\n".
  const std::string forced = ">\n<｜DSML｜invoke name=\"get_time\">\n";
  const std::string rest =
      "<｜DSML｜parameter name=\"tz\" string=\"true\">UTC</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
      "</｜DSML｜tool_calls>";
  CheckAllSplits(ThinkingMode::kChat, true, rest, {"", "", {{"get_time", "{\"tz\": \"UTC\"}"}}},
                 true, forced);
  // Output that breaks the block: only what the model wrote is content.
  CheckAllSplits(ThinkingMode::kChat, true, "plain words", {"", "plain words", {}}, false, forced);
}

TEST(OutputParser, AgreesWithTheStrictParserOnWellFormedOutput) {
  const std::string text = "Need time.</think>" + kCall;
  auto strict = ParseCompletion(text, ThinkingMode::kThinking);
  ASSERT_TRUE(strict.ok()) << strict.status();
  const Joined got = Feed(ThinkingMode::kThinking, true, {text});
  EXPECT_EQ(got.reasoning, strict->reasoning_content);
  EXPECT_EQ(got.content, strict->content);
  ASSERT_EQ(got.calls.size(), strict->tool_calls.size());
  EXPECT_EQ(got.calls[0].second, strict->tool_calls[0].arguments);
}

}  // namespace
}  // namespace flotilla
