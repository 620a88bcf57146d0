#include "coordinator/kv_pages.h"

#include <numeric>

#include "absl/strings/str_cat.h"
#include "sharding/capacity.h"

namespace flotilla {
namespace {

constexpr int64_t kCsaRatio = 4;  // ratio 4 = CSA (overlapping compressor + indexer keys)

}  // namespace

absl::StatusOr<KvPageGeometry> KvPageGeometry::Make(const ModelConfig& config,
                                                    int64_t page_tokens) {
  if (page_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_tokens is ", page_tokens, " (expected at least 1)"));
  }
  // Exact sum of page_tokens x bytes / ratio over layers: numerators over the lcm of the
  // ratios (a handful of small numbers in every V4 config), rounded up once at the end.
  const int64_t num_layers = config.num_hidden_layers + config.num_nextn_predict_layers;
  const unsigned __int128 main_entry = uint64_t(MainKvEntryBytes(config));
  const unsigned __int128 index_key = uint64_t(IndexerKeyBytes(config));
  uint64_t denominator = 1;
  for (int64_t l = 0; l < num_layers; ++l) {
    const int64_t ratio = config.RatioOf(l);
    if (ratio > 0) denominator = std::lcm(denominator, uint64_t(ratio));
    if (denominator > (1ull << 32)) {
      return absl::InvalidArgumentError(
          absl::StrCat("compress_ratios have a least common multiple above 2^32 (", denominator,
                       "); the page arithmetic does not support them"));
    }
  }
  unsigned __int128 numerator = 0;  // page bytes x denominator
  for (int64_t l = 0; l < num_layers; ++l) {
    const int64_t ratio = config.RatioOf(l);
    if (ratio <= 0) continue;
    const unsigned __int128 per_entry = main_entry + (ratio == kCsaRatio ? index_key : 0);
    numerator += per_entry * uint64_t(page_tokens) * (denominator / uint64_t(ratio));
  }
  if (numerator == 0) {
    return absl::InvalidArgumentError(
        "no layer of the config compresses its KV (every compress_ratio is 0): nothing grows "
        "with the context, so there is nothing to page");
  }
  KvPageGeometry g;
  g.page_tokens = page_tokens;
  g.page_bytes = uint64_t((numerator + denominator - 1) / denominator);
  g.fixed_bytes = SequenceKvBytesAt(config, 0).Total();
  g.fixed_pages = int64_t((g.fixed_bytes + g.page_bytes - 1) / g.page_bytes);
  return g;
}

bool KvPagePool::TryReserve(int64_t pages) {
  FLOTILLA_CHECK(pages >= 0);
  if (pages > free()) return false;
  used_ += pages;
  return true;
}

void KvPagePool::Release(int64_t pages) {
  FLOTILLA_CHECK(pages >= 0 && pages <= used_);
  used_ -= pages;
}

}  // namespace flotilla
