// Sparse attention over the packed FP8 KV pages on the GPU against the CPU backend's
// SparseAttention on the unpacked rows (label cuda; skips without a GPU).
//
// Tolerance: the q·k dots and the P·V sums run in the tensor core's accumulation order, exp is
// the device expf, and lists longer than one chunk are merged (sparse_attention.h); so a
// probability may round to a neighbouring bf16 (2^-7 relative at most) and the output to a
// neighbouring bf16. Each output element is held to
//   |gpu - cpu| <= 2^-6 · Σ_i p_i·|v_i,c| / L + 2^-8 · |cpu|
// with p_i, L the softmax weights (sink included) computed in double from the inputs. A wrong
// row, a missed sink or a wrong scale is off by the size of a whole term. NaN outputs match.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "kernels/cuda/kv_paging.h"
#include "kernels/cuda/sparse_attention.h"
#include "kernels/ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace flotilla::kernels::cuda {
namespace {

using testing::Download;
using testing::HaveGpu;
using testing::Upload;

struct Case {
  int64_t nope = 448, rope = 64, heads = 8;
  int64_t page_bytes = 4096, per_page = 7, entry_bytes = 584;
  int64_t window_entries = 128, compressed = 1000;  // table sizes of each sequence
  int64_t sequences = 1, tokens = 1, list_len = 0;
  uint32_t seed = 1;
  int64_t dim() const { return nope + rope; }
};

// The pool and page tables of `sequences` sequences (token t belongs to sequence t % sequences),
// entries written (random rows, packed by the CPU backend) only where a list reads them.
struct Pool {
  Case c;
  std::mt19937 rng;
  std::vector<uint8_t> bytes;
  std::vector<int32_t> page_ids;
  std::vector<int64_t> window_begin, compressed_begin;  // per sequence
  std::vector<bool> written;                            // per entry slot of the pool

  explicit Pool(const Case& cs) : c(cs), rng(cs.seed) {
    const int64_t wp = (c.window_entries + c.per_page - 1) / c.per_page;
    const int64_t cp = (c.compressed + c.per_page - 1) / c.per_page;
    const int64_t pages = c.sequences * (wp + cp) + 3;
    std::vector<int32_t> order(pages);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    int64_t next = 0;
    for (int64_t s = 0; s < c.sequences; ++s) {
      window_begin.push_back(int64_t(page_ids.size()));
      for (int64_t i = 0; i < wp; ++i) page_ids.push_back(order[next++]);
      compressed_begin.push_back(int64_t(page_ids.size()));
      for (int64_t i = 0; i < cp; ++i) page_ids.push_back(order[next++]);
    }
    bytes.assign(size_t(pages * c.page_bytes), 0);
    written.assign(size_t(pages * c.per_page), false);
  }

  KvListTables Tables(int64_t seq) const {
    KvListTables t;
    t.window_ids = page_ids.data() + window_begin[seq];
    t.compressed_ids = page_ids.data() + compressed_begin[seq];
    t.window_entries = c.window_entries;
    t.entries_per_page = c.per_page, t.page_bytes = c.page_bytes, t.entry_bytes = c.entry_bytes;
    return t;
  }

  // Writes a random entry at list index idx of sequence seq unless one is there.
  void Ensure(int64_t seq, int32_t idx) {
    const int64_t off = KvListEntryOffset(Tables(seq), idx);
    const int64_t slot = (off / c.page_bytes) * c.per_page + (off % c.page_bytes) / c.entry_bytes;
    if (written[slot]) return;
    written[slot] = true;
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const float scale = std::ldexp(1.0f, int(rng() % 5) - 2);
    std::vector<bf16> row(c.dim());
    for (auto& v : row) v = F32ToBf16(normal(rng) * scale);
    KvPackParams pack;
    pack.rows = 1, pack.nope = c.nope, pack.rope = c.rope, pack.entry_bytes = c.entry_bytes;
    pack.x = row.data(), pack.ldx = c.dim(), pack.entries = bytes.data() + off;
    PackKvEntries(pack);
  }

  std::vector<bf16> Row(int64_t seq, int32_t idx) const {
    std::vector<bf16> row(c.dim());
    KvUnpackParams unpack;
    unpack.rows = 1, unpack.nope = c.nope, unpack.rope = c.rope, unpack.entry_bytes = c.entry_bytes;
    unpack.entries = bytes.data() + KvListEntryOffset(Tables(seq), idx);
    unpack.x = row.data(), unpack.ldx = c.dim();
    UnpackKvEntries(unpack);
    return row;
  }
};

using ListFn = std::function<std::vector<int32_t>(int64_t token, std::mt19937& rng)>;

// Runs the case on the GPU and checks every output against the CPU backend. `edit` may change
// the pool after the lists' entries are written (to plant NaN groups, say).
void Check(const Case& c, const ListFn& list_of,
           const std::function<void(Pool&, const std::vector<int32_t>&)>& edit = nullptr) {
  Pool pool(c);
  std::mt19937 rng(c.seed * 7 + 1);
  std::vector<int32_t> idx;
  for (int64_t t = 0; t < c.tokens; ++t) {
    std::vector<int32_t> l = list_of(t, rng);
    ASSERT_EQ(int64_t(l.size()), c.list_len);
    ASSERT_GE(l[0], 0);
    for (int32_t i : l) {
      if (i >= 0) pool.Ensure(t % c.sequences, i);
    }
    idx.insert(idx.end(), l.begin(), l.end());
  }
  if (edit) edit(pool, idx);
  const int64_t dim = c.dim();
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<bf16> q(c.tokens * c.heads * dim);
  for (auto& v : q) v = F32ToBf16(normal(rng));
  std::vector<float> sink(c.heads);
  for (auto& s : sink) s = normal(rng) + 1.0f;
  const float scale = 1.0f / std::sqrt(float(dim));

  std::vector<int64_t> window_begin(c.tokens), compressed_begin(c.tokens);
  for (int64_t t = 0; t < c.tokens; ++t) {
    window_begin[t] = pool.window_begin[t % c.sequences];
    compressed_begin[t] = pool.compressed_begin[t % c.sequences];
  }
  SparseAttentionParams p;
  uint8_t* d_pool = Upload(pool.bytes);
  int32_t* d_ids = Upload(pool.page_ids);
  int64_t* d_wb = Upload(window_begin);
  int64_t* d_cb = Upload(compressed_begin);
  int32_t* d_idx = Upload(idx);
  bf16* d_q = Upload(q);
  float* d_sink = Upload(sink);
  bf16* d_out = Upload(std::vector<bf16>(q.size(), bf16(0x7fa1)));  // poisoned
  p.q = d_q, p.ldq = c.heads * dim;
  p.pool = d_pool, p.page_bytes = c.page_bytes, p.entry_bytes = c.entry_bytes;
  p.entries_per_page = c.per_page, p.nope = c.nope, p.rope = c.rope;
  p.page_ids = d_ids, p.window_begin = d_wb, p.compressed_begin = d_cb;
  p.window_entries = c.window_entries;
  p.idx = d_idx, p.list_len = c.list_len, p.tokens = c.tokens;
  p.sink = d_sink, p.num_heads = c.heads, p.scale = scale;
  p.out = d_out, p.ldo = c.heads * dim;
  ASSERT_EQ(CheckSparseAttention(p), nullptr);
  void* workspace = nullptr;
  ASSERT_EQ(cudaMalloc(&workspace, std::max<size_t>(16, SparseAttentionWorkspaceBytes(p))),
            cudaSuccess);
  ASSERT_EQ(LaunchSparseAttention(p, workspace, nullptr), 0);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<bf16> got = Download(d_out, q.size());
  for (void* ptr :
       std::vector<void*>{d_pool, d_ids, d_wb, d_cb, d_idx, d_q, d_sink, d_out, workspace}) {
    cudaFree(ptr);
  }

  for (int64_t t = 0; t < c.tokens; ++t) {
    std::vector<std::vector<bf16>> rows(c.list_len);
    std::vector<const bf16*> ptrs(c.list_len, nullptr);
    for (int64_t i = 0; i < c.list_len; ++i) {
      const int32_t e = idx[t * c.list_len + i];
      if (e < 0) continue;
      rows[i] = pool.Row(t % c.sequences, e);
      ptrs[i] = rows[i].data();
    }
    std::vector<bf16> want(c.heads * dim);
    kernels::SparseAttentionParams cpu;
    cpu.q = q.data() + t * c.heads * dim;
    cpu.rows = ptrs.data(), cpu.n = c.list_len, cpu.sink = sink.data();
    cpu.num_heads = c.heads, cpu.dim = dim, cpu.scale = scale, cpu.out = want.data();
    SparseAttention(cpu);
    for (int64_t h = 0; h < c.heads; ++h) {
      // Softmax weights in double.
      std::vector<double> s(c.list_len, -INFINITY);
      double m = -INFINITY;
      for (int64_t i = 0; i < c.list_len; ++i) {
        if (!ptrs[i]) continue;
        double dot = 0;
        for (int64_t d = 0; d < dim; ++d) {
          dot += double(Bf16ToF32(cpu.q[h * dim + d])) * Bf16ToF32(ptrs[i][d]);
        }
        s[i] = dot * scale;
        if (!std::isnan(s[i])) m = std::max(m, s[i]);
      }
      double l = std::exp(double(sink[h]) - m);
      for (int64_t i = 0; i < c.list_len; ++i) l += std::exp(s[i] - m);
      for (int64_t d = 0; d < dim; ++d) {
        const float ref = Bf16ToF32(want[h * dim + d]);
        const float gpu = Bf16ToF32(got[(t * c.heads + h) * dim + d]);
        if (std::isnan(ref)) {
          ASSERT_TRUE(std::isnan(gpu)) << "token " << t << " head " << h << " element " << d;
          continue;
        }
        double weight = 0;
        for (int64_t i = 0; i < c.list_len; ++i) {
          if (ptrs[i]) weight += std::exp(s[i] - m) * std::fabs(Bf16ToF32(ptrs[i][d]));
        }
        const double bound = std::ldexp(weight / l, -6) + std::ldexp(std::fabs(double(ref)), -8);
        ASSERT_LE(std::fabs(double(gpu) - ref), bound)
            << "token " << t << " head " << h << " element " << d << ": gpu " << gpu << " cpu "
            << ref;
      }
    }
  }
}

// The window (ring slots of positions max(0, pos - 127) .. pos) then `topk` distinct compressed
// entries of [0, visible), padded with -1 to list_len.
std::vector<int32_t> WindowThenTopK(int64_t pos, int64_t visible, int64_t topk, int64_t list_len,
                                    std::mt19937& rng) {
  std::vector<int32_t> l;
  for (int64_t p = std::max<int64_t>(0, pos - 127); p <= pos; ++p) l.push_back(int32_t(p % 128));
  std::vector<int32_t> pick(visible);
  std::iota(pick.begin(), pick.end(), 0);
  std::shuffle(pick.begin(), pick.end(), rng);
  for (int64_t i = 0; i < std::min(topk, visible); ++i) l.push_back(int32_t(128 + pick[i]));
  l.resize(list_len, -1);
  return l;
}

TEST(SparseAttentionCuda, DecodeAtV4FlashShape) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  // 64 heads, 128 window rows + top-512 of 4,096 compressed entries: three chunks to merge.
  Case c;
  c.heads = 64, c.compressed = 4096, c.list_len = 640;
  Check(c, [](int64_t, std::mt19937& rng) { return WindowThenTopK(16383, 4096, 512, 640, rng); });
}

TEST(SparseAttentionCuda, PrefillTokensOfTwoSequences) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  // Early positions (short windows, few visible entries), -1 padding, two sequences' tables.
  Case c;
  c.heads = 8, c.compressed = 600, c.sequences = 2, c.tokens = 7, c.list_len = 300, c.seed = 2;
  Check(c, [](int64_t t, std::mt19937& rng) {
    const int64_t pos = 5 + 90 * t;
    return WindowThenTopK(pos, (pos + 1) / 4, 160, 300, rng);
  });
}

TEST(SparseAttentionCuda, SmallHeadDimAndHeadsNotAMultipleOf16) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  Case c;
  c.nope = 64, c.rope = 64, c.entry_bytes = 200, c.per_page = 20, c.heads = 40;
  c.compressed = 90, c.tokens = 3, c.list_len = 70, c.seed = 3;
  Check(c, [](int64_t, std::mt19937& rng) { return WindowThenTopK(20, 90, 40, 70, rng); });
}

TEST(SparseAttentionCuda, OneEntry) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  Case c;
  c.heads = 16, c.list_len = 1, c.tokens = 2, c.seed = 4;
  Check(c, [](int64_t t, std::mt19937&) { return std::vector<int32_t>{int32_t(t)}; });
}

TEST(SparseAttentionCuda, EmptyTopKLeavesWholeChunksEmpty) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  // Three window rows, no compressed entry: the second chunk holds empty slots only.
  Case c;
  c.heads = 32, c.list_len = 384, c.seed = 5;
  Check(c, [](int64_t, std::mt19937& rng) { return WindowThenTopK(2, 0, 512, 384, rng); });
}

TEST(SparseAttentionCuda, NanEntryPoisonsOnlyTheTokensThatReadIt) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  Case c;
  c.heads = 8, c.compressed = 200, c.tokens = 3, c.list_len = 200, c.seed = 6;
  Check(
      c,
      [](int64_t t, std::mt19937& rng) {
        std::vector<int32_t> l = WindowThenTopK(700, 175, 60, 200, rng);
        l.erase(std::remove(l.begin(), l.end(), 128 + 174), l.end());  // the poisoned one
        if (t == 1) l[150] = 128 + 174;
        l.resize(200, -1);
        return l;
      },
      [](Pool& pool, const std::vector<int32_t>&) {
        pool.Ensure(0, 128 + 174);
        const int64_t off = KvListEntryOffset(pool.Tables(0), 128 + 174);
        pool.bytes[off + 448 + 128 + 2] = 0xff;  // scale of group 2: NaN
      });
}

TEST(SparseAttentionCuda, LongContextPageTable) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  // A 1M-token CSA layer: 262,144 compressed entries in 64 KiB pages; the top-512 spread over
  // all of them, the last entry included.
  Case c;
  c.heads = 16, c.page_bytes = 65536, c.per_page = 112, c.compressed = 262144;
  c.list_len = 640, c.seed = 7;
  Check(c, [](int64_t, std::mt19937& rng) {
    std::vector<int32_t> l = WindowThenTopK(1048575, 262144, 512, 640, rng);
    l[200] = 128 + 262143;
    return l;
  });
}

}  // namespace
}  // namespace flotilla::kernels::cuda
