// Arguments of the backend ops: the ops of kernels/ops.h (same math, same bitwise contract; see
// there for each op's definition) with backend spans in place of host pointers. Every tensor is
// a DeviceSpan holding at least the elements its shape and row stride reach; an empty span is
// "not set" where an input is optional. Lists of rows that ops.h passes as host pointer arrays
// are index lists into one or two row buffers here, so that a device can read them.
#pragma once

#include <cstdint>
#include <span>

#include "common/dtype.h"
#include "kernels/device_memory.h"

namespace flotilla::kernels {

template <typename T>
using In = DeviceSpan<const T>;
template <typename T>
using Out = DeviceSpan<T>;

struct ActQuantArgs {
  In<bf16> x{};  // [m, k], row stride ldx
  int64_t ldx = 0;
  int64_t m = 0, k = 0;
  int64_t block = 128;
  Out<fp8> q{};       // [m, k]
  Out<e8m0> scale{};  // [m, k / block]
};

// Fp8SimulateInPlace / Fp4SimulateInPlace.
struct QuantSimulateArgs {
  Out<bf16> x{};  // [rows, ld]; elements [0, n) of each row are rounded in place
  int64_t rows = 0, ld = 0, n = 0;
  int64_t block = 64;
};

struct GemmFp8Args {
  In<fp8> a{};              // [m, k]
  In<e8m0> a_scale{};       // [m, k/128]
  In<fp8> w{};              // [n, k]
  In<e8m0> w_scale{};       // [ceil(n/128), k/128]; exactly one of w_scale / w_scale_f32
  In<float> w_scale_f32{};  // [ceil(n/128), k/128]
  Out<bf16> c{};            // [m, n], row stride ldc
  int64_t ldc = 0;
  int64_t m = 0, n = 0, k = 0;
};

struct GemmFp8Fp4Args {
  In<fp8> a{};         // [m, k]
  In<e8m0> a_scale{};  // [m, k/128]
  In<uint8_t> w{};     // [n, k/2] packed E2M1
  In<e8m0> w_scale{};  // [n, k/32]
  Out<bf16> c{};       // [m, n], row stride ldc
  int64_t ldc = 0;
  int64_t m = 0, n = 0, k = 0;
};

struct GemmBf16Args {
  In<bf16> a{};  // [m, k], row stride lda
  int64_t lda = 0;
  In<bf16> w{};  // [n, k], row stride ldw
  int64_t ldw = 0;
  Out<bf16> c{};  // [m, n], row stride ldc; exactly one of c / c_f32
  Out<float> c_f32{};
  int64_t ldc = 0;
  int64_t m = 0, n = 0, k = 0;
};

struct GemmF32Args {
  In<float> a{};  // [m, k], row stride lda; exactly one of a / a_bf16
  In<bf16> a_bf16{};
  int64_t lda = 0;
  In<float> w{};  // [n, k], row stride ldw; exactly one of w / w_bf16
  In<bf16> w_bf16{};
  int64_t ldw = 0;
  Out<float> c{};  // [m, n], row stride ldc
  int64_t ldc = 0;
  int64_t m = 0, n = 0, k = 0;
};

// y may be the same span as x (in place).
struct RmsNormArgs {
  In<bf16> x{};  // [m, d], row stride ldx
  int64_t ldx = 0;
  In<bf16> w{};  // [d]
  int64_t m = 0, d = 0;
  float eps = 1e-6f;
  Out<bf16> y{};  // [m, d], row stride ldy
  int64_t ldy = 0;
};

struct HeadRmsNormArgs {
  Out<bf16> q{};  // [rows, dim], in place
  int64_t rows = 0, dim = 0;
  float eps = 1e-6f;
};

struct RopeFrequenciesArgs {
  int64_t rope_dim = 0;
  double base = 10000.0;
  bool yarn = false;
  double factor = 1.0;
  int64_t original_max_position = 0;
  double beta_fast = 32.0, beta_slow = 1.0;
  Out<float> freqs{};  // [rope_dim / 2]
};

struct RopeArgs {
  Out<bf16> x{};  // token t, head h at t*ld + h*head_stride; in place
  int64_t ld = 0;
  int64_t head_stride = 0;
  int64_t num_tokens = 0, num_heads = 0;
  int64_t rope_offset = 0, rope_dim = 0;
  In<int64_t> positions{};  // [num_tokens]
  In<float> freqs{};        // [rope_dim / 2]
  bool inverse = false;
};

struct HcPreArgs {
  In<bf16> h{};       // [m, hc, d]
  In<float> fn{};     // [(2+hc)*hc, hc*d]
  In<float> scale{};  // [3]
  In<float> base{};   // [(2+hc)*hc]
  int64_t m = 0, hc = 4, d = 0;
  int64_t sinkhorn_iters = 20;
  float norm_eps = 1e-6f;
  float hc_eps = 1e-6f;
  Out<bf16> x{};      // [m, d]
  Out<float> post{};  // [m, hc]
  Out<float> comb{};  // [m, hc, hc]
};

// h_out must not overlap res.
struct HcPostArgs {
  In<bf16> x{};      // [m, d]
  In<bf16> res{};    // [m, hc, d]
  In<float> post{};  // [m, hc]
  In<float> comb{};  // [m, hc, hc]
  int64_t m = 0, hc = 4, d = 0;
  Out<bf16> h_out{};  // [m, hc, d]
};

struct HcHeadArgs {
  In<bf16> h{};       // [m, hc, d]
  In<float> fn{};     // [hc, hc*d]
  In<float> scale{};  // [1]
  In<float> base{};   // [hc]
  int64_t m = 0, hc = 4, d = 0;
  float norm_eps = 1e-6f;
  float hc_eps = 1e-6f;
  Out<bf16> y{};  // [m, d]
};

// num_entries compressed entries (ops.h CompressPool each): slot s of entry e reads d channels
// of kv and score starting at element slot_offsets[e * n_slots + s].
struct CompressPoolArgs {
  In<float> kv{};              // compressor state values
  In<float> score{};           // compressor state scores, same layout as kv
  In<int64_t> slot_offsets{};  // [num_entries, n_slots] element offsets, each + d <= kv.size()
  int64_t num_entries = 0, n_slots = 0, d = 0;
  Out<float> out{};  // [num_entries, d]
};

struct HadamardArgs {
  Out<bf16> x{};  // [rows, dim], in place; dim a power of two
  int64_t rows = 0, dim = 0;
};

struct IndexerScoreArgs {
  In<bf16> q{};     // [num_heads, dim] of one token
  In<bf16> w{};     // [num_heads]
  In<bf16> keys{};  // [n, dim], row stride ldk
  int64_t ldk = 0;
  int64_t n = 0, num_heads = 0, dim = 0;
  Out<float> scores{};  // [n]
};

// Per row r: the k largest of scores[r * ld_scores, + n), ops.h TopK.
struct TopKArgs {
  In<float> scores{};  // [rows, ld_scores]
  int64_t ld_scores = 0;
  int64_t rows = 1, n = 0, k = 0;
  Out<int32_t> idx{};  // [rows, k]
};

// One token over a list of n KV rows: row_idx[i] = -1 is an empty slot; 0 <= idx < kv rows reads
// kv row idx; kv rows <= idx < kv rows + kv2 rows reads kv2 row idx - kv rows (two buffers: the
// cache and the chunk's own fresh rows, say). The first entry must not be empty. The CPU backend
// checks the indices as it runs; a device backend trusts them.
struct SparseAttentionArgs {
  In<bf16> q{};           // [num_heads, dim]
  In<bf16> kv{};          // [kv rows, dim]
  In<bf16> kv2{};         // [kv2 rows, dim] or empty
  In<int32_t> row_idx{};  // [n]
  int64_t n = 0;
  In<float> sink{};  // [num_heads]
  int64_t num_heads = 0, dim = 0;
  float scale = 0.0f;
  Out<bf16> out{};  // [num_heads, dim]
};

struct RouteArgs {
  In<float> logits{};      // [m, num_experts]
  In<float> bias{};        // [num_experts] (score layers); exactly one of bias / hash_ids
  In<int64_t> hash_ids{};  // [m, ld_hash] (hash layers)
  int64_t ld_hash = 0;
  int64_t m = 0, num_experts = 0, top_k = 0;
  float route_scale = 1.0f;
  Out<int32_t> expert_idx{};  // [m, top_k]
  Out<float> weights{};       // [m, top_k]
};

struct SwiGluArgs {
  In<bf16> gate{};  // [m, inter], row stride ld_in
  In<bf16> up{};    // [m, inter], row stride ld_in
  int64_t ld_in = 0;
  In<float> row_weight{};  // [m] or empty (shared expert)
  int64_t m = 0, inter = 0;
  float limit = 10.0f;
  Out<bf16> out{};  // [m, inter], row stride ld_out
  int64_t ld_out = 0;
};

// MoePermute (ops.h).
struct MoePermuteArgs {
  In<int32_t> expert_idx{};  // [n, k] global expert ids
  int64_t n = 0, k = 0;
  int64_t first_expert = 0, num_experts = 0;
  Out<int64_t> offsets{};  // [num_experts + 1]
  Out<int32_t> order{};    // [n * k]
};

// GatherRows / ScatterRows (ops.h) on byte views (DeviceSpan::as_bytes); strides in bytes. The
// CPU backend checks each index / divisor against the rows of the indexed side as it reads.
struct RowCopyArgs {
  In<uint8_t> src{};
  int64_t ld_src = 0;
  In<int32_t> index{};  // [rows]
  int64_t rows = 0, divisor = 1, row_bytes = 0;
  Out<uint8_t> dst{};
  int64_t ld_dst = 0;
};

struct MoeCombineArgs {
  In<int32_t> expert_idx{};  // [n, k]
  In<bf16> routed{};         // [n * k, d]
  In<bf16> shared{};         // [n, d] or empty
  int64_t n = 0, k = 0, d = 0;
  Out<bf16> out{};  // [n, d]
};

// PackKvEntries / PackIndexerKeys (for the indexer: nope = dim, rope = 0).
struct KvPackArgs {
  int64_t rows = 0, nope = 0, rope = 0;
  int64_t entry_bytes = 0;
  In<bf16> x{};  // [rows, nope + rope], row stride ldx
  int64_t ldx = 0;
  Out<uint8_t> entries{};  // [rows, entry_bytes]
};

// UnpackKvEntries / UnpackIndexerKeys.
struct KvUnpackArgs {
  int64_t rows = 0, nope = 0, rope = 0;
  int64_t entry_bytes = 0;
  In<uint8_t> entries{};  // [rows, entry_bytes]
  Out<bf16> x{};          // [rows, nope + rope], row stride ldx
  int64_t ldx = 0;
};

// ---- model ops (the model's own data movement around the blocks, exact)

// out[r] = table[tokens[r] - first] when first <= tokens[r] < first + num_rows, else zeros: the
// embedding rows of one vocab slice (another rank holds the rest).
struct EmbedRowsArgs {
  In<bf16> table{};      // [num_rows, d]
  In<int32_t> tokens{};  // [n]
  int64_t first = 0, num_rows = 0, n = 0, d = 0;
  Out<bf16> out{};  // [n, d]
};

// out[r, j] = x[r] for j < copies (a row onto each hyper-connection stream).
struct RepeatRowsArgs {
  In<bf16> x{};  // [n, d]
  int64_t n = 0, copies = 1, d = 0;
  Out<bf16> out{};  // [n, copies, d]; must not overlap x
};

// out[r, j, c] = bf16(f32(a[r, c]) + f32(b[r, j, c])): one row added to each of its copies.
struct BroadcastAddArgs {
  In<bf16> a{};  // [n, d]
  In<bf16> b{};  // [n, copies, d]
  int64_t n = 0, copies = 1, d = 0;
  Out<bf16> out{};  // [n, copies, d]; may be b
};

// ConvertBf16ToF32: y = f32(x), exact. ConvertF32ToBf16: y = bf16(x), round to nearest even (NaN
// stays NaN), common/dtype.h's F32ToBf16.
struct ConvertBf16ToF32Args {
  In<bf16> x{};  // [count]
  int64_t count = 0;
  Out<float> y{};  // [count]
};
struct ConvertF32ToBf16Args {
  In<float> x{};  // [count]
  int64_t count = 0;
  Out<bf16> y{};  // [count]
};

// dst row (i * blocks + b) = src row (b * rows + i): [blocks, rows] rows of row_bytes bytes to
// [rows, blocks] (per row, the blocks that an all-gather put one after another).
struct InterleaveRowsArgs {
  In<uint8_t> src{};  // [blocks * rows, row_bytes]
  int64_t blocks = 0, rows = 0, row_bytes = 0;
  Out<uint8_t> dst{};  // [rows * blocks, row_bytes]; must not overlap src
};

// ---- MoE ops

// Route (ops.h) where every row has its own K: row t is routed as a model with
// row_top_k[t] <= top_k experts per token routes it (hash layers: the first row_top_k[t] of its
// hash ids), and its slots past that repeat its first expert with weight 0 (which adds exactly
// nothing to the combine). The CPU backend checks each row_top_k as it reads it.
struct RoutePerRowKArgs {
  In<float> logits{};      // [m, num_experts]
  In<float> bias{};        // [num_experts] (score layers); exactly one of bias / hash_ids
  In<int64_t> hash_ids{};  // [m, ld_hash] (hash layers)
  int64_t ld_hash = 0;
  In<int32_t> row_top_k{};  // [m], each 1..top_k
  int64_t m = 0, num_experts = 0, top_k = 0;
  float route_scale = 1.0f;
  Out<int32_t> expert_idx{};  // [m, top_k]
  Out<float> weights{};       // [m, top_k]
};

// Grouped expert GEMMs over rows grouped by expert (MoePermute's grouping, its offsets read on
// the device): group g holds rows [offsets[g], offsets[g + 1]) of the grouping, and each is
// multiplied by group g's weights in the precision of GemmFp8Fp4 / GemmFp8 / GemmBf16 (ops.h;
// bitwise those: every row's arithmetic is its own). One call runs the rows
// [row_begin, row_begin + rows) of the grouping, held by `a` and `c` from their row 0 (a pass
// of at most a workspace's rows over the whole grouping); rows of the window that no group
// holds are left as they are. The groups' weights are host lists of spans, one per group
// (num_groups = the list's size; offsets has num_groups + 1 entries, non-decreasing, from 0).
struct GroupedGemmFp8Fp4Args {
  In<fp8> a{};                          // [rows, k]
  In<e8m0> a_scale{};                   // [rows, k/128]
  std::span<const In<uint8_t>> w{};     // per group [n, k/2] packed E2M1
  std::span<const In<e8m0>> w_scale{};  // per group [n, k/32]
  In<int64_t> offsets{};                // [num_groups + 1]
  int64_t row_begin = 0, rows = 0;
  Out<bf16> c{};  // [rows, n], row stride ldc
  int64_t ldc = 0;
  int64_t n = 0, k = 0;
};

struct GroupedGemmFp8Args {
  In<fp8> a{};                               // [rows, k]
  In<e8m0> a_scale{};                        // [rows, k/128]
  std::span<const In<fp8>> w{};              // per group [n, k]
  std::span<const In<e8m0>> w_scale{};       // per group [ceil(n/128), k/128]; or
  std::span<const In<float>> w_scale_f32{};  // per group, f32 (exactly one list is given)
  In<int64_t> offsets{};                     // [num_groups + 1]
  int64_t row_begin = 0, rows = 0;
  Out<bf16> c{};  // [rows, n], row stride ldc
  int64_t ldc = 0;
  int64_t n = 0, k = 0;
};

struct GroupedGemmBf16Args {
  In<bf16> a{};  // [rows, k], row stride lda
  int64_t lda = 0;
  std::span<const In<bf16>> w{};  // per group [n, k]
  In<int64_t> offsets{};          // [num_groups + 1]
  int64_t row_begin = 0, rows = 0;
  Out<bf16> c{};  // [rows, n], row stride ldc
  int64_t ldc = 0;
  int64_t n = 0, k = 0;
};

// ---- attention ops

// The compressor state update of one sequence's chunk (spec §6; worker/attention.cc): tokens in
// position order; token p = start_pos + i writes k row i into slot (overlap ? ratio : 0) +
// p % ratio of state_kv and g row i + ape row p % ratio (one f32 add) into the same slot of
// state_score; after each token with (p + 1) % ratio == 0 the next entry is pooled
// (kernels::CompressPool over the ratio slots, or with overlap the channels [0, d) of slots
// [0, ratio) then [d, 2d) of slots [ratio, 2 ratio)) into the next row of `pooled`, its position
// p / ratio * ratio into entry_pos (if set), and with overlap slots [ratio, 2 ratio) move to
// [0, ratio). Entries: CompressorEntries(start_pos, n, ratio).
struct CompressorUpdateArgs {
  In<float> k{};    // [n, width]
  In<float> g{};    // [n, width]
  In<float> ape{};  // [ratio, width]
  int64_t n = 0, width = 0, d = 0, ratio = 0;
  bool overlap = false;  // width == 2 d and (2 ratio) state rows, else width == d, ratio rows
  int64_t start_pos = 0;
  Out<float> state_kv{};     // [state rows, width], updated
  Out<float> state_score{};  // [state rows, width], updated
  Out<float> pooled{};       // [entries, d]
  Out<int64_t> entry_pos{};  // [entries] or empty
};
// Entries a chunk of n tokens from start_pos completes.
inline int64_t CompressorEntries(int64_t start_pos, int64_t n, int64_t ratio) {
  return ratio <= 0 || n <= 0 ? 0 : (start_pos + n) / ratio - start_pos / ratio;
}

// One block of indexer keys folded into each row's running top-k (spec §7 steps 6-7). Row r is
// the chunk's token at position start_pos + r and sees keys j < (start_pos + r + 1) / ratio; of
// this block (keys first_key .. first_key + n_keys) it scores those it sees. Its candidates are
// its picks so far in increasing key order, then the block's keys in order; each block key
// scores kernels::IndexerScores with w_h = bf16(f32(w[r, h]) * w_scale), rounded to bf16; the
// row keeps kernels::TopK of the candidates (min(top_k, candidates)) in TopK's order, with
// their scores. TopK's order is total, so folding blocks in order gives the top-k of all keys.
// A row that sees no key of the block is left as it was. num_picks must be 0 before the first
// block.
struct IndexerTopKArgs {
  In<bf16> q{};  // [rows, num_heads, dim]
  In<bf16> w{};  // [rows, num_heads], unscaled
  float w_scale = 1.0f;
  In<bf16> keys{};  // [n_keys, dim]
  int64_t first_key = 0, n_keys = 0;
  int64_t rows = 0, start_pos = 0, ratio = 0;
  int64_t num_heads = 0, dim = 0, top_k = 0;
  Out<int32_t> picks{};      // [rows, top_k] key indices, updated
  Out<float> pick_scores{};  // [rows, top_k], updated
  Out<int32_t> num_picks{};  // [rows], updated
  // The most keys any call of the step passes (>= n_keys; 0: n_keys): a backend that keeps
  // per-thread scratch reserves it for that once, so later calls allocate nothing.
  int64_t max_keys = 0;
};

// The entries some row picked, each once, in increasing order: entry_slot[j] = the position of
// entry j in entry_idx, or -1 when no row picked it; count[0] = how many (at most max_entries;
// more is an error of the CPU backend, reported by the device backends at the next sync).
struct PickedEntriesArgs {
  In<int32_t> picks{};      // [rows, top_k]
  In<int32_t> num_picks{};  // [rows]
  int64_t rows = 0, top_k = 0, visible = 0, max_entries = 0;
  Out<int32_t> entry_slot{};  // [visible]
  Out<int32_t> entry_idx{};   // [max_entries]
  Out<int32_t> count{};       // [1]
};

// Packed main entries (PackKvEntries' layout) read through a page table and unpacked: row i <
// count[0] of x is table entry units[i] (page page_ids[u / per_page], slot u % per_page, at
// byte page * page_bytes + slot * entry_bytes of `pool`); rows from count[0] to max_rows are
// not written.
struct KvUnpackPagedArgs {
  In<uint8_t> pool{};  // the pool's pages
  int64_t page_bytes = 0, per_page = 0;
  In<int32_t> page_ids{};  // [table pages]
  In<int32_t> units{};     // [max_rows]
  In<int32_t> count{};     // [1]
  int64_t max_rows = 0;
  int64_t nope = 0, rope = 0, entry_bytes = 0;
  Out<bf16> x{};  // [max_rows, nope + rope], row stride ldx
  int64_t ldx = 0;
};

// Sparse attention of a chunk's rows (spec §5.4, §5.5): row r is the token at position p =
// start_pos + r and runs kernels::SparseAttention over its list: window slots t = max(0, p -
// window + 1) .. p (fresh row t - start_pos when t >= start_pos, else ring row t % window), then
// empty slots up to `window`, then its compressed entries: with picks set, entries row
// entry_slot[picks[r, i]] for i < num_picks[r] (CSA); else with ratio > 0, entries rows 0 ..
// (p + 1) / ratio (HCA); else none.
struct ChunkAttentionArgs {
  In<bf16> q{};  // [rows, num_heads, dim], row stride ldq
  int64_t ldq = 0;
  int64_t rows = 0, start_pos = 0, window = 0;
  In<bf16> fresh{};          // [rows, dim]: the chunk's own KV rows
  In<bf16> ring{};           // [window, dim]: the ring before the chunk; empty when start_pos == 0
  int64_t ratio = 0;         // 0: no compressed entries
  In<bf16> entries{};        // [entry rows, dim]
  In<int32_t> picks{};       // [rows, top_k] or empty (HCA)
  In<int32_t> num_picks{};   // [rows]
  In<int32_t> entry_slot{};  // [(start_pos + rows) / ratio]
  int64_t top_k = 0;
  In<float> sink{};  // [num_heads]
  int64_t num_heads = 0, dim = 0;
  float scale = 0.0f;
  Out<bf16> out{};  // [rows, num_heads, dim], row stride ldo
  int64_t ldo = 0;
  // The most compressed rows any call passes a row (>= this call's; 0: this call's): a backend
  // that keeps per-thread lists reserves them for that once, so later calls allocate nothing.
  int64_t max_compressed = 0;
};

}  // namespace flotilla::kernels
