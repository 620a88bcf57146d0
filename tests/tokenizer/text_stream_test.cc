// Streaming text with stop strings, on the project's real tokenizer.
#include "tokenizer/text_stream.h"

#include <string>
#include <vector>

#include "tokenizer/utf8.h"
#include "gtest/gtest.h"
#include "tests/tokenizer/test_data.h"

namespace flotilla {
namespace {

using ::flotilla::testing::ProjectTokenizer;

std::vector<int32_t> Encode(const std::string& text) {
  absl::StatusOr<std::vector<int32_t>> ids = ProjectTokenizer().Encode(text);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

// Pushes every id; returns the text released per id (the last entry includes Finish unless a
// stop string ended the stream first).
std::vector<std::string> Feed(TextStream& stream, const std::vector<int32_t>& ids) {
  std::vector<std::string> out;
  for (int32_t id : ids) {
    out.emplace_back();
    if (stream.Push(id, &out.back())) return out;
  }
  stream.Finish(&out.back());
  return out;
}

std::string Join(const std::vector<std::string>& parts) {
  std::string all;
  for (const std::string& p : parts) all += p;
  return all;
}

TEST(TextStream, NoStopStringsStreamsTheDecodedText) {
  const std::string text = "Hello, world! Ünïcödé and 中文 text.";
  TextStream stream(&ProjectTokenizer(), {});
  const std::vector<std::string> parts = Feed(stream, Encode(text));
  EXPECT_EQ(Join(parts), text);
  for (const std::string& p : parts) EXPECT_TRUE(utf8::IsValid(p)) << p;
}

// Issue 13, item 8: special tokens can be left out of the text (skip_special_tokens).
TEST(TextStream, SkipSpecialLeavesOutSpecialTokens) {
  // BOS and EOS are special in the project's tokenizer_config.json; "<｜User｜>" is not.
  const std::string text = "<｜begin▁of▁sentence｜>Hi<｜User｜>there<｜end▁of▁sentence｜>";
  const std::vector<int32_t> ids = Encode(text);
  ASSERT_TRUE(ProjectTokenizer().IsSpecial(ids.front()));
  ASSERT_TRUE(ProjectTokenizer().IsSpecial(ids.back()));
  TextStream kept(&ProjectTokenizer(), {});
  EXPECT_EQ(Join(Feed(kept, ids)), text);
  TextStream skipped(&ProjectTokenizer(), {"Hi<｜User｜>th"}, /*skip_special=*/true);
  std::vector<std::string> parts = Feed(skipped, ids);
  EXPECT_TRUE(skipped.stopped());  // the stop string matches the text without BOS
  EXPECT_EQ(Join(parts), "");
  TextStream plain(&ProjectTokenizer(), {}, /*skip_special=*/true);
  EXPECT_EQ(Join(Feed(plain, ids)), "Hi<｜User｜>there");
}

TEST(TextStream, StopStringSplitAcrossTokens) {
  const std::string text = "The quick brown fox jumps over the lazy dog";
  const std::vector<int32_t> ids = Encode(text);
  ASSERT_GE(ids.size(), 6u);
  // "own fox" straddles the " brown" / " fox" tokens.
  TextStream stream(&ProjectTokenizer(), {"own fox"});
  std::vector<std::string> parts = Feed(stream, ids);
  EXPECT_TRUE(stream.stopped());
  EXPECT_EQ(Join(parts), "The quick br");
  EXPECT_LT(parts.size(), ids.size());  // stopped before the end
  // "own" of " brown" was held back as a possible start; " fox" completed the match.
  ASSERT_GE(parts.size(), 2u);
  EXPECT_EQ(parts[parts.size() - 2].substr(parts[parts.size() - 2].size() - 2), "br");
  EXPECT_EQ(parts.back(), "");
}

TEST(TextStream, HeldBackTextIsReleasedWhenTheMatchFails) {
  // "over" is held while "over the moon" could follow, then released by " the lazy".
  TextStream stream(&ProjectTokenizer(), {"over the moon", "zzz"});
  const std::vector<int32_t> ids = Encode("jumps over the lazy dog");
  std::vector<std::string> parts = Feed(stream, ids);
  EXPECT_FALSE(stream.stopped());
  EXPECT_EQ(Join(parts), "jumps over the lazy dog");
  EXPECT_EQ(stream.num_held_bytes(), 0u);
}

TEST(TextStream, FinishReleasesAPartialMatch) {
  TextStream stream(&ProjectTokenizer(), {"dog food"});
  std::string out;
  for (int32_t id : Encode("lazy dog")) EXPECT_FALSE(stream.Push(id, &out));
  EXPECT_EQ(out, "lazy ");  // " dog" might start "dog food"
  EXPECT_FALSE(stream.Finish(&out));
  EXPECT_EQ(out, "lazy dog");
}

TEST(TextStream, EarliestOfSeveralStopStrings) {
  TextStream stream(&ProjectTokenizer(), {"lazy", "fox"});
  const std::vector<std::string> parts =
      Feed(stream, Encode("The quick brown fox jumps over the lazy dog"));
  EXPECT_EQ(Join(parts), "The quick brown ");
}

TEST(TextStream, MultiByteCharacterSplitAcrossTokens) {
  // A character the tokenizer spells with byte tokens: nothing is released until it is whole.
  const std::string clef = "\xF0\x9D\x84\x9E";  // U+1D11E MUSICAL SYMBOL G CLEF
  const std::vector<int32_t> ids = Encode("a" + clef + "b");
  ASSERT_GE(ids.size(), 4u) << "expected the clef to take several byte tokens";
  TextStream stream(&ProjectTokenizer(), {clef + "b"});
  std::vector<std::string> parts = Feed(stream, ids);
  EXPECT_EQ(Join(parts), "a");
  EXPECT_TRUE(stream.stopped());
  for (const std::string& p : parts) EXPECT_TRUE(utf8::IsValid(p));

  TextStream plain(&ProjectTokenizer(), {});
  parts = Feed(plain, ids);
  EXPECT_EQ(Join(parts), "a" + clef + "b");
  int non_empty = 0;
  for (const std::string& p : parts) {
    EXPECT_TRUE(utf8::IsValid(p));
    non_empty += !p.empty();
  }
  EXPECT_LT(non_empty, int(parts.size()));  // some tokens released nothing on their own
}

TEST(TextStream, UnfinishedCharacterAtTheEndBecomesReplacement) {
  const std::vector<int32_t> ids = Encode("\xF0\x9D\x84\x9E");
  ASSERT_GE(ids.size(), 2u);
  TextStream stream(&ProjectTokenizer(), {});
  std::string out;
  EXPECT_FALSE(stream.Push(ids[0], &out));
  EXPECT_EQ(out, "");
  EXPECT_FALSE(stream.Finish(&out));
  EXPECT_EQ(out, "\xEF\xBF\xBD");  // U+FFFD
}

}  // namespace
}  // namespace flotilla
