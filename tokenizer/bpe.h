// Byte-level BPE: turns one pre-tokenized piece (raw bytes) into vocabulary ids by applying
// merges in rank order (lowest rank first, leftmost on ties), with a word -> ids cache.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "common/status.h"

namespace flotilla {

class BpeModel {
 public:
  // `vocab` maps byte-level token strings to ids; `merges` are pairs of byte-level strings in
  // rank order. Every merge part and result must be in the vocabulary.
  static absl::StatusOr<std::unique_ptr<BpeModel>> Create(
      const absl::flat_hash_map<std::string, int32_t>& vocab,
      const std::vector<std::pair<std::string, std::string>>& merges);

  // Appends the ids of `piece` to `ids`. Thread-safe.
  void EncodePiece(std::string_view piece, std::vector<int32_t>* ids) const;

  // The id of the single-byte token for `byte` (-1 if the vocabulary lacks it).
  int32_t ByteTokenId(uint8_t byte) const { return byte_to_id_[byte]; }

  size_t num_merges() const { return merges_.size(); }

 private:
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (uint64_t{static_cast<uint32_t>(a)} << 32) | static_cast<uint32_t>(b);
  }
  const Merge* FindMerge(int32_t a, int32_t b) const {
    const auto it = merges_.find(PairKey(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  }
  void MergeSmall(int32_t* sym, int n, std::vector<int32_t>* ids) const;
  void MergeLarge(const int32_t* sym, int n, std::vector<int32_t>* ids) const;

  // Cache of piece bytes -> ids, sharded to keep lock hold times short under concurrency.
  static constexpr int kNumShards = 16;
  static constexpr size_t kMaxEntriesPerShard = 1 << 15;
  static constexpr size_t kMaxCachedPieceBytes = 128;
  struct CacheShard {
    std::mutex mu;
    absl::flat_hash_map<std::string, absl::InlinedVector<int32_t, 4>> map;
  };

  std::array<int32_t, 256> byte_to_id_{};
  absl::flat_hash_map<uint64_t, Merge> merges_;
  mutable std::array<CacheShard, kNumShards> cache_;
};

}  // namespace flotilla
