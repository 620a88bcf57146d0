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

KvPageGeometry Geometry(const ModelConfig& c, int64_t page_tokens) {
  absl::StatusOr<KvPageGeometry> g = KvPageGeometry::Make(c, page_tokens);
  EXPECT_TRUE(g.ok()) << g.status();
  return g.ok() ? *g : KvPageGeometry{};
}

TEST(KvPageGeometry, TinyHandWorked) {
  // tiny: ratios {0, 4, 8, 4 | MTP 0}, main entry 200 B, indexer key 68 B, window 32.
  // Per token: 2 CSA x (200 + 68) / 4 + 200 / 8 = 134 + 25 = 159 B.
  // Fixed: windows 4 x 32 x 200 = 25,600 + MTP window 6,400 + compressor state
  //        2 x (2 x 8 x 256 x 4 + 2 x 8 x 256 x 4) + 2 x 8 x 128 x 4 = 73,728 -> 105,728 B.
  const ModelConfig tiny = Tiny();
  KvPageGeometry g = Geometry(tiny, 16);
  EXPECT_EQ(g.page_tokens, 16);
  EXPECT_EQ(g.page_bytes, 2544u);  // 16 x 159
  EXPECT_EQ(g.fixed_bytes, 105728u);
  EXPECT_EQ(g.fixed_pages, 42);  // 105,728 / 2,544 = 41.56
  EXPECT_EQ(g.PagesFor(0), 42);
  EXPECT_EQ(g.PagesFor(1), 43);
  EXPECT_EQ(g.PagesFor(16), 43);
  EXPECT_EQ(g.PagesFor(17), 44);
  EXPECT_EQ(g.ReservationBytes(40), 45u * 2544);
  EXPECT_EQ(g.PagesInPool(100 * 2544 + 2543), 100);

  g = Geometry(tiny, 256);
  EXPECT_EQ(g.page_bytes, 40704u);  // 256 x 159
  EXPECT_EQ(g.fixed_pages, 3);      // 105,728 / 40,704 = 2.6
  EXPECT_EQ(g.ReservationBytes(1000), (3u + 4) * 40704);
}

TEST(KvPageGeometry, V4FlashHandWorked) {
  const ModelConfig flash = Flash();
  // 256 x (21 x (584 + 68) / 4 + 20 x 584 / 128) = 256 x 3,514.25 = 899,648 B.
  KvPageGeometry g = Geometry(flash, 256);
  EXPECT_EQ(g.page_bytes, 899648u);
  // windows 43 x 128 x 584 + MTP window 128 x 584 + compressor state 12,206,080.
  EXPECT_EQ(g.fixed_bytes, 15495168u);
  EXPECT_EQ(g.fixed_pages, 18);  // 15,495,168 / 899,648 = 17.2
  // 1M tokens: 18 + 4,096 pages = 3,701,151,872 B, just above the exact 3,700,453,376 B.
  EXPECT_EQ(g.PagesFor(1048576), 4114);
  EXPECT_EQ(g.ReservationBytes(1048576), 3701151872u);
  EXPECT_EQ(SequenceKvBytesAt(flash, 1048576).Total(), 3700453376u);

  // Rates that are not whole bytes are rounded up once per page.
  EXPECT_EQ(Geometry(flash, 1).page_bytes, 3515u);  // 3,514.25
  EXPECT_EQ(Geometry(flash, 2).page_bytes, 7029u);  // 7,028.5
  EXPECT_EQ(Geometry(flash, 64).page_bytes, 224912u);
}

TEST(KvPageGeometry, ReservationCoversTheExactBytes) {
  for (const ModelConfig& c : {Tiny(), Flash()}) {
    for (int64_t page_tokens : {1, 3, 16, 100, 256}) {
      const KvPageGeometry g = Geometry(c, page_tokens);
      for (int64_t t = 0; t < 3000; t += 7) {
        EXPECT_GE(g.ReservationBytes(t), SequenceKvBytesAt(c, t).Total())
            << "page_tokens " << page_tokens << " tokens " << t;
      }
    }
  }
}

TEST(KvPageGeometry, RefusesWhatCannotBePaged) {
  const ModelConfig tiny = Tiny();
  absl::Status s = KvPageGeometry::Make(tiny, 0).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("page_tokens is 0"));
  ModelConfig flat = tiny;
  flat.compress_ratios = {0, 0, 0, 0, 0};
  s = KvPageGeometry::Make(flat, 16).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("every compress_ratio is 0"));
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
  // Host a: 2 ranks, 2 GiB of weights each, 24 GiB. tp 2: each rank holds pool / 2.
  // Room = 24 - 4 = 20 GiB for 2 shares, so pool / 2 <= 10 GiB: the pool may be 20 GiB.
  // Host b: 2 ranks, 1 GiB each, 64 GiB: pool <= 62 GiB.
  const std::vector<WorkerStats> two_hosts = {worker("a", 2 * gib, 24 * gib),
                                              worker("a", 2 * gib, 24 * gib),
                                              worker("b", gib, 64 * gib), worker("b", gib, 64 * gib)};
  EXPECT_TRUE(CheckKvPoolFitsHosts(20 * gib, 2, two_hosts).ok());
  const absl::Status st = CheckKvPoolFitsHosts(20 * gib + 2, 2, two_hosts);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()),
              HasSubstr("does not fit host 'a': its 2 worker rank(s) hold 4.00 GiB of weights and "
                        "at least 10.00 GiB of KV each (the pool / tp 2), more than its 24.00 GiB "
                        "of memory; the largest pool that fits is 20.00 GiB"));
  EXPECT_THAT(std::string(CheckKvPoolFitsHosts(uint64_t(1) << 40, 1, two_hosts).message()),
              HasSubstr("--kv-pool 1.00 TiB per DP group does not fit host 'a'"));
  // A worker that reports no memory size is not counted.
  EXPECT_TRUE(CheckKvPoolFitsHosts(uint64_t(1) << 40, 1, {worker("c", gib, 0)}).ok());
}

}  // namespace
}  // namespace flotilla
