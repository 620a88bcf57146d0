// KV-cache capacity arithmetic (design.md §5, spec §8.2; docs/capacity.md works the figures).
//
// KV entries are stored packed as the QAT rounding allows:
//   main entry    = nope dims x 1 B (FP8) + rope dims x 2 B (BF16) + ceil(nope / 64) UE8M0
//                   scales, padded to a multiple of 8         (V4-Flash: 448 + 128 + 7 + 1 = 584)
//   indexer key   = index_head_dim / 2 (FP4) + index_head_dim / 32 UE8M0 scales   (V4-Flash: 68)
// A sequence's KV is held whole by every rank of its DP group (one KV head: not split by TP).
#pragma once

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "common/model_config.h"
#include "common/status.h"

namespace flotilla {

int64_t MainKvEntryBytes(const ModelConfig& config);
int64_t IndexerKeyBytes(const ModelConfig& config);

// Growth per token once the constant parts are amortised: one main entry per `ratio` tokens in
// every compressing layer, plus one indexer key per 4 tokens in every CSA layer
// (V4-Flash: 21 x (584/4 + 68/4) + 20 x 584/128 = 3,514.25 B/token).
double KvBytesPerTokenAsymptotic(const ModelConfig& config);

// Bytes one sequence holds after `tokens` tokens (every layer: main and MTP).
struct SequenceKvBytes {
  uint64_t compressed = 0;  // main entries: floor(T / ratio) per compressing layer
  uint64_t indexer = 0;     // indexer keys: floor(T / 4) per CSA layer
  uint64_t windows = 0;     // sliding-window rings of the main layers (window x main entry each,
                            // allocated whole when the sequence starts)
  uint64_t mtp_window = 0;  // the MTP layers' rings, reported separately (spec §8.2)
  uint64_t compressor_state = 0;  // unfinished-block state of every compressor (f32 kv + score;
                                  // CSA 2 x 2m x 2d, HCA 2 x m x d floats), reported separately

  // The spec §8.2 figure: compressed entries, indexer keys and main-layer windows
  // (V4-Flash at 1,048,576 tokens: 3,688,172,544 B).
  uint64_t Kv() const { return compressed + indexer + windows; }
  // Everything the sequence holds: Kv() + MTP window + compressor states. Capacity and
  // admission count this.
  uint64_t Total() const { return Kv() + mtp_window + compressor_state; }
};
SequenceKvBytes SequenceKvBytesAt(const ModelConfig& config, int64_t tokens);

// KV pool of one rank: gpu_memory - weight_bytes - reserve. The error says by how much the
// weights and the reserve exceed the memory.
absl::StatusOr<uint64_t> KvPoolBytes(uint64_t gpu_memory, uint64_t weight_bytes, uint64_t reserve);

struct ContextFit {
  int64_t tokens = 0;   // largest T with SequenceKvBytesAt(T).Total() <= pool, at most `cap`
  uint64_t bytes = 0;   // SequenceKvBytesAt(tokens).Total()
  bool fits = false;    // false: not even an empty sequence (windows + state) fits
  bool capped = false;  // true: the pool holds more, max_position_embeddings stops it
  int64_t cap = 0;      // max_position_embeddings
};
// Exact: bytes(T) is a sum of floor(T / ratio) terms, non-decreasing in T; the largest T is
// found by bisection on that formula.
ContextFit LongestContext(const ModelConfig& config, uint64_t pool_bytes);

// How many sequences of `tokens` tokens fit in `pool_bytes` at once (whole sequences).
int64_t SequencesThatFit(const ModelConfig& config, uint64_t pool_bytes, int64_t tokens);

// "80GiB", "80 GiB", "1.5TiB", "80GB", "512MiB", "4096B", "4096" (bytes). Binary suffixes
// KiB/MiB/GiB/TiB, decimal KB/MB/GB/TB, case-insensitive; fractions round down to a byte.
absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text);

// "3.43 GiB", "512.00 MiB", "584 B".
std::string FormatBytes(uint64_t bytes);

}  // namespace flotilla
