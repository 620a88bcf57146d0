#include <algorithm>

#include "kernels/cuda/attention_ops.h"
#include "kernels/cuda/indexer.h"

namespace flotilla::kernels::cuda {

const char* CheckPickedEntries(const PickedEntriesParams& p) {
  if (p.rows < 0 || p.top_k <= 0 || p.visible < 0 || p.max_entries < 0) {
    return "picked_entries: rows, visible, max_entries >= 0 and top_k > 0";
  }
  if (p.visible > 0x7fffffff) return "picked_entries: visible entries must fit int32";
  if (!p.entry_slot || !p.count || !p.error || (p.rows > 0 && (!p.picks || !p.num_picks)) ||
      (p.max_entries > 0 && !p.entry_idx)) {
    return "picked_entries: picks, num_picks, entry_slot, entry_idx, count and the error record "
           "must be set";
  }
  return nullptr;
}

const char* CheckKvUnpackPaged(const KvUnpackPagedParams& p) {
  if (p.max_rows < 0 || p.per_page <= 0 || p.page_bytes < p.per_page * p.entry_bytes) {
    return "kv_unpack_paged: max_rows >= 0, per_page > 0, page_bytes >= per_page * entry_bytes";
  }
  if (p.nope <= 0 || p.rope < 0 || p.ldx < p.nope + p.rope) {
    return "kv_unpack_paged: nope > 0, rope >= 0, ldx >= nope + rope";
  }
  if (p.max_rows > 0 && (!p.pool || !p.page_ids || !p.units || !p.count || !p.x || !p.error)) {
    return "kv_unpack_paged: pool, page_ids, units, count, x and the error record must be set";
  }
  return nullptr;
}

namespace {
int64_t PowerOfTwoAtLeast(int64_t n) {
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}
}  // namespace

size_t IndexerTopKSharedBytes(const IndexerTopKParams& p) {
  // q (f32), w (f32), the block's scores (f32), then the winners' keys (u64) and scores (f32).
  const int64_t words = p.num_heads * p.dim + p.num_heads + p.n_keys;
  const int64_t keys = PowerOfTwoAtLeast(p.top_k);
  return size_t((words + 1) / 2 * 2) * 4 + size_t(keys) * (8 + 4);
}

const char* CheckIndexerTopK(const IndexerTopKParams& p) {
  if (p.rows < 0 || p.n_keys < 0 || p.first_key < 0 || p.start_pos < 0 || p.ratio <= 0 ||
      p.num_heads <= 0 || p.dim <= 0 || p.top_k <= 0) {
    return "indexer_top_k: rows, n_keys, first_key, start_pos >= 0; ratio, heads, dim, top_k > 0";
  }
  if (p.top_k > kTopKMax) return "indexer_top_k: top_k at most kTopKMax (4096)";
  if (p.first_key + p.n_keys + p.top_k >= (int64_t(1) << 31)) {
    return "indexer_top_k: key indices must fit int32";
  }
  if (IndexerTopKSharedBytes(p) > 200 * 1024) {
    return "indexer_top_k: q, the key block's scores and the top-k must fit 200 KiB of shared "
           "memory (fewer keys per block)";
  }
  if (p.rows > 0 && p.n_keys > 0 &&
      (!p.q || !p.w || !p.keys || !p.picks || !p.pick_scores || !p.num_picks || !p.error)) {
    return "indexer_top_k: q, w, keys, picks, pick_scores, num_picks and the error record must "
           "be set";
  }
  return nullptr;
}

int64_t KvUnpackPagedBlocks(const KvUnpackPagedParams& p) {
  return std::clamp<int64_t>(p.max_rows, 1, 65536);
}

}  // namespace flotilla::kernels::cuda
