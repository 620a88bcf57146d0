// Tokenizer against the published and derived id vectors and the chat fixtures' ids;
// streaming detokenization; refused inputs.
#include "tokenizer/tokenizer.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "tokenizer/utf8.h"
#include "gtest/gtest.h"
#include "tests/tokenizer/test_data.h"

namespace flotilla {
namespace {

using testing::ProjectTokenizer;
using testing::ReadFileOrDie;
using testing::ReadJsonOrDie;
using testing::RepoPath;

std::vector<int32_t> Ids(const nlohmann::ordered_json& j) { return j.get<std::vector<int32_t>>(); }

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

void CheckVectorFile(const std::string& file) {
  const auto doc = ReadJsonOrDie(RepoPath("tests/data/tokenizer/" + file));
  const Tokenizer& tok = ProjectTokenizer();
  ASSERT_EQ(doc["cases"].size(), doc["count"].get<size_t>());
  for (size_t i = 0; i < doc["cases"].size(); ++i) {
    const auto& c = doc["cases"][i];
    const std::string text = c["text"];
    const std::vector<int32_t> want = Ids(c["ids"]);
    auto got = tok.Encode(text);
    ASSERT_TRUE(got.ok()) << file << " case " << i << ": " << Msg(got.status());
    EXPECT_EQ(*got, want) << file << " case " << i << " text: " << text;
    auto back = tok.Decode(want);
    ASSERT_TRUE(back.ok()) << Msg(back.status());
    EXPECT_EQ(*back, text) << file << " case " << i;
  }
}

TEST(TokenizerTest, PublishedVectors) { CheckVectorFile("published.json"); }
TEST(TokenizerTest, DerivedVectors) { CheckVectorFile("derived.json"); }

TEST(TokenizerTest, ChatFixturePromptIds) {
  const Tokenizer& tok = ProjectTokenizer();
  for (int n = 1; n <= 4; ++n) {
    const std::string base = RepoPath("tests/data/chat-encoding/test_output_" + std::to_string(n));
    const std::string text = ReadFileOrDie(base + ".txt");
    const auto doc = ReadJsonOrDie(base + ".ids.json");
    const std::vector<int32_t> want = Ids(doc["ids"]);
    ASSERT_EQ(want.size(), doc["num_tokens"].get<size_t>());
    auto got = tok.Encode(text);
    ASSERT_TRUE(got.ok()) << Msg(got.status());
    EXPECT_EQ(*got, want) << "fixture " << n;
    auto back = tok.Decode(want);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, text) << "fixture " << n;
  }
}

TEST(TokenizerTest, SpecialTokensAreSingleIdsAndNoBosIsAdded) {
  const Tokenizer& tok = ProjectTokenizer();
  const std::pair<const char*, int32_t> cases[] = {
      {"<｜begin▁of▁sentence｜>", 0},
      {"<｜end▁of▁sentence｜>", 1},
      {"<｜User｜>", 128803},
      {"<｜Assistant｜>", 128804},
      {"<think>", 128821},
      {"</think>", 128822},
      {"｜DSML｜", 128825},
      {"<｜latest_reminder｜>", 128828},
      {"<｜action｜>", 128829},
      {"<｜read_url｜>", 128845},
  };
  for (const auto& [text, id] : cases) {
    auto got = tok.Encode(text);
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(*got, std::vector<int32_t>{id}) << text;
    EXPECT_EQ(tok.AddedTokenId(text), id);
  }
  EXPECT_EQ(tok.Encode("")->size(), 0u);
  EXPECT_EQ(tok.vocab_size(), 129280);
  // The DSML tags are text around the ｜DSML｜ token.
  EXPECT_EQ(*tok.Encode("\n\n<｜DSML｜tool_calls>\n"),
            (std::vector<int32_t>{271, 30, 128825, 72461, 4941, 12548, 1018}));
}

TEST(TokenizerTest, SkipSpecialOnDecode) {
  const Tokenizer& tok = ProjectTokenizer();
  const std::vector<int32_t> ids = {0, 128803, 30594, 1};  // BOS <｜User｜> 你好 EOS
  EXPECT_EQ(*tok.Decode(ids), "<｜begin▁of▁sentence｜><｜User｜>你好<｜end▁of▁sentence｜>");
  // BOS/EOS are special; <｜User｜> is an added token that is not flagged special.
  EXPECT_EQ(*tok.Decode(ids, /*skip_special=*/true), "<｜User｜>你好");
}

// Streams `ids` one at a time; every chunk must be well-formed UTF-8.
std::string Stream(const Tokenizer& tok, const std::vector<int32_t>& ids, bool* held_some) {
  StreamingDetokenizer detok(&tok);
  std::string all;
  for (const int32_t id : ids) {
    std::string chunk;
    EXPECT_TRUE(detok.Push(id, &chunk).ok());
    EXPECT_TRUE(utf8::IsValid(chunk)) << "chunk for id " << id;
    if (detok.num_held_bytes() > 0) *held_some = true;
    all += chunk;
  }
  std::string tail;
  detok.Finish(&tail);
  EXPECT_TRUE(tail.empty());
  return all + tail;
}

TEST(StreamingDetokenizerTest, VectorsStreamToTheirText) {
  const Tokenizer& tok = ProjectTokenizer();
  bool held_some = false;
  for (const char* file : {"published.json", "derived.json"}) {
    const auto doc = ReadJsonOrDie(RepoPath(std::string("tests/data/tokenizer/") + file));
    for (const auto& c : doc["cases"]) {
      EXPECT_EQ(Stream(tok, Ids(c["ids"]), &held_some), c["text"].get<std::string>());
    }
  }
  EXPECT_TRUE(held_some) << "no vector splits a character across tokens";
}

TEST(StreamingDetokenizerTest, HoldsBytesOfUnfinishedCharacters) {
  const Tokenizer& tok = ProjectTokenizer();
  // "你" is E4 BD A0 and "😀" is F0 9F 98 80: feed them one byte token at a time.
  for (const std::string ch : {"你", "😀", "é"}) {
    StreamingDetokenizer detok(&tok);
    std::string out;
    for (size_t i = 0; i < ch.size(); ++i) {
      const int32_t id = tok.ByteTokenId(static_cast<uint8_t>(ch[i]));
      ASSERT_GE(id, 0);
      ASSERT_TRUE(detok.Push(id, &out).ok());
      if (i + 1 < ch.size()) {
        EXPECT_EQ(out, "") << "emitted part of a character";
        EXPECT_EQ(detok.num_held_bytes(), i + 1);
      }
    }
    EXPECT_EQ(out, ch);
    EXPECT_EQ(detok.num_held_bytes(), 0u);
  }
}

TEST(StreamingDetokenizerTest, BrokenSequencesBecomeReplacementCharacters) {
  const Tokenizer& tok = ProjectTokenizer();
  const std::string fffd = "\xEF\xBF\xBD";
  auto byte = [&](uint8_t b) { return tok.ByteTokenId(b); };
  {
    // A lead byte followed by ASCII: the lead can no longer complete.
    StreamingDetokenizer detok(&tok);
    std::string out;
    ASSERT_TRUE(detok.Push(byte(0xE4), &out).ok());
    EXPECT_EQ(out, "");
    ASSERT_TRUE(detok.Push(byte('A'), &out).ok());
    EXPECT_EQ(out, fffd + "A");
  }
  {
    // A stray continuation byte is replaced at once.
    StreamingDetokenizer detok(&tok);
    std::string out;
    ASSERT_TRUE(detok.Push(byte(0x80), &out).ok());
    EXPECT_EQ(out, fffd);
  }
  {
    // The stream ends inside a character: one U+FFFD for the unfinished sequence.
    StreamingDetokenizer detok(&tok);
    std::string out;
    ASSERT_TRUE(detok.Push(byte(0xE4), &out).ok());
    ASSERT_TRUE(detok.Push(byte(0xBD), &out).ok());
    EXPECT_EQ(out, "");
    detok.Finish(&out);
    EXPECT_EQ(out, fffd);
  }
  // Decode agrees with the stream.
  EXPECT_EQ(*tok.Decode(std::vector<int32_t>{byte(0xE4), byte(0xBD)}), fffd);
  EXPECT_EQ(*tok.Decode(std::vector<int32_t>{byte(0xE4), byte('A')}), fffd + "A");
}

TEST(TokenizerTest, IdsOutsideTheVocabularyAreRefused) {
  const Tokenizer& tok = ProjectTokenizer();
  auto r = tok.Decode(std::vector<int32_t>{5, 129280});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(Msg(r.status()).find("129280"), std::string::npos) << Msg(r.status());
  EXPECT_NE(Msg(r.status()).find("vocab_size 129280"), std::string::npos) << Msg(r.status());
  EXPECT_FALSE(tok.Decode(std::vector<int32_t>{-1}).ok());
  StreamingDetokenizer detok(&tok);
  std::string out;
  EXPECT_FALSE(detok.Push(200000, &out).ok());
}

TEST(TokenizerTest, SmallerModelVocabularyLimitsIds) {
  auto tok = Tokenizer::FromFile(RepoPath("data/tokenizer/tokenizer.json"));
  ASSERT_TRUE(tok.ok());
  ASSERT_TRUE((*tok)->SetModelVocabSize(1000).ok());
  auto r = (*tok)->Decode(std::vector<int32_t>{1500});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(Msg(r.status()).find("vocab_size 1000"), std::string::npos) << Msg(r.status());
  EXPECT_TRUE((*tok)->Encode("a").ok());      // id 67
  EXPECT_FALSE((*tok)->Encode("你好").ok());  // id 30594
  EXPECT_FALSE((*tok)->SetModelVocabSize(0).ok());
}

TEST(TokenizerTest, InvalidUtf8IsRefused) {
  const Tokenizer& tok = ProjectTokenizer();
  auto r = tok.Encode(std::string("ok\xC3(", 4));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(Msg(r.status()).find("byte offset 2"), std::string::npos) << Msg(r.status());
  EXPECT_FALSE(tok.Encode(std::string("\xED\xA0\x80", 3)).ok());  // a surrogate
}

TEST(TokenizerTest, LongPiecesUseTheSameMerges) {
  // Pieces longer than the small-word path (64 bytes) and longer than the cache limit.
  const Tokenizer& tok = ProjectTokenizer();
  std::string long_word(300, 'a');
  std::string cjk;
  for (int i = 0; i < 60; ++i) cjk += "深度求索公司";
  for (const std::string& text : {long_word, cjk, std::string(1000, ' ') + "x"}) {
    auto ids = tok.Encode(text);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(*tok.Decode(*ids), text);
    // Encoding twice (second time from the cache where eligible) gives the same ids.
    EXPECT_EQ(*tok.Encode(text), *ids);
  }
}

TEST(TokenizerTest, ConcurrentEncodesAgree) {
  // Encode is const and thread-safe (shared word cache, per-thread scratch).
  const Tokenizer& tok = ProjectTokenizer();
  const auto doc = ReadJsonOrDie(RepoPath("tests/data/tokenizer/derived.json"));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        for (const auto& c : doc["cases"]) {
          auto ids = tok.Encode(c["text"].get<std::string>());
          if (!ids.ok() || *ids != Ids(c["ids"])) ++mismatches[t];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

class ModelDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("flotilla_tok_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
      std::filesystem::copy_file(RepoPath(std::string("data/tokenizer/") + f), dir_ / f,
                                 std::filesystem::copy_options::overwrite_existing);
    }
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Write(const char* name, const std::string& text) {
    std::ofstream(dir_ / name, std::ios::binary) << text;
  }
  std::filesystem::path dir_;
};

TEST_F(ModelDirTest, ReadsVocabSizeAndSpecialTokens) {
  Write("config.json", R"({"vocab_size": 129280, "hidden_size": 64})");
  auto tok = Tokenizer::FromModelDir(dir_.string());
  ASSERT_TRUE(tok.ok()) << Msg(tok.status());
  EXPECT_EQ((*tok)->model_vocab_size(), 129280);
  EXPECT_EQ((*tok)->bos_id(), 0);
  EXPECT_EQ((*tok)->eos_id(), 1);
}

TEST_F(ModelDirTest, WithoutConfigTheTokenizerSizeLimitsIds) {
  auto tok = Tokenizer::FromModelDir(dir_.string());
  ASSERT_TRUE(tok.ok()) << Msg(tok.status());
  EXPECT_EQ((*tok)->model_vocab_size(), 129280);
}

TEST_F(ModelDirTest, RefusesATokenizerThatWouldAddBos) {
  Write("tokenizer_config.json", R"({"add_bos_token": true})");
  auto tok = Tokenizer::FromModelDir(dir_.string());
  ASSERT_FALSE(tok.ok());
  EXPECT_NE(Msg(tok.status()).find("add_bos_token"), std::string::npos);
}

TEST_F(ModelDirTest, MissingTokenizerJsonIsNotFound) {
  std::filesystem::remove(dir_ / "tokenizer.json");
  auto tok = Tokenizer::FromModelDir(dir_.string());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
}

TEST(TokenizerTest, MalformedTokenizerJsonIsRefused) {
  EXPECT_FALSE(Tokenizer::FromJsonText("{").ok());
  EXPECT_FALSE(Tokenizer::FromJsonText("{}").ok());
  auto r = Tokenizer::FromJsonText(
      R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]},
          "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false},
          "decoder": {"type": "ByteLevel"}})");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(Msg(r.status()).find("merge #0"), std::string::npos) << Msg(r.status());
  auto unigram = Tokenizer::FromJsonText(
      R"({"model": {"type": "Unigram", "vocab": {}, "merges": []}, "decoder": {"type": "ByteLevel"}})");
  EXPECT_EQ(unigram.status().code(), absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace flotilla
