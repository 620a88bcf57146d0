// The host/device-shared code of the sparse attention kernel (kernels/cuda/kv_paging.h) and the
// host side of its launch, on the CPU: entry decoding bit for bit against the CPU backend's
// UnpackKvEntries, page-table addressing against a pool filled page by page, sizes, refusals.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "kernels/cuda/kv_paging.h"
#include "kernels/cuda/sparse_attention.h"
#include "kernels/ops.h"

namespace flotilla::kernels::cuda {
namespace {

constexpr int64_t kNope = 448, kRope = 64, kEntryBytes = 584;  // V4-Flash (spec §8.2)

TEST(KvPaging, EntryValuesAreUnpackKvEntriesBitForBit) {
  const int64_t rows = 40, dim = kNope + kRope;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<bf16> x(rows * dim);
  for (int64_t r = 0; r < rows; ++r) {
    const float scale = std::ldexp(1.0f, int(r % 40) - 20);  // 2^-20 .. 2^19
    for (int64_t c = 0; c < dim; ++c) x[r * dim + c] = F32ToBf16(normal(rng) * scale);
  }
  x[3 * dim + 70] = 0x7fc0;   // NaN in group 1 of row 3
  x[5 * dim + 500] = 0xffc1;  // NaN in the rope part of row 5: stored as is
  for (int64_t c = 0; c < 64; ++c) x[6 * dim + c] = 0;  // an all-zero group (scale floor)
  x[7 * dim + 2] = F32ToBf16(448.0f * 1024.0f);
  std::vector<uint8_t> packed(rows * kEntryBytes);
  KvPackParams pack;
  pack.rows = rows, pack.nope = kNope, pack.rope = kRope, pack.entry_bytes = kEntryBytes;
  pack.x = x.data(), pack.ldx = dim, pack.entries = packed.data();
  PackKvEntries(pack);
  std::vector<bf16> unpacked(rows * dim);
  KvUnpackParams unpack;
  unpack.rows = rows, unpack.nope = kNope, unpack.rope = kRope, unpack.entry_bytes = kEntryBytes;
  unpack.entries = packed.data(), unpack.x = unpacked.data(), unpack.ldx = dim;
  UnpackKvEntries(unpack);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < dim; ++c) {
      ASSERT_EQ(KvEntryValue(packed.data() + r * kEntryBytes, c, kNope, kRope),
                unpacked[r * dim + c])
          << "row " << r << " element " << c;
    }
  }
  EXPECT_EQ(KvEntryValue(packed.data() + 3 * kEntryBytes, 64, kNope, kRope), kKvNanBf16);
  EXPECT_EQ(KvEntryValue(packed.data() + 5 * kEntryBytes, 500, kNope, kRope), bf16(0xffc1));
}

// A table of 256k entries (a 1M-token CSA layer) in 64 KiB pages spread over a larger pool in
// shuffled order; the expected place of every entry comes from filling the table's pages one
// after the other, slot by slot.
TEST(KvPaging, EveryEntryOfA256kTableLandsWhereThePagesWereFilled) {
  const int64_t page_bytes = 65536, per_page = page_bytes / kEntryBytes;  // 112
  const int64_t entries = 262144, pages = (entries + per_page - 1) / per_page;
  const int64_t pool_pages = pages + 500;
  std::vector<int32_t> pool_order(pool_pages);
  std::iota(pool_order.begin(), pool_order.end(), 0);
  std::shuffle(pool_order.begin(), pool_order.end(), std::mt19937(5));
  const std::vector<int32_t> table(pool_order.begin(), pool_order.begin() + pages);
  // owner[page * per_page + slot] = entry number written there.
  std::vector<int32_t> owner(pool_pages * per_page, -1);
  int32_t next = 0;
  for (int32_t page : table) {
    for (int64_t slot = 0; slot < per_page && next < entries; ++slot) {
      owner[page * per_page + slot] = next++;
    }
  }
  for (int64_t e = 0; e < entries; ++e) {
    const int64_t off = KvEntryOffset(table.data(), e, per_page, page_bytes, kEntryBytes);
    const int64_t page = off / page_bytes, in_page = off % page_bytes;
    ASSERT_EQ(in_page % kEntryBytes, 0) << e;
    ASSERT_LT(in_page / kEntryBytes, per_page) << e;
    ASSERT_EQ(owner[page * per_page + in_page / kEntryBytes], e) << e;
  }
}

TEST(KvPaging, ListIndicesReadTheWindowRingThenTheCompressedEntries) {
  const int64_t page_bytes = 4096, per_page = 7;  // 7 * 584 = 4088
  const std::vector<int32_t> ids = {9,  4,  2,    // window ring: 128 slots need 19 pages...
                                    30, 31, 17};  // (only the first three are read here)
  KvListTables t;
  t.window_ids = ids.data();
  t.compressed_ids = ids.data() + 3;
  t.window_entries = 128;
  t.entries_per_page = per_page, t.page_bytes = page_bytes, t.entry_bytes = kEntryBytes;
  EXPECT_EQ(KvListEntryOffset(t, -1), -1);
  EXPECT_EQ(KvListEntryOffset(t, 0), 9 * 4096);
  EXPECT_EQ(KvListEntryOffset(t, 8), 4 * 4096 + 1 * 584);   // ring slot 8: page 1, slot 1
  EXPECT_EQ(KvListEntryOffset(t, 20), 2 * 4096 + 6 * 584);  // ring slot 20: page 2, slot 6
  EXPECT_EQ(KvListEntryOffset(t, 128), 30 * 4096);          // compressed entry 0
  EXPECT_EQ(KvListEntryOffset(t, 128 + 15), 17 * 4096 + 1 * 584);
}

TEST(SparseAttentionLaunch, SizesAndRefusals) {
  // 64 heads of 512: q and the entry block 64 x 520 bf16 each, scores 64 x 68 f32, probabilities
  // 64 x 72 bf16, 64 rescale factors, 64 offsets.
  EXPECT_EQ(SparseAttentionSharedBytes(64, 512),
            size_t(2 * 64 * 520 * 2 + 64 * 68 * 4 + 64 * 72 * 2 + 64 * 4 + 64 * 8));
  EXPECT_LE(SparseAttentionSharedBytes(64, 512), size_t(227 * 1024));  // Hopper's block limit
  // 8 heads use one 16-row tile.
  EXPECT_EQ(SparseAttentionSharedBytes(8, 512), SparseAttentionSharedBytes(16, 512));
  EXPECT_EQ(SparseAttentionChunks(1), 1);
  EXPECT_EQ(SparseAttentionChunks(640), 3);
  EXPECT_EQ(SparseAttentionChunks(8320), 33);

  alignas(16) static uint8_t buf[64];
  SparseAttentionParams p;
  p.q = reinterpret_cast<const bf16*>(buf);
  p.pool = buf;
  p.page_ids = reinterpret_cast<const int32_t*>(buf);
  p.window_begin = p.compressed_begin = reinterpret_cast<const int64_t*>(buf);
  p.idx = reinterpret_cast<const int32_t*>(buf);
  p.sink = reinterpret_cast<const float*>(buf);
  p.out = reinterpret_cast<bf16*>(buf);
  p.nope = kNope, p.rope = kRope, p.entry_bytes = kEntryBytes;
  p.page_bytes = 65536, p.entries_per_page = 112, p.window_entries = 128;
  p.list_len = 640, p.tokens = 3, p.num_heads = 8, p.scale = 0.0441941738f;
  p.ldq = p.ldo = 8 * 512;
  EXPECT_EQ(CheckSparseAttention(p), nullptr);
  EXPECT_EQ(SparseAttentionWorkspaceBytes(p), size_t(3 * 3 * 8 * 514 * 4));

  auto refused = [](SparseAttentionParams q) { return CheckSparseAttention(q) != nullptr; };
  SparseAttentionParams q = p;
  q.num_heads = 65;
  EXPECT_TRUE(refused(q));
  q = p, q.num_heads = 0;
  EXPECT_TRUE(refused(q));
  q = p, q.nope = 440, q.rope = 72;  // groups of 64
  EXPECT_TRUE(refused(q));
  q = p, q.rope = 128;  // dim 576 > 512
  EXPECT_TRUE(refused(q));
  q = p, q.entry_bytes = 580;  // too small for 448 + 128 + 7
  EXPECT_TRUE(refused(q));
  q = p, q.entries_per_page = 113;  // 113 * 584 > 65536
  EXPECT_TRUE(refused(q));
  q = p, q.list_len = 0;
  EXPECT_TRUE(refused(q));
  q = p, q.ldq = 8 * 512 - 2;
  EXPECT_TRUE(refused(q));
  q = p, q.pool = buf + 4;
  EXPECT_TRUE(refused(q));
  q = p, q.idx = nullptr;
  EXPECT_TRUE(refused(q));
  q = p, q.num_heads = 64, q.ldq = q.ldo = 64 * 512;
  EXPECT_FALSE(refused(q));
}

}  // namespace
}  // namespace flotilla::kernels::cuda
