// bench_tokenizer --corpus FILE [--tokenizer tokenizer.json] [--iters N] [--expect-ids FILE]
// Encode and decode throughput (MB/s, 1 MB = 1e6 bytes of UTF-8 text) on one thread.
// --expect-ids: int32 little-endian ids from another implementation, compared exactly.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  *out = std::move(ss).str();
  return true;
}

int Usage() {
  std::fprintf(stderr,
               "usage: bench_tokenizer --corpus FILE [--tokenizer PATH] [--iters N] "
               "[--expect-ids FILE]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string corpus_path, expect_path;
  std::string tokenizer_path = FLOTILLA_REPO_ROOT "/data/tokenizer/tokenizer.json";
  int iters = 5;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) return Usage();
    if (a == "--corpus") {
      corpus_path = argv[++i];
    } else if (a == "--tokenizer") {
      tokenizer_path = argv[++i];
    } else if (a == "--iters") {
      iters = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--expect-ids") {
      expect_path = argv[++i];
    } else {
      return Usage();
    }
  }
  if (corpus_path.empty()) return Usage();
  std::string text;
  if (!ReadFile(corpus_path, &text)) {
    std::fprintf(stderr, "cannot read %s\n", corpus_path.c_str());
    return 1;
  }
  const double mb = static_cast<double>(text.size()) / 1e6;

  const auto t_load0 = Clock::now();
  auto tok = flotilla::Tokenizer::FromFile(tokenizer_path);
  const auto t_load1 = Clock::now();
  if (!tok.ok()) {
    std::fprintf(stderr, "%s\n", std::string(tok.status().message()).c_str());
    return 1;
  }

  // Cold: the first encode, with an empty word cache. Warm: best of `iters` later runs.
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 2);
  const auto t0 = Clock::now();
  absl::Status st = (*tok)->EncodeAppend(text, &ids);
  const double cold = Seconds(t0, Clock::now());
  if (!st.ok()) {
    std::fprintf(stderr, "encode: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  double warm = 1e30;
  std::vector<int32_t> again;
  again.reserve(ids.size());
  for (int i = 0; i < iters; ++i) {
    again.clear();
    const auto a = Clock::now();
    st = (*tok)->EncodeAppend(text, &again);
    warm = std::min(warm, Seconds(a, Clock::now()));
  }
  if (again != ids) {
    std::fprintf(stderr, "warm encode differs from cold encode\n");
    return 1;
  }
  // Per paragraph: the corpus split on "\n\n", each part encoded by its own call (the shape
  // of request-sized inputs).
  std::vector<std::string_view> parts;
  size_t part_bytes = 0;
  for (size_t pos = 0; pos <= text.size();) {
    size_t end = text.find("\n\n", pos);
    if (end == std::string::npos) end = text.size();
    parts.emplace_back(text.data() + pos, end - pos);
    part_bytes += end - pos;
    pos = end + 2;
  }
  double per_part = 1e30;
  for (int i = 0; i < iters; ++i) {
    again.clear();
    const auto a = Clock::now();
    for (const std::string_view part : parts) st.Update((*tok)->EncodeAppend(part, &again));
    per_part = std::min(per_part, Seconds(a, Clock::now()));
  }
  if (!st.ok()) return 1;
  const double part_mb = static_cast<double>(part_bytes) / 1e6;
  double decode = 1e30;
  std::string decoded;
  for (int i = 0; i < iters; ++i) {
    const auto a = Clock::now();
    auto d = (*tok)->Decode(ids);
    decode = std::min(decode, Seconds(a, Clock::now()));
    if (!d.ok()) return 1;
    decoded = *std::move(d);
  }
  const bool round_trip = decoded == text;

  std::printf("corpus           %.2f MB, %zu tokens (%.2f bytes/token)\n", mb, ids.size(),
              static_cast<double>(text.size()) / static_cast<double>(ids.size()));
  std::printf("load             %.0f ms (tokenizer.json)\n", 1e3 * Seconds(t_load0, t_load1));
  std::printf("encode cold      %8.2f MB/s  (first call, empty word cache)\n", mb / cold);
  std::printf("encode warm      %8.2f MB/s  (best of %d)\n", mb / warm, iters);
  std::printf("encode per part  %8.2f MB/s  (%zu paragraphs, one call each, best of %d)\n",
              part_mb / per_part, parts.size(), iters);
  std::printf("decode           %8.2f MB/s  (best of %d)\n", mb / decode, iters);
  std::printf("round trip       %s\n", round_trip ? "decode(encode(text)) == text" : "MISMATCH");
  int rc = round_trip ? 0 : 1;
  if (!expect_path.empty()) {
    std::string raw;
    if (!ReadFile(expect_path, &raw) || raw.size() % 4 != 0) {
      std::fprintf(stderr, "cannot read ids from %s\n", expect_path.c_str());
      return 1;
    }
    std::vector<int32_t> want(raw.size() / 4);
    std::memcpy(want.data(), raw.data(), raw.size());
    size_t first_diff = 0;
    while (first_diff < std::min(want.size(), ids.size()) && want[first_diff] == ids[first_diff]) {
      ++first_diff;
    }
    if (want == ids) {
      std::printf("reference ids    identical (%zu tokens)\n", want.size());
    } else {
      std::printf("reference ids    DIFFER: %zu vs %zu tokens, first difference at token %zu\n",
                  want.size(), ids.size(), first_diff);
      rc = 1;
    }
  }
  std::printf(
      "RESULT encode_cold_mbps=%.3f encode_warm_mbps=%.3f encode_parts_mbps=%.3f "
      "decode_mbps=%.3f tokens=%zu\n",
      mb / cold, mb / warm, part_mb / per_part, mb / decode, ids.size());
  return rc;
}
