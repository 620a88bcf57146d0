#include <algorithm>

#include "kernels/cuda/attention_ops.h"

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

int64_t KvUnpackPagedBlocks(const KvUnpackPagedParams& p) {
  return std::clamp<int64_t>(p.max_rows, 1, 65536);
}

}  // namespace flotilla::kernels::cuda
