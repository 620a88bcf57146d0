// The model's KV through the paged pool: pages scattered across the pool give bitwise the logits
// of pages taken in order (and of another page size); every page returns to the pool however a
// sequence ends; a pool that cannot hold a chunk refuses it whole and leaves every other sequence
// as it was.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "common/synthetic.h"
#include "sharding/capacity.h"
#include "worker/model.h"

namespace flotilla {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class Paging : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // Per process: another checkout's run of this test may share the temporary directory.
    dir_ = new std::string(
        (fs::temp_directory_path() / ("flotilla_kv_paging_test_" + std::to_string(getpid())))
            .string());
    auto config = PresetConfig("tiny");
    ASSERT_TRUE(config.ok()) << config.status();
    SyntheticOptions opt;
    opt.seed = 5;
    ASSERT_TRUE(WriteSyntheticCheckpoint(*config, opt, *dir_).ok());
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }

  static std::unique_ptr<Model> Load(uint64_t kv_bytes, int64_t page_bytes) {
    ModelOptions o;
    o.kv_memory_bytes = kv_bytes;
    o.kv_page_bytes = page_bytes;
    auto m = Model::Load(*dir_, o);
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? std::move(*m) : nullptr;
  }

  static std::vector<int32_t> Prompt(int64_t n, int32_t salt) {
    std::vector<int32_t> ids(n);
    for (int64_t i = 0; i < n; ++i) ids[i] = int32_t((i * 7919 + salt * 104729 + 11) % 129280);
    return ids;
  }

  // Runs tokens [from, from + n) of `tokens` on `seq`; returns every position's logits.
  static std::vector<float> Run(const Model& m, SequenceState* seq,
                                const std::vector<int32_t>& tokens, int64_t from, int64_t n,
                                absl::Status* status = nullptr) {
    Model::Chunk ch{seq, std::span<const int32_t>(tokens.data() + from, size_t(n)), true};
    Model::Output out;
    const absl::Status s = m.Forward(std::span<const Model::Chunk>(&ch, 1), &out);
    if (status != nullptr) {
      *status = s;
    } else {
      EXPECT_TRUE(s.ok()) << s;
    }
    return out.logits;
  }

  static bool Consecutive(const std::vector<int32_t>& t) {
    for (size_t i = 1; i < t.size(); ++i)
      if (t[i] != t[i - 1] + 1) return false;
    return true;
  }

  static std::string* dir_;
};
std::string* Paging::dir_ = nullptr;

TEST_F(Paging, ScatteredPagesGiveTheLogitsOfPagesInOrder) {
  // 100 tokens: past the 32-token window, 25 CSA entries and keys, 12 HCA entries.
  const auto tokens = Prompt(100, 1);
  std::vector<float> want;
  {
    auto m = Load(64ull << 20, 64 << 10);
    auto seq = m->NewSequence();
    want = Run(*m, seq.get(), tokens, 0, 100);
    for (const auto& l : seq->pages().layers) {  // alone in a fresh pool: pages in order
      EXPECT_TRUE(Consecutive(l.main) && Consecutive(l.indexer) && Consecutive(l.window));
    }
  }
  // 1 KiB pages: 5 main entries, 15 indexer keys, 1 state row of a CSA compressor per page.
  auto m = Load(16ull << 20, 1024);
  const KvPoolLayout& layout = m->kv_pool().layout();
  ASSERT_EQ(layout.main_per_page, 5);
  ASSERT_EQ(layout.keys_per_page, 15);
  // Other sequences grow in turn with the one under test and some go, so its pages come from
  // all over the pool.
  auto x1 = m->NewSequence(), x2 = m->NewSequence(), x3 = m->NewSequence();
  auto seq = m->NewSequence();
  const auto other = Prompt(200, 2);
  Run(*m, x1.get(), other, 0, 30);
  Run(*m, x2.get(), other, 0, 17);
  Run(*m, x3.get(), other, 0, 41);
  x1.reset();
  std::vector<float> got;
  int64_t pos = 0, turn = 0;
  for (const int64_t n : {9, 1, 1, 13, 7, 1, 22, 3, 1, 1, 30, 11}) {
    const auto part = Run(*m, seq.get(), tokens, pos, n);
    got.insert(got.end(), part.begin(), part.end());
    pos += n;
    Run(*m, x2.get(), other, x2->position(), 1 + turn % 5);
    if (turn == 4) x3.reset();
    ++turn;
  }
  ASSERT_EQ(pos, 100);
  bool scattered = false;
  for (const auto& l : seq->pages().layers) {
    scattered |= !Consecutive(l.main) || !Consecutive(l.indexer) || !Consecutive(l.window);
  }
  EXPECT_TRUE(scattered) << "the test did not scatter the pages";
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * 4), 0);
}

TEST_F(Paging, EveryPageReturnsHoweverASequenceEnds) {
  auto m = Load(16ull << 20, 4096);
  const KvPool& pool = m->kv_pool();
  const KvPoolLayout& layout = pool.layout();
  EXPECT_EQ(pool.pages_used(), 0);
  const auto tokens = Prompt(120, 3);
  {
    auto done = m->NewSequence(), cancelled = m->NewSequence(), failed = m->NewSequence();
    auto never_run = m->NewSequence();
    EXPECT_EQ(pool.pages_used(), 0);  // a sequence holds pages from its first step
    Run(*m, done.get(), tokens, 0, 120);
    Run(*m, cancelled.get(), tokens, 0, 50);  // mid-prefill, then dropped
    Run(*m, failed.get(), tokens, 0, 10);
    EXPECT_EQ(pool.pages_used(), layout.SequencePages(120).Total() +
                                     layout.SequencePages(50).Total() +
                                     layout.SequencePages(10).Total());
    // A step that fails (a token out of range) takes no page and moves nothing.
    std::vector<int32_t> bad = {1, 2, 1 << 30};
    absl::Status s;
    Run(*m, failed.get(), bad, 0, 3, &s);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_EQ(failed->position(), 10);
    cancelled.reset();
    EXPECT_EQ(pool.pages_used(),
              layout.SequencePages(120).Total() + layout.SequencePages(10).Total());
  }
  EXPECT_EQ(pool.pages_used(), 0);
  EXPECT_EQ(pool.pages_free(), pool.num_pages());
}

TEST_F(Paging, AChunkThePoolCannotHoldIsRefusedWholeAndOthersGoOn) {
  const auto a = Prompt(60, 4), b = Prompt(60, 5);
  std::vector<float> want_a;
  {
    auto m = Load(16ull << 20, 4096);
    auto s = m->NewSequence();
    want_a = Run(*m, s.get(), a, 0, 60);
  }
  constexpr int64_t kPage = 1024;
  auto probe = KvPoolLayout::Make(*ModelConfig::FromFile(*dir_ + "/config.json"), kPage);
  ASSERT_TRUE(probe.ok());
  const auto pages_at = [&](int64_t t) { return probe->SequencePages(t).Total(); };
  // Room for A at 60 tokens and B at 20. With A at 40, B cannot grow to 60.
  const int64_t pages = pages_at(60) + pages_at(20);
  ASSERT_GT(pages_at(60) - pages_at(20), pages_at(60) - pages_at(40));
  auto m = Load(uint64_t(pages) * kPage, kPage);
  ASSERT_EQ(m->kv_pool().num_pages(), pages);
  auto sa = m->NewSequence(), sb = m->NewSequence();
  std::vector<float> got_a = Run(*m, sa.get(), a, 0, 40);
  Run(*m, sb.get(), b, 0, 20);
  EXPECT_EQ(m->kv_pool().pages_free(), pages_at(60) - pages_at(40));
  absl::Status s;
  Run(*m, sb.get(), b, 20, 40, &s);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("chunk 0: KV pool:"));
  EXPECT_EQ(sb->position(), 20);
  EXPECT_EQ(m->kv_pool().pages_free(), pages_at(60) - pages_at(40));  // took nothing
  // A goes on to its end and computes what it computes alone.
  const auto rest = Run(*m, sa.get(), a, 40, 20);
  got_a.insert(got_a.end(), rest.begin(), rest.end());
  ASSERT_EQ(got_a.size(), want_a.size());
  EXPECT_EQ(std::memcmp(got_a.data(), want_a.data(), want_a.size() * 4), 0);
  EXPECT_EQ(m->kv_pool().pages_free(), 0);
  // Once A goes, B continues.
  sa.reset();
  Run(*m, sb.get(), b, 20, 40, &s);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(sb->position(), 60);
}

// The indexer reads a chunk's keys a block at a time with a running top-k; any block size picks
// the same entries in the same order. 100 tokens: 25 keys per CSA layer, top-4, so blocks of 8
// (and of 3, not a multiple of the kernels' 8-key tiles) merge up to 9 times per row.
TEST_F(Paging, IndexerBlocksOfAnySizeGiveTheSameLogits) {
  const auto tokens = Prompt(100, 6);
  auto run = [&](int64_t block, int64_t chunk) {
    ModelOptions o;
    o.kv_memory_bytes = 16ull << 20;
    o.indexer_block_keys = block;
    auto m = Model::Load(*dir_, o);
    EXPECT_TRUE(m.ok()) << m.status();
    auto seq = (*m)->NewSequence();
    std::vector<float> all;
    for (int64_t pos = 0; pos < 100; pos += chunk) {
      const auto part = Run(**m, seq.get(), tokens, pos, std::min<int64_t>(chunk, 100 - pos));
      all.insert(all.end(), part.begin(), part.end());
    }
    return all;
  };
  const auto want = run(8192, 100);  // one block
  for (const auto& [block, chunk] :
       std::vector<std::pair<int64_t, int64_t>>{{8, 100}, {3, 100}, {8, 7}, {1, 13}}) {
    const auto got = run(block, chunk);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * 4), 0)
        << "blocks of " << block << ", chunks of " << chunk;
  }
  ModelOptions bad;
  bad.kv_memory_bytes = 16ull << 20;
  bad.indexer_block_keys = 0;
  auto m = Model::Load(*dir_, bad);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("indexer_block_keys is 0"));
}

TEST_F(Paging, APoolThatHoldsNoPageIsAnError) {
  ModelOptions o;
  o.kv_memory_bytes = 1000;
  o.kv_page_bytes = 4096;
  auto m = Model::Load(*dir_, o);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("holds no page of 4096 bytes"));
  o.kv_memory_bytes = 1 << 20;
  o.kv_page_bytes = 100;
  m = Model::Load(*dir_, o);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("cannot hold one main KV entry"));
}

}  // namespace
}  // namespace flotilla
