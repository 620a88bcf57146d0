#include "tokenizer/bpe.h"

#include <algorithm>
#include <climits>

#include "absl/hash/hash.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/string_view_compat.h"
#include "tokenizer/utf8.h"

namespace flotilla {
namespace {

constexpr int kSmallWord = 64;  // pieces up to this many bytes use the quadratic path

struct HeapEntry {
  int32_t rank;
  int32_t pos;
  int32_t left_id;
  int32_t right_id;
  int32_t merged_id;
  // std::*_heap build a max-heap; invert so the lowest (rank, pos) is on top.
  bool operator<(const HeapEntry& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::Create(
    const absl::flat_hash_map<std::string, int32_t>& vocab,
    const std::vector<std::pair<std::string, std::string>>& merges) {
  auto model = std::unique_ptr<BpeModel>(new BpeModel());
  for (int b = 0; b < 256; ++b) {
    std::string ch;
    utf8::AppendCodepoint(byte_level::ByteToCodepoint()[b], &ch);
    const auto it = vocab.find(ch);
    model->byte_to_id_[b] = it == vocab.end() ? -1 : it->second;
  }
  model->merges_.reserve(merges.size());
  std::string joined;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    joined.assign(a).append(b);
    const auto ia = vocab.find(a), ib = vocab.find(b), ij = vocab.find(joined);
    if (ia == vocab.end() || ib == vocab.end() || ij == vocab.end()) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: merge #", rank, " '", a, " ",
                                                     b, "' uses a token not in the vocab"));
    }
    // As in HF `tokenizers`, a repeated pair keeps the rank of its last occurrence.
    model->merges_.insert_or_assign(PairKey(ia->second, ib->second),
                                    Merge{static_cast<int32_t>(rank), ij->second});
  }
  return model;
}

void BpeModel::EncodePiece(std::string_view piece, std::vector<int32_t>* ids) const {
  const bool cacheable = piece.size() <= kMaxCachedPieceBytes;
  CacheShard* shard = nullptr;
  if (cacheable) {
    shard = &cache_[absl::HashOf(piece) % kNumShards];
    std::lock_guard<std::mutex> lock(shard->mu);
    const auto it = shard->map.find(AbslView(piece));
    if (it != shard->map.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = ids->size();
  if (piece.size() <= kSmallWord) {
    int32_t sym[kSmallWord];
    int n = 0;
    for (const char c : piece) {
      const int32_t id = byte_to_id_[static_cast<uint8_t>(c)];
      if (id >= 0) sym[n++] = id;  // no unk token: a byte without a token is dropped
    }
    MergeSmall(sym, n, ids);
  } else {
    thread_local std::vector<int32_t> sym;
    sym.clear();
    for (const char c : piece) {
      const int32_t id = byte_to_id_[static_cast<uint8_t>(c)];
      if (id >= 0) sym.push_back(id);
    }
    MergeLarge(sym.data(), static_cast<int>(sym.size()), ids);
  }
  if (cacheable) {
    std::lock_guard<std::mutex> lock(shard->mu);
    if (shard->map.size() >= kMaxEntriesPerShard) shard->map.clear();
    shard->map.try_emplace(std::string(piece), ids->begin() + first, ids->end());
  }
}

void BpeModel::MergeSmall(int32_t* sym, int n, std::vector<int32_t>* ids) const {
  // rank[i] / merged[i] describe the pair (sym[i], sym[i + 1]).
  int32_t rank[kSmallWord];
  int32_t merged[kSmallWord];
  auto set_pair = [&](int i) {
    const Merge* m = FindMerge(sym[i], sym[i + 1]);
    rank[i] = m ? m->rank : INT_MAX;
    merged[i] = m ? m->merged_id : -1;
  };
  for (int i = 0; i + 1 < n; ++i) set_pair(i);
  while (n > 1) {
    int best = 0;
    for (int i = 1; i + 1 < n; ++i) {
      if (rank[i] < rank[best]) best = i;
    }
    if (rank[best] == INT_MAX) break;
    sym[best] = merged[best];
    for (int i = best + 1; i + 1 < n; ++i) sym[i] = sym[i + 1];
    for (int i = best + 1; i + 2 < n; ++i) {
      rank[i] = rank[i + 1];
      merged[i] = merged[i + 1];
    }
    --n;
    if (best + 1 < n) set_pair(best);
    if (best > 0) set_pair(best - 1);
  }
  ids->insert(ids->end(), sym, sym + n);
}

void BpeModel::MergeLarge(const int32_t* sym, int n, std::vector<int32_t>* ids) const {
  thread_local std::vector<int32_t> id, prev, next;
  thread_local std::vector<HeapEntry> heap;
  id.assign(sym, sym + n);
  prev.resize(n);
  next.resize(n);
  heap.clear();
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  auto push_pair = [&](int32_t left) {
    const int32_t right = next[left];
    if (right < 0) return;
    if (const Merge* m = FindMerge(id[left], id[right])) {
      heap.push_back({m->rank, left, id[left], id[right], m->merged_id});
      std::push_heap(heap.begin(), heap.end());
    }
  };
  for (int i = 0; i + 1 < n; ++i) push_pair(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    const HeapEntry e = heap.back();
    heap.pop_back();
    const int32_t right = next[e.pos];
    if (id[e.pos] != e.left_id || right < 0 || id[right] != e.right_id) continue;  // stale
    id[e.pos] = e.merged_id;
    id[right] = -1;
    next[e.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = e.pos;
    if (prev[e.pos] >= 0) push_pair(prev[e.pos]);
    push_pair(e.pos);
  }
  for (int i = n > 0 ? 0 : -1; i >= 0; i = next[i]) ids->push_back(id[i]);
}

}  // namespace flotilla
