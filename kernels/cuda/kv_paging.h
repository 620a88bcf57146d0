// Addressing and decoding of packed KV entries in the paged pool (spec §8.2 (b); the byte layout
// of kernels::PackKvEntries; the page arithmetic of sharding/kv_pool_layout.h), written once for
// host and device so that the CPU tests check exactly the code the GPU runs.
//
// A pool is pages of page_bytes bytes; a page of main entries holds entries_per_page entries of
// entry_bytes bytes each, entry i of a page at byte i * entry_bytes. A sequence's table of one
// kind (its window ring, or one layer's compressed entries) is a run of page ids; entry e of the
// table lives in page ids[e / entries_per_page] at slot e % entries_per_page.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace flotilla::kernels::cuda {

// Byte offset in the pool of entry `entry` of the table whose page ids start at page_ids.
FLOTILLA_HD int64_t KvEntryOffset(const int32_t* page_ids, int64_t entry, int64_t entries_per_page,
                                  int64_t page_bytes, int64_t entry_bytes) {
  return int64_t(page_ids[entry / entries_per_page]) * page_bytes +
         (entry % entries_per_page) * entry_bytes;
}

// The two tables one attention list reads (the reference's concatenation of window rows and
// compressed rows): list index idx < window_entries is window ring slot idx; idx >=
// window_entries is compressed entry idx - window_entries; idx < 0 is an empty slot (-1).
struct KvListTables {
  const int32_t* window_ids = nullptr;      // this token's window ring page ids
  const int32_t* compressed_ids = nullptr;  // this token's compressed-entry page ids
  int64_t window_entries = 0;               // ring size (sliding_window)
  int64_t entries_per_page = 0, page_bytes = 0, entry_bytes = 0;
};

// Pool byte offset of list index idx, or -1 for an empty slot.
FLOTILLA_HD int64_t KvListEntryOffset(const KvListTables& t, int32_t idx) {
  if (idx < 0) return -1;
  if (idx < t.window_entries) {
    return KvEntryOffset(t.window_ids, idx, t.entries_per_page, t.page_bytes, t.entry_bytes);
  }
  return KvEntryOffset(t.compressed_ids, idx - t.window_entries, t.entries_per_page, t.page_bytes,
                       t.entry_bytes);
}

// The bf16 NaN UnpackKvEntries writes for a group whose scale is 0xFF.
constexpr bf16 kKvNanBf16 = 0x7fc0;

// Element c of a packed main entry `e` (nope FP8 codes, rope bf16 values, ceil(nope/64) UE8M0
// scales) as bf16 — bit for bit UnpackKvEntries' value.
FLOTILLA_HD bf16 KvEntryValue(const uint8_t* e, int64_t c, int64_t nope, int64_t rope) {
  if (c >= nope) {
    const int64_t i = nope + 2 * (c - nope);
    return bf16(e[i] | (uint16_t(e[i + 1]) << 8));
  }
  const e8m0 s = e[nope + 2 * rope + c / 64];
  if (s == 0xff) return kKvNanBf16;
  return F32ToBf16(Fp8ToF32(e[c]) * E8m0ToF32(s));
}

}  // namespace flotilla::kernels::cuda
