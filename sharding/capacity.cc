#include "sharding/capacity.h"

#include <cctype>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace flotilla {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

constexpr int64_t kCsaRatio = 4;  // ratio 4 = CSA (overlapping compressor + indexer)

int64_t NumLayers(const ModelConfig& c) { return c.num_hidden_layers + c.num_nextn_predict_layers; }

}  // namespace

int64_t MainKvEntryBytes(const ModelConfig& c) {
  const int64_t nope = c.NopeDim();
  const int64_t raw = nope + 2 * c.qk_rope_head_dim + CeilDiv(nope, 64);
  return CeilDiv(raw, 8) * 8;
}

int64_t IndexerKeyBytes(const ModelConfig& c) {
  return CeilDiv(c.index_head_dim, 2) + CeilDiv(c.index_head_dim, 32);
}

double KvBytesPerTokenAsymptotic(const ModelConfig& c) {
  const double main_entry = double(MainKvEntryBytes(c));
  const double index_key = double(IndexerKeyBytes(c));
  double total = 0;
  for (int64_t l = 0; l < NumLayers(c); ++l) {
    const int64_t ratio = c.RatioOf(l);
    if (ratio == 0) continue;
    total += main_entry / double(ratio);
    if (ratio == kCsaRatio) total += index_key / double(ratio);
  }
  return total;
}

SequenceKvBytes SequenceKvBytesAt(const ModelConfig& c, int64_t tokens) {
  FLOTILLA_CHECK(tokens >= 0);
  const uint64_t t = uint64_t(tokens);
  const uint64_t main_entry = uint64_t(MainKvEntryBytes(c));
  const uint64_t index_key = uint64_t(IndexerKeyBytes(c));
  const uint64_t window = uint64_t(c.sliding_window) * main_entry;
  const uint64_t f32 = 4, hd = uint64_t(c.head_dim), ihd = uint64_t(c.index_head_dim);
  SequenceKvBytes b;
  for (int64_t l = 0; l < NumLayers(c); ++l) {
    (l < c.num_hidden_layers ? b.windows : b.mtp_window) += window;
    const uint64_t ratio = uint64_t(c.RatioOf(l));
    if (ratio == 0) continue;
    b.compressed += t / ratio * main_entry;
    if (ratio == kCsaRatio) {
      b.indexer += t / ratio * index_key;
      // Overlapping compressors keep [2m, 2d] kv and score rows (main d = head_dim, indexer
      // d = index_head_dim).
      b.compressor_state += 2 * (2 * ratio) * (2 * hd) * f32 + 2 * (2 * ratio) * (2 * ihd) * f32;
    } else {
      b.compressor_state += 2 * ratio * hd * f32;  // [m, d] kv and score
    }
  }
  return b;
}

absl::StatusOr<uint64_t> KvPoolBytes(uint64_t gpu_memory, uint64_t weight_bytes, uint64_t reserve) {
  const unsigned __int128 need = (unsigned __int128)weight_bytes + reserve;
  if (need > gpu_memory) {
    return absl::ResourceExhaustedError(
        absl::StrCat("weights ", FormatBytes(weight_bytes), " + reserve ", FormatBytes(reserve),
                     " exceed GPU memory ", FormatBytes(gpu_memory), " by ",
                     FormatBytes(uint64_t(need - gpu_memory))));
  }
  return gpu_memory - weight_bytes - reserve;
}

ContextFit LongestContext(const ModelConfig& c, uint64_t pool_bytes) {
  ContextFit fit;
  fit.cap = c.max_position_embeddings;
  auto bytes = [&](int64_t t) { return SequenceKvBytesAt(c, t).Total(); };
  if (bytes(0) > pool_bytes) return fit;
  fit.fits = true;
  if (bytes(fit.cap) <= pool_bytes) {
    fit.tokens = fit.cap;
    fit.capped = true;
  } else {
    int64_t lo = 0, hi = fit.cap;  // bytes(lo) <= pool < bytes(hi)
    while (hi - lo > 1) {
      const int64_t mid = lo + (hi - lo) / 2;
      (bytes(mid) <= pool_bytes ? lo : hi) = mid;
    }
    fit.tokens = lo;
  }
  fit.bytes = bytes(fit.tokens);
  return fit;
}

int64_t SequencesThatFit(const ModelConfig& c, uint64_t pool_bytes, int64_t tokens) {
  return int64_t(pool_bytes / SequenceKvBytesAt(c, tokens).Total());
}

absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text) {
  auto bad = [&](const char* why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "size '", text, "' ", why, " (expected e.g. 80GiB, 80GB, 512MiB, 4096B or 4096)"));
  };
  size_t i = 0;
  unsigned __int128 whole = 0, frac = 0, frac_scale = 1;
  bool digits = false;
  for (; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i) {
    whole = whole * 10 + unsigned(text[i] - '0');
    digits = true;
    if (whole > UINT64_MAX) return bad("is too large");
  }
  if (i < text.size() && text[i] == '.') {
    for (++i; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i) {
      if (frac_scale < 1000000000000000000ull) {  // further digits cannot matter below 1 B
        frac = frac * 10 + unsigned(text[i] - '0');
        frac_scale *= 10;
      }
      digits = true;
    }
  }
  if (!digits) return bad("has no number");
  while (i < text.size() && text[i] == ' ') ++i;
  const std::string suffix = absl::AsciiStrToLower(std::string(text.substr(i)));
  struct Unit {
    const char* name;
    uint64_t bytes;
  };
  static constexpr Unit kUnits[] = {{"", 1},
                                    {"b", 1},
                                    {"k", 1ull << 10},
                                    {"kib", 1ull << 10},
                                    {"kb", 1000ull},
                                    {"m", 1ull << 20},
                                    {"mib", 1ull << 20},
                                    {"mb", 1000000ull},
                                    {"g", 1ull << 30},
                                    {"gib", 1ull << 30},
                                    {"gb", 1000000000ull},
                                    {"t", 1ull << 40},
                                    {"tib", 1ull << 40},
                                    {"tb", 1000000000000ull}};
  uint64_t unit = 0;
  for (const Unit& u : kUnits) {
    if (suffix == u.name) unit = u.bytes;
  }
  if (unit == 0) return bad("has an unknown unit");
  const unsigned __int128 value = whole * unit + frac * unit / frac_scale;
  if (value > UINT64_MAX) return bad("is too large");
  return uint64_t(value);
}

std::string FormatBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB"};
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  double v = double(bytes) / 1024;
  int u = 0;
  while (v >= 1024 && u < 3) {
    v /= 1024;
    ++u;
  }
  return absl::StrFormat("%.2f %s", v, kUnits[u]);
}

}  // namespace flotilla
