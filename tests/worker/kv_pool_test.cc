// The worker's paged KV pool: allocation per layer and kind as sharding/kv_pool_layout.h counts,
// exhaustion that takes nothing, release of every page, pages of interleaved sequences kept apart.
#include "worker/kv_pool.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>
#include <span>
#include <vector>

#include "common/synthetic.h"
#include "kernels/cpu/cpu_backend.h"

namespace flotilla {
namespace {

using ::testing::HasSubstr;

KvPoolLayout TinyLayout() {
  absl::StatusOr<ModelConfig> c = PresetConfig("tiny");
  EXPECT_TRUE(c.ok()) << c.status();
  absl::StatusOr<KvPoolLayout> l = KvPoolLayout::Make(*c, 4096);
  EXPECT_TRUE(l.ok()) << l.status();
  return *l;
}

std::vector<int32_t> AllPages(const SequencePageTables& s) {
  std::vector<int32_t> ids;
  for (const auto& l : s.layers) {
    for (const auto* t : {&l.main, &l.indexer, &l.window, &l.state}) {
      ids.insert(ids.end(), t->begin(), t->end());
    }
  }
  return ids;
}

TEST(KvPool, ReservesWhatTheLayoutCountsAndReleasesEverything) {
  kernels::CpuBackend backend;
  // 100 pages and a remainder that makes no page.
  auto pool = KvPool::Create(backend, TinyLayout(), 100 * 4096 + 100);
  ASSERT_TRUE(pool.ok()) << pool.status();
  KvPool& p = **pool;
  EXPECT_EQ(p.num_pages(), 100);
  SequencePageTables a;
  ASSERT_TRUE(p.Reserve(0, &a).ok());
  EXPECT_EQ(a.NumPages(), 28);  // windows 10 + compressor states 18 (hand-worked in sharding)
  ASSERT_TRUE(p.Reserve(1000, &a).ok());
  EXPECT_EQ(a.NumPages(), 71);
  EXPECT_EQ(p.pages_used(), 71);
  ASSERT_TRUE(p.Reserve(500, &a).ok());  // never shrinks
  EXPECT_EQ(a.NumPages(), 71);
  // Per layer as LayerPages says: CSA layer 1 at 1,000 tokens: 13 main + 5 indexer pages.
  EXPECT_EQ(a.layers[1].main.size(), 13u);
  EXPECT_EQ(a.layers[1].indexer.size(), 5u);
  EXPECT_EQ(a.layers[2].main.size(), 7u);
  EXPECT_TRUE(a.layers[0].main.empty());
  const std::vector<int32_t> ids = AllPages(a);
  EXPECT_EQ(std::set<int32_t>(ids.begin(), ids.end()).size(), ids.size());

  p.Release(&a);
  EXPECT_EQ(p.pages_used(), 0);
  EXPECT_EQ(a.NumPages(), 0);
  p.Release(&a);  // twice: nothing left to return
  EXPECT_EQ(p.pages_free(), 100);
}

TEST(KvPool, ExhaustionTakesNothingAndSaysWhatWasShort) {
  kernels::CpuBackend backend;
  auto pool = KvPool::Create(backend, TinyLayout(), 100 * 4096);
  ASSERT_TRUE(pool.ok());
  KvPool& p = **pool;
  SequencePageTables a, b;
  ASSERT_TRUE(p.Reserve(1000, &a).ok());
  const absl::Status st = p.Reserve(1000, &b);
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(st.message(), HasSubstr("71 more pages needed to hold 1000 tokens, 29 of 100 free"));
  EXPECT_EQ(b.NumPages(), 0);
  EXPECT_EQ(p.pages_used(), 71);
  // What fits still does: 3 tokens need only the 28 fixed pages; the 4th completes the first
  // CSA blocks (a main and an indexer page in each of the 2 CSA layers) and no longer fits.
  ASSERT_TRUE(p.Reserve(3, &b).ok());
  EXPECT_EQ(b.NumPages(), 28);
  EXPECT_THAT(p.Reserve(4, &b).message(), HasSubstr("4 more pages needed to hold 4 tokens, 1 of"));
  EXPECT_EQ(b.NumPages(), 28);
  p.Release(&a);
  ASSERT_TRUE(p.Reserve(1000, &b).ok());
  EXPECT_EQ(p.pages_used(), 71);
}

TEST(KvPool, InterleavedSequencesGetScatteredDisjointPages) {
  kernels::CpuBackend backend;
  auto pool = KvPool::Create(backend, TinyLayout(), 200 * 4096);
  ASSERT_TRUE(pool.ok());
  KvPool& p = **pool;
  SequencePageTables a, b;
  for (int64_t t = 0; t <= 1000; t += 100) {
    ASSERT_TRUE(p.Reserve(t, &a).ok());
    ASSERT_TRUE(p.Reserve(t, &b).ok());
  }
  const std::vector<int32_t> pa = AllPages(a), pb = AllPages(b);
  std::set<int32_t> all(pa.begin(), pa.end());
  all.insert(pb.begin(), pb.end());
  EXPECT_EQ(all.size(), pa.size() + pb.size());
  // A's CSA main pages are not one contiguous run: B took pages in between.
  const std::vector<int32_t>& main = a.layers[1].main;
  bool gap = false;
  for (size_t i = 1; i < main.size(); ++i) gap |= main[i] != main[i - 1] + 1;
  EXPECT_TRUE(gap);

  // Pages are disjoint backend memory: write two, read both back.
  auto queue = backend.NewQueue();
  const std::vector<uint8_t> ones(4096, 1), twos(4096, 2);
  ASSERT_TRUE(backend.Upload(*queue, std::span<const uint8_t>(ones), p.Page(pa[0])).ok());
  ASSERT_TRUE(backend.Upload(*queue, std::span<const uint8_t>(twos), p.Page(pb[0])).ok());
  std::vector<uint8_t> back(4096);
  ASSERT_TRUE(backend
                  .Download(*queue, kernels::DeviceSpan<const uint8_t>(p.Page(pa[0])),
                            std::span<uint8_t>(back))
                  .ok());
  ASSERT_TRUE(queue->Synchronize().ok());
  EXPECT_EQ(back, ones);
  p.Release(&a);
  p.Release(&b);
  EXPECT_EQ(p.pages_used(), 0);
}

TEST(KvPool, PoolsThatCannotBeMadeSaySo) {
  kernels::CpuBackend backend;
  auto none = KvPool::Create(backend, TinyLayout(), 4095);
  ASSERT_FALSE(none.ok());
  EXPECT_THAT(none.status().message(), HasSubstr("holds no page of 4096 bytes"));
  kernels::CpuBackend small(1 << 20);
  auto big = KvPool::Create(small, TinyLayout(), 2 << 20);
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(big.status().message(), HasSubstr("(the cpu limit)"));
}

}  // namespace
}  // namespace flotilla
