// KV page arithmetic against hand-computed figures (spec §8.2 packed layout).
#include "coordinator/kv_pages.h"
#include "coordinator/host_memory.h"

#include "common/synthetic.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sharding/capacity.h"
#include "tests/tokenizer/test_data.h"

namespace flotilla {
namespace {

using ::testing::HasSubstr;

ModelConfig Tiny() {
  absl::StatusOr<ModelConfig> c = PresetConfig("tiny");
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

ModelConfig Flash() {
  absl::StatusOr<ModelConfig> c =
      ModelConfig::FromFile(testing::RepoPath("configs/DeepSeek-V4-Flash/config.json"));
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

KvPageGeometry Geometry(const ModelConfig& c, int64_t page_bytes) {
  absl::StatusOr<KvPageGeometry> g = KvPageGeometry::Make(c, page_bytes);
  EXPECT_TRUE(g.ok()) << g.status();
  return g.ok() ? *g : KvPageGeometry{};
}

// Admission counts the pages of the workers' pools: the figures of docs/capacity.md §6.
TEST(KvPageGeometry, TinyHandWorked) {
  // tiny: ratios {0, 4, 8, 4 | MTP 0}, main entry 200 B (20 per 4 KiB page), indexer key 68 B
  // (60 per page), window 32 entries (2 pages). State: CSA 16 + 16 rows of 1,024 B (4 + 4
  // pages), its indexer's the same, ratio 8: 16 rows of 512 B (2 pages).
  const ModelConfig tiny = Tiny();
  const KvPageGeometry g = Geometry(tiny, 4096);
  EXPECT_EQ(g.page_bytes, 4096u);
  EXPECT_EQ(g.fixed_pages, 28);  // windows 5 x 2 + states 2 x 8 + 2
  EXPECT_EQ(g.PagesFor(0), 28);
  EXPECT_EQ(g.PagesFor(3), 28);
  EXPECT_EQ(g.PagesFor(4), 32);  // one CSA entry and key in each CSA layer
  EXPECT_EQ(g.PagesFor(8), 33);  // and the first ratio-8 entry
  // 1,000 positions: 250 entries (13 pages) and keys (5) per CSA layer, 125 ratio-8 entries (7).
  EXPECT_EQ(g.PagesFor(1000), 71);
  EXPECT_EQ(g.ReservationBytes(1000), 71u * 4096);
  EXPECT_EQ(g.PagesInPool(100 * 4096 + 4095), 100);
  EXPECT_EQ(g.PagesInPool(uint64_t(1) << 50), INT32_MAX);  // page ids are int32
}

TEST(KvPageGeometry, V4FlashHandWorked) {
  const ModelConfig flash = Flash();
  const KvPageGeometry g = Geometry(flash, 64 << 10);
  EXPECT_EQ(g.fixed_pages, 290);  // 44 windows x 2 + 21 CSA states x 2 + 20 HCA states x 8
  // 1M tokens: 21 x 2,341 + 20 x 74 main pages, 21 x 273 indexer pages, 290 fixed.
  EXPECT_EQ(g.PagesFor(1048576), 56664);
  EXPECT_EQ(g.ReservationBytes(1048576), 3713531904u);
  EXPECT_EQ(SequenceKvBytesAt(flash, 1048576).Total(), 3700453376u);
}

TEST(KvPageGeometry, ReservationCoversTheExactBytes) {
  for (const ModelConfig& c : {Tiny(), Flash()}) {
    for (int64_t page_bytes : {4096, 10000, 65536, 1 << 20}) {
      const KvPageGeometry g = Geometry(c, page_bytes);
      for (int64_t t = 0; t < 3000; t += 7) {
        EXPECT_GE(g.ReservationBytes(t), SequenceKvBytesAt(c, t).Total())
            << "page_bytes " << page_bytes << " tokens " << t;
      }
    }
  }
}

TEST(KvPageGeometry, RefusesPagesTooSmall) {
  const absl::Status s = KvPageGeometry::Make(Tiny(), 100).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("cannot hold one main KV entry of 200 bytes"));
}

TEST(CheckWorkerKvPools, EveryWorkerHoldsThePagesAdmissionCounts) {
  auto worker = [](int32_t rank, int64_t pages, uint64_t page_bytes) {
    WorkerStats w;
    w.world_rank = rank;
    w.kv_pages_total = pages;
    w.kv_pool_bytes = uint64_t(pages) * page_bytes;
    return w;
  };
  EXPECT_TRUE(CheckWorkerKvPools(256, 4096, {worker(1, 256, 4096), worker(2, 256, 4096)}).ok());
  const absl::Status st =
      CheckWorkerKvPools(256, 4096, {worker(1, 256, 4096), worker(2, 128, 8192)});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()),
              HasSubstr("worker (world rank 2) holds a KV pool of 128 pages of 8192 bytes; "
                        "admission counts 256 pages of 4096 bytes"));
  EXPECT_FALSE(CheckWorkerKvPools(256, 4096, {worker(3, 255, 4096)}).ok());
  // A worker that reports no pool is not counted.
  EXPECT_TRUE(CheckWorkerKvPools(256, 4096, {WorkerStats{}}).ok());
}

TEST(KvPagePool, ReservesAndReleases) {
  KvPagePool pool(10);
  EXPECT_TRUE(pool.TryReserve(4));
  EXPECT_TRUE(pool.TryReserve(6));
  EXPECT_FALSE(pool.TryReserve(1));
  EXPECT_EQ(pool.used(), 10);
  pool.Release(4);
  EXPECT_EQ(pool.free(), 4);
  EXPECT_FALSE(pool.TryReserve(5));
  EXPECT_EQ(pool.used(), 6);
  pool.Release(6);
  EXPECT_EQ(pool.used(), 0);
  EXPECT_EQ(pool.total(), 10);
}

// Issue 13, item 9: --kv-pool 1TiB was accepted on a 24 GiB machine.
TEST(CheckKvPoolFitsHosts, SumsTheWorkersOfEachHost) {
  const uint64_t gib = uint64_t(1) << 30;
  auto worker = [&](const std::string& host, uint64_t weights, uint64_t memory) {
    WorkerStats w;
    w.host = host;
    w.weight_bytes = weights;
    w.host_memory_bytes = memory;
    return w;
  };
  // Host a: 2 ranks, 2 GiB of weights each, 24 GiB; each rank holds the whole pool.
  // Room = 24 - 4 = 20 GiB for 2 pools: the pool may be 10 GiB.
  // Host b: 2 ranks, 1 GiB each, 64 GiB: pool <= 31 GiB.
  const std::vector<WorkerStats> two_hosts = {worker("a", 2 * gib, 24 * gib),
                                              worker("a", 2 * gib, 24 * gib),
                                              worker("b", gib, 64 * gib), worker("b", gib, 64 * gib)};
  EXPECT_TRUE(CheckKvPoolFitsHosts(10 * gib, two_hosts).ok());
  const absl::Status st = CheckKvPoolFitsHosts(10 * gib + 1, two_hosts);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()),
              HasSubstr("does not fit host 'a': its 2 worker rank(s) hold 4.00 GiB of weights and "
                        "at least 10.00 GiB of KV each (the whole pool), more than its 24.00 GiB "
                        "of memory; the largest pool that fits is 10.00 GiB"));
  EXPECT_THAT(std::string(CheckKvPoolFitsHosts(uint64_t(1) << 40, two_hosts).message()),
              HasSubstr("--kv-pool 1.00 TiB per DP group does not fit host 'a'"));
  // A worker that reports no memory size is not counted.
  EXPECT_TRUE(CheckKvPoolFitsHosts(uint64_t(1) << 40, {worker("c", gib, 0)}).ok());
}

}  // namespace
}  // namespace flotilla
