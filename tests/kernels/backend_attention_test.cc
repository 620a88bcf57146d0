// The attention ops of the Backend (kernels/backend_ops.h, "attention ops") on the CPU backend:
// each against a reference written here from the spec's definition over the ops of kernels/ops.h
// called directly (the compressor's slot walk, the indexer's top-k over all keys at once, the
// attention lists of window + compressed rows), bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <span>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/ops.h"
#include "tests/kernels/test_util.h"

namespace flotilla::kernels {
namespace {

using test::Rng;

class AttentionOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto arena = backend_.NewArena("attention ops", int64_t(64) << 20);
    ASSERT_TRUE(arena.ok()) << arena.status().message();
    arena_ = std::move(arena.value());
    queue_ = backend_.NewQueue();
  }
  template <typename T>
  DeviceSpan<T> Up(const std::vector<T>& host) {
    auto span = arena_->Allocate<T>(int64_t(host.size()));
    EXPECT_TRUE(span.ok()) << span.status().message();
    EXPECT_OK(backend_.Upload(*queue_, std::span<const T>(host), span.value()));
    return span.value();
  }
  template <typename T>
  DeviceSpan<T> Filled(int64_t n, T value) {
    auto span = arena_->Allocate<T>(n);
    EXPECT_TRUE(span.ok()) << span.status().message();
    EXPECT_OK(backend_.Fill(*queue_, span.value(), value));
    return span.value();
  }
  template <typename T>
  std::vector<T> Down(DeviceSpan<T> span) {
    std::vector<T> host(size_t(span.size()));
    EXPECT_OK(backend_.Download(*queue_, DeviceSpan<const T>(span), std::span<T>(host)));
    EXPECT_OK(queue_->Synchronize());
    return host;
  }

  CpuBackend backend_;
  std::unique_ptr<Arena> arena_;
  std::unique_ptr<Queue> queue_;
};

// Spec §6 written out: slot writes, pooling at each block end, the overlap shift.
void CompressorReference(const std::vector<float>& k, const std::vector<float>& g,
                         const std::vector<float>& ape, int64_t n, int64_t d, int64_t ratio,
                         bool overlap, int64_t start_pos, std::vector<float>& kv,
                         std::vector<float>& score, std::vector<float>& pooled,
                         std::vector<int64_t>& entry_pos) {
  const int64_t width = overlap ? 2 * d : d;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = start_pos + i, slot = (overlap ? ratio : 0) + p % ratio;
    for (int64_t c = 0; c < width; ++c) {
      kv[slot * width + c] = k[i * width + c];
      score[slot * width + c] = g[i * width + c] + ape[(p % ratio) * width + c];
    }
    if ((p + 1) % ratio != 0) continue;
    std::vector<const float*> kr, gr;
    for (int64_t s = 0; s < ratio; ++s) {
      kr.push_back(&kv[s * width]);
      gr.push_back(&score[s * width]);
    }
    if (overlap) {
      for (int64_t s = ratio; s < 2 * ratio; ++s) {
        kr.push_back(&kv[s * width + d]);
        gr.push_back(&score[s * width + d]);
      }
    }
    std::vector<float> e(d);
    CompressPool(kr.data(), gr.data(), int64_t(kr.size()), d, e.data());
    pooled.insert(pooled.end(), e.begin(), e.end());
    entry_pos.push_back(p / ratio * ratio);
    if (overlap) {
      std::copy(kv.begin() + ratio * width, kv.end(), kv.begin());
      std::copy(score.begin() + ratio * width, score.end(), score.begin());
    }
  }
}

TEST_F(AttentionOpsTest, CompressorUpdateWalksTheSlotsAsTheSpecDoes) {
  Rng rng(21);
  for (const bool overlap : {true, false}) {
    const int64_t ratio = overlap ? 4 : 8, d = 32, width = overlap ? 2 * d : d;
    const int64_t rows = (overlap ? 2 : 1) * ratio;
    // Chunks from unaligned starts: one inside a block, one across several block ends.
    for (const auto& [start, n] : {std::pair<int64_t, int64_t>{5, 2}, {3, 19}, {8, 1}}) {
      const std::vector<float> k = rng.F32(n * width), g = rng.F32(n * width),
                               ape = rng.F32(ratio * width);
      std::vector<float> kv = rng.F32(rows * width), score = rng.F32(rows * width);
      score[1] = -std::numeric_limits<float>::infinity();
      DeviceSpan<float> dkv = Up(kv), dscore = Up(score);
      std::vector<float> pooled;
      std::vector<int64_t> pos;
      CompressorReference(k, g, ape, n, d, ratio, overlap, start, kv, score, pooled, pos);
      const int64_t entries = CompressorEntries(start, n, ratio);
      ASSERT_EQ(entries, int64_t(pos.size()));
      DeviceSpan<float> dpooled = Filled<float>(std::max<int64_t>(entries, 1) * d, 0.0f);
      DeviceSpan<int64_t> dpos = Filled<int64_t>(std::max<int64_t>(entries, 1), -1);
      EXPECT_OK(backend_.CompressorUpdate(*queue_, {.k = Up(k),
                                                    .g = Up(g),
                                                    .ape = Up(ape),
                                                    .n = n,
                                                    .width = width,
                                                    .d = d,
                                                    .ratio = ratio,
                                                    .overlap = overlap,
                                                    .start_pos = start,
                                                    .state_kv = dkv,
                                                    .state_score = dscore,
                                                    .pooled = dpooled,
                                                    .entry_pos = dpos}));
      EXPECT_BITWISE_EQ(Down(dkv), kv);
      EXPECT_BITWISE_EQ(Down(dscore), score);
      std::vector<float> got = Down(dpooled);
      got.resize(size_t(entries * d));
      EXPECT_BITWISE_EQ(got, pooled);
      std::vector<int64_t> got_pos = Down(dpos);
      got_pos.resize(size_t(entries));
      EXPECT_EQ(got_pos, pos);
    }
  }
}

// The top-k of every key a row sees, scored at once (no blocks): what folding blocks must give.
struct TopKWant {
  std::vector<int32_t> picks;
  std::vector<float> scores;
};
TopKWant IndexerTopKReference(const std::vector<bf16>& q, const std::vector<bf16>& w, float w_scale,
                              const std::vector<bf16>& keys, int64_t row, int64_t visible,
                              int64_t heads, int64_t dim, int64_t top_k) {
  std::vector<bf16> ws(heads);
  for (int64_t h = 0; h < heads; ++h) {
    ws[h] = F32ToBf16(Bf16ToF32(w[row * heads + h]) * w_scale);
  }
  std::vector<float> s(visible);
  IndexerScores({.q = q.data() + row * heads * dim,
                 .w = ws.data(),
                 .keys = keys.data(),
                 .ldk = dim,
                 .n = visible,
                 .num_heads = heads,
                 .dim = dim,
                 .scores = s.data()});
  for (float& v : s) v = RoundBf16(v);
  const int64_t k = std::min(top_k, visible);
  TopKWant want;
  want.picks.resize(k);
  TopK(s.data(), visible, k, want.picks.data());
  for (int32_t j : want.picks) want.scores.push_back(s[j]);
  return want;
}

TEST_F(AttentionOpsTest, IndexerTopKOverBlocksIsTheTopKOfAllKeys) {
  Rng rng(22);
  const int64_t heads = 4, dim = 64, ratio = 4, top_k = 12, block = 16;
  const int64_t start = 150, rows = 9;  // rows see 37 .. 39 keys: blocks of 16, 16, 5..7
  const int64_t visible = (start + rows) / ratio;
  const std::vector<bf16> q = rng.Bf16(rows * heads * dim), w = rng.Bf16(rows * heads);
  std::vector<bf16> keys = rng.Bf16(visible * dim);
  // Repeated keys give equal scores: ties across blocks go to the lower index.
  for (int64_t j : {3, 20, 33}) std::copy_n(&keys[7 * dim], dim, &keys[j * dim]);
  const float w_scale = float(1.0 / std::sqrt(double(dim)) / std::sqrt(double(heads)));
  DeviceSpan<bf16> dq = Up(q), dw = Up(w), dkeys = Up(keys);
  DeviceSpan<int32_t> picks = Filled<int32_t>(rows * top_k, -7);
  DeviceSpan<float> scores = Filled<float>(rows * top_k, 0.0f);
  DeviceSpan<int32_t> num = Filled<int32_t>(rows, 0);
  for (int64_t b0 = 0; b0 < visible; b0 += block) {
    const int64_t n_keys = std::min(block, visible - b0);
    EXPECT_OK(backend_.IndexerTopK(*queue_, {.q = dq,
                                             .w = dw,
                                             .w_scale = w_scale,
                                             .keys = dkeys.subspan(b0 * dim, n_keys * dim),
                                             .first_key = b0,
                                             .n_keys = n_keys,
                                             .rows = rows,
                                             .start_pos = start,
                                             .ratio = ratio,
                                             .num_heads = heads,
                                             .dim = dim,
                                             .top_k = top_k,
                                             .picks = picks,
                                             .pick_scores = scores,
                                             .num_picks = num}));
  }
  const std::vector<int32_t> got_picks = Down(picks), got_num = Down(num);
  const std::vector<float> got_scores = Down(scores);
  for (int64_t r = 0; r < rows; ++r) {
    const TopKWant want =
        IndexerTopKReference(q, w, w_scale, keys, r, (start + r + 1) / ratio, heads, dim, top_k);
    ASSERT_EQ(got_num[r], int32_t(want.picks.size())) << "row " << r;
    EXPECT_EQ(std::vector<int32_t>(&got_picks[r * top_k], &got_picks[r * top_k] + got_num[r]),
              want.picks)
        << "row " << r;
    EXPECT_BITWISE_EQ(
        std::vector<float>(&got_scores[r * top_k], &got_scores[r * top_k] + got_num[r]),
        want.scores);
  }
  // A row with more picks than top_k is refused.
  EXPECT_OK(
      backend_.Upload(*queue_, std::span<const int32_t>(std::vector<int32_t>(rows, 13)), num));
  EXPECT_ERROR(backend_.IndexerTopK(*queue_, {.q = dq,
                                              .w = dw,
                                              .keys = dkeys.first(block * dim),
                                              .n_keys = block,
                                              .rows = rows,
                                              .start_pos = start,
                                              .ratio = ratio,
                                              .num_heads = heads,
                                              .dim = dim,
                                              .top_k = top_k,
                                              .picks = picks,
                                              .pick_scores = scores,
                                              .num_picks = num}),
               "IndexerTopK: num_picks[0] = 13; expected 0 to top_k 12");
}

TEST_F(AttentionOpsTest, PickedEntriesAreEachEntryOnceInOrder) {
  // Three rows, top_k 4: picks overlap; row 2 has two.
  const std::vector<int32_t> picks = {9, 2, 5, 0, 5, 7, 2, 9, 3, 7, -1, -1};
  const std::vector<int32_t> num = {4, 4, 2};
  const int64_t visible = 11;
  DeviceSpan<int32_t> slot = Filled<int32_t>(visible, 99), idx = Filled<int32_t>(8, -5),
                      count = Filled<int32_t>(1, 0);
  EXPECT_OK(backend_.PickedEntries(*queue_, {.picks = Up(picks),
                                             .num_picks = Up(num),
                                             .rows = 3,
                                             .top_k = 4,
                                             .visible = visible,
                                             .max_entries = 8,
                                             .entry_slot = slot,
                                             .entry_idx = idx,
                                             .count = count}));
  EXPECT_EQ(Down(count), std::vector<int32_t>{6});
  EXPECT_EQ(Down(idx), (std::vector<int32_t>{0, 2, 3, 5, 7, 9, -5, -5}));
  EXPECT_EQ(Down(slot), (std::vector<int32_t>{0, -1, 1, 2, -1, 3, -1, 4, -1, 5, -1}));
  EXPECT_ERROR(backend_.PickedEntries(*queue_, {.picks = Up(picks),
                                                .num_picks = Up(num),
                                                .rows = 3,
                                                .top_k = 4,
                                                .visible = visible,
                                                .max_entries = 5,
                                                .entry_slot = slot,
                                                .entry_idx = idx,
                                                .count = count}),
               "more than max_entries (5)");
  EXPECT_ERROR(backend_.PickedEntries(*queue_, {.picks = Up(picks),
                                                .num_picks = Up(num),
                                                .rows = 3,
                                                .top_k = 4,
                                                .visible = 8,
                                                .max_entries = 8,
                                                .entry_slot = slot,
                                                .entry_idx = idx,
                                                .count = count}),
               "picks[0] = 9; expected 0 to visible - 1 (7)");
}

TEST_F(AttentionOpsTest, UnpackKvEntriesPagedReadsThroughThePageTable) {
  Rng rng(23);
  const int64_t nope = 448, rope = 64, dim = nope + rope, entry = 584, per_page = 3;
  const int64_t page_bytes = per_page * entry + 40, pages = 6, units = 14;  // 5 table pages
  std::vector<bf16> x = rng.Bf16(units * dim, 4.0);
  Fp8SimulateInPlace(x.data(), units, dim, nope, 64);
  std::vector<uint8_t> packed(units * entry);
  PackKvEntries({.rows = units,
                 .nope = nope,
                 .rope = rope,
                 .entry_bytes = entry,
                 .x = x.data(),
                 .ldx = dim,
                 .entries = packed.data()});
  const std::vector<int32_t> table = {4, 0, 5, 2, 1};
  std::vector<uint8_t> pool(pages * page_bytes, 0xee);
  for (int64_t u = 0; u < units; ++u) {
    std::copy_n(&packed[u * entry], entry,
                &pool[table[u / per_page] * page_bytes + (u % per_page) * entry]);
  }
  // Runs inside a page, across a page end, single units; the last two rows are past count.
  const std::vector<int32_t> list = {0, 1, 2, 3, 5, 6, 7, 8, 13, 1, 1};
  const int64_t count = 9, max_rows = int64_t(list.size()), ldx = dim + 8;
  std::vector<bf16> want(max_rows * ldx, 0x1234);
  for (int64_t i = 0; i < count; ++i) {
    UnpackKvEntries({.rows = 1,
                     .nope = nope,
                     .rope = rope,
                     .entry_bytes = entry,
                     .entries = &packed[list[i] * entry],
                     .x = &want[i * ldx],
                     .ldx = ldx});
  }
  DeviceSpan<bf16> dx = Filled<bf16>(max_rows * ldx, 0x1234);
  KvUnpackPagedArgs args{.pool = Up(pool),
                         .page_bytes = page_bytes,
                         .per_page = per_page,
                         .page_ids = Up(table),
                         .units = Up(list),
                         .count = Up(std::vector<int32_t>{int32_t(count)}),
                         .max_rows = max_rows,
                         .nope = nope,
                         .rope = rope,
                         .entry_bytes = entry,
                         .x = dx,
                         .ldx = ldx};
  EXPECT_OK(backend_.UnpackKvEntriesPaged(*queue_, args));
  EXPECT_BITWISE_EQ(Down(dx), want);
  args.units = Up(std::vector<int32_t>{0, 15, 0, 0, 0, 0, 0, 0, 0, 0, 0});
  EXPECT_ERROR(backend_.UnpackKvEntriesPaged(*queue_, args),
               "UnpackKvEntriesPaged: units[1] = 15; expected 0 to 14");
  args.count = Up(std::vector<int32_t>{12});
  EXPECT_ERROR(backend_.UnpackKvEntriesPaged(*queue_, args), "count 12; expected 0 to max_rows 11");
}

// Per row the reference's list (spec §5.4): W window slots (fresh rows of the chunk, older ones
// from the ring, empty ones), then the compressed rows it sees; SparseAttention called directly.
TEST_F(AttentionOpsTest, ChunkAttentionAttendsTheWindowAndCompressedRows) {
  Rng rng(24);
  const int64_t heads = 4, dim = 64, window = 8, top_k = 5, ld = heads * dim + 16;
  const float scale = float(1.0 / std::sqrt(double(dim)));
  const std::vector<float> sink = rng.F32(heads);
  enum Kind { kWindowOnly, kAllVisible, kPicked };
  for (const Kind kind : {kWindowOnly, kAllVisible, kPicked}) {
    for (const auto& [start, rows] : {std::pair<int64_t, int64_t>{0, 11}, {37, 6}, {70, 1}}) {
      const int64_t ratio = kind == kWindowOnly ? 0 : 4;
      const int64_t visible = ratio ? (start + rows) / ratio : 0;
      const std::vector<bf16> q = rng.Bf16(rows * ld), fresh = rng.Bf16(rows * dim),
                              ring = rng.Bf16(window * dim);
      std::vector<bf16> entries = rng.Bf16(std::max<int64_t>(visible, 1) * dim);
      // CSA: each row picks up to top_k of the entries it sees; entries holds them in slot
      // order (entry_slot), as PickedEntries lays them out.
      std::vector<int32_t> picks(rows * top_k, -1), num(rows, 0), slot(visible, -1);
      if (kind == kPicked) {
        for (int64_t j = 0; j < visible; ++j) slot[j] = int32_t((j * 5) % visible);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t row_visible = (start + r + 1) / ratio;
          num[r] = int32_t(std::min<int64_t>(top_k, row_visible));
          for (int64_t i = 0; i < num[r]; ++i)
            picks[r * top_k + i] = int32_t((r + 3 * i) % row_visible);
        }
      }
      std::vector<bf16> want(rows * ld, 0x0f0f);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t p = start + r;
        std::vector<const bf16*> list;
        for (int64_t t = std::max<int64_t>(0, p - window + 1); t <= p; ++t) {
          list.push_back(t >= start ? &fresh[(t - start) * dim] : &ring[(t % window) * dim]);
        }
        list.resize(window, nullptr);
        if (kind == kAllVisible) {
          for (int64_t j = 0; j < (p + 1) / ratio; ++j) list.push_back(&entries[j * dim]);
        } else if (kind == kPicked) {
          for (int64_t i = 0; i < num[r]; ++i)
            list.push_back(&entries[slot[picks[r * top_k + i]] * dim]);
        }
        SparseAttention({.q = &q[r * ld],
                         .rows = list.data(),
                         .n = int64_t(list.size()),
                         .sink = sink.data(),
                         .num_heads = heads,
                         .dim = dim,
                         .scale = scale,
                         .out = &want[r * ld]});
      }
      DeviceSpan<bf16> out = Filled<bf16>(rows * ld, 0x0f0f);
      ChunkAttentionArgs args{.q = Up(q),
                              .ldq = ld,
                              .rows = rows,
                              .start_pos = start,
                              .window = window,
                              .fresh = Up(fresh),
                              .ring = Up(ring),
                              .ratio = ratio,
                              .entries = Up(entries),
                              .top_k = top_k,
                              .sink = Up(sink),
                              .num_heads = heads,
                              .dim = dim,
                              .scale = scale,
                              .out = out,
                              .ldo = ld};
      if (kind == kPicked) {
        args.picks = Up(picks);
        args.num_picks = Up(num);
        args.entry_slot = Up(slot);
      }
      EXPECT_OK(backend_.ChunkAttention(*queue_, args));
      EXPECT_BITWISE_EQ(Down(out), want) << "kind " << kind << " start " << start;
    }
  }
}

TEST_F(AttentionOpsTest, ArgumentsAreCheckedBeforeIssue) {
  DeviceSpan<float> f = Filled<float>(64, 0.0f);
  EXPECT_ERROR(backend_.CompressorUpdate(*queue_, {.k = f,
                                                   .g = f,
                                                   .ape = f,
                                                   .n = 1,
                                                   .width = 16,
                                                   .d = 16,
                                                   .ratio = 4,
                                                   .overlap = true,
                                                   .state_kv = f,
                                                   .state_score = f}),
               "CompressorUpdate: expected width 32 (2 d with overlap) (got 16)");
  EXPECT_ERROR(backend_.CompressorUpdate(*queue_, {.k = f,
                                                   .g = f,
                                                   .ape = f,
                                                   .n = 4,
                                                   .width = 16,
                                                   .d = 16,
                                                   .ratio = 4,
                                                   .state_kv = f,
                                                   .state_score = f}),
               "CompressorUpdate: pooled is not set; expected 16 elements");
  DeviceSpan<bf16> b = Filled<bf16>(64, 0);
  DeviceSpan<int32_t> i = Filled<int32_t>(8, 0);
  EXPECT_ERROR(backend_.ChunkAttention(*queue_, {.q = b,
                                                 .ldq = 32,
                                                 .rows = 2,
                                                 .start_pos = 3,
                                                 .window = 4,
                                                 .fresh = b,
                                                 .ring = b.first(32),
                                                 .sink = f,
                                                 .num_heads = 2,
                                                 .dim = 16,
                                                 .out = b,
                                                 .ldo = 32}),
               "ChunkAttention: ring has 32 elements; expected at least 64");
  EXPECT_ERROR(backend_.PickedEntries(
                   *queue_, {.picks = i, .num_picks = i, .rows = 2, .top_k = 4, .visible = 3}),
               "PickedEntries: entry_slot is not set; expected 3 elements");
}

}  // namespace
}  // namespace flotilla::kernels
