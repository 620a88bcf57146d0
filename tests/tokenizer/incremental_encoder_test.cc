// IncrementalEncoder against Tokenizer::Encode of the whole text (itself held to the published
// vectors in tokenizer_test): random texts made to stress the pre-tokenizer's splits (runs of
// spaces and newlines, digits, punctuation, CJK, Unicode spaces, added tokens, contractions),
// cut into random pieces that split UTF-8 characters.
#include "tokenizer/incremental_encoder.h"

#include <random>

#include "gtest/gtest.h"
#include "tests/tokenizer/test_data.h"

namespace flotilla {
namespace {

using testing::ProjectTokenizer;

const char* const kFragments[] = {"alpha",
                                  " beta",
                                  "  ",
                                  "   ",
                                  "\t",
                                  "\n",
                                  "\n\n",
                                  "\r\n",
                                  " \n ",
                                  "123",
                                  "4567890",
                                  "3.14",
                                  ",",
                                  ".",
                                  "!?",
                                  "...",
                                  "'s",
                                  "'ll",
                                  " don't",
                                  "(x)",
                                  "{\"k\": [1, 2]}",
                                  "深度求索",
                                  "公司。",
                                  "，",
                                  "　",
                                  "\xC2\xA0",
                                  "é",
                                  "😀",
                                  "Ω",
                                  "<｜begin▁of▁sentence｜>",
                                  "<｜User｜>",
                                  "<｜Assistant｜>",
                                  "<｜end▁of▁sentence｜>",
                                  "<｜",
                                  "｜>",
                                  "_",
                                  "__init__",
                                  "ＡＢＣ",
                                  "x",
                                  "Hello",
                                  " world",
                                  "\u2028",
                                  "-",
                                  "--",
                                  "#",
                                  "$1,000",
                                  "a1b2",
                                  "   \n\t  ",
                                  "\n\n\n\n",
                                  "                "};

std::string RandomText(std::mt19937* rng, size_t num_fragments) {
  std::uniform_int_distribution<size_t> pick(0, std::size(kFragments) - 1);
  std::string text;
  for (size_t i = 0; i < num_fragments; ++i) text += kFragments[pick(*rng)];
  return text;
}

// Encodes `text` fed in random pieces of 1..max_piece bytes.
std::vector<int32_t> EncodeInPieces(const std::string& text, size_t step, size_t max_piece,
                                    std::mt19937* rng, size_t* max_held) {
  IncrementalEncoder enc(&ProjectTokenizer(), step);
  std::uniform_int_distribution<size_t> len(1, max_piece);
  size_t pos = 0;
  *max_held = 0;
  while (pos < text.size()) {
    const size_t n = std::min(len(*rng), text.size() - pos);
    const absl::Status s = enc.Append(std::string_view(text).substr(pos, n));
    EXPECT_TRUE(s.ok()) << s.message();
    *max_held = std::max(*max_held, enc.held_bytes());
    pos += n;
  }
  const absl::Status s = enc.Finish();
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(enc.bytes_in(), static_cast<int64_t>(text.size()));
  return enc.TakeIds();
}

TEST(IncrementalEncoderTest, RandomTextsInRandomPiecesEncodeAsAWhole) {
  std::mt19937 rng(1234);
  const Tokenizer& tok = ProjectTokenizer();
  for (int trial = 0; trial < 600; ++trial) {
    const std::string text = RandomText(&rng, 20 + trial * 3);
    const auto want = tok.Encode(text);
    ASSERT_TRUE(want.ok());
    const size_t step = 16 + trial % 200;
    const size_t max_piece = 1 + (trial * 7) % 97;
    size_t max_held = 0;
    const std::vector<int32_t> got = EncodeInPieces(text, step, max_piece, &rng, &max_held);
    ASSERT_EQ(got, *want) << "trial " << trial << " step " << step << " text:\n" << text;
  }
}

TEST(IncrementalEncoderTest, ProseIsEncodedAsItArrives) {
  // 2 MiB of ordinary prose in 64 KiB pieces: the text held stays near the step size.
  std::string text;
  for (int i = 0; text.size() < (size_t{2} << 20); ++i) {
    text += "The quick brown fox " + std::to_string(i) + " jumps over the lazy dog.\n";
  }
  std::mt19937 rng(7);
  size_t max_held = 0;
  const std::vector<int32_t> got =
      EncodeInPieces(text, IncrementalEncoder::kDefaultStepBytes, 65536, &rng, &max_held);
  EXPECT_EQ(got, *ProjectTokenizer().Encode(text));
  EXPECT_LE(max_held, IncrementalEncoder::kDefaultStepBytes + 65536);
}

TEST(IncrementalEncoderTest, IdsGrowBeforeTheEnd) {
  IncrementalEncoder enc(&ProjectTokenizer(), 1024);
  std::string piece;
  for (int i = 0; i < 200; ++i) piece += "word" + std::to_string(i) + " ";
  ASSERT_TRUE(enc.Append(piece).ok());
  EXPECT_GT(enc.ids().size(), 100u);  // a caller can count tokens before the text ends
  EXPECT_LT(enc.held_bytes(), 1024u);
}

TEST(IncrementalEncoderTest, LongUnsplittableTextStillEncodes) {
  // One whitespace run: no safe cut, so it is held to the end and encoded whole.
  const std::string text = std::string(100000, ' ') + "x";
  std::mt19937 rng(3);
  size_t max_held = 0;
  EXPECT_EQ(EncodeInPieces(text, 1024, 4096, &rng, &max_held), *ProjectTokenizer().Encode(text));
}

TEST(IncrementalEncoderTest, IllFormedUtf8NamesItsOffsetInTheWholeText) {
  std::string text;
  for (int i = 0; i < 500; ++i) text += "word ";
  const size_t bad_at = text.size();
  text += "\xFF tail";
  IncrementalEncoder enc(&ProjectTokenizer(), 256);
  absl::Status s;
  for (size_t pos = 0; pos < text.size() && s.ok(); pos += 100) {
    s = enc.Append(std::string_view(text).substr(pos, 100));
  }
  if (s.ok()) s = enc.Finish();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("byte offset " + std::to_string(bad_at)), std::string::npos)
      << s.message();
}

TEST(IncrementalEncoderTest, AnUnfinishedCharacterAtTheEndIsIllFormed) {
  IncrementalEncoder enc(&ProjectTokenizer(), 16);
  ASSERT_TRUE(enc.Append("abc \xE6\xB7").ok());  // the first two bytes of 深
  const absl::Status s = enc.Finish();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("byte offset 4"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace flotilla
