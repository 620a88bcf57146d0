// bench_long_context: prefills one sequence in fixed chunks up to a long position (default the
// `tiny` preset, 2,048-token chunks, 262,144 tokens) and prints, per chunk, the time against the
// position, the lightning indexer's scoring FLOPs in that chunk, the FLOP/s they would take the
// whole chunk's time at, and that against the machine's measured f32 FMA peak (the ceiling).
//
// The indexer's scoring and the compressed attention are the only parts of a step whose work
// grows with the position (spec §5.4, §7); the rest should take the same time per chunk at any
// position.
#include <immintrin.h>
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "common/synthetic.h"
#include "kernels/ops.h"
#include "sharding/capacity.h"
#include "worker/model.h"

namespace flotilla {
namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// f32 FMA peak of all threads: independent 8-wide FMA chains, 2 FLOPs per lane.
__attribute__((target("avx2,fma"))) double PeakFlops() {
  constexpr int kChains = 12;
  constexpr int64_t kIters = int64_t(1) << 25;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    float sink = 0;
    const auto t = Clock::now();
#pragma omp parallel reduction(+ : sink)
    {
      __m256 acc[kChains];
      for (int i = 0; i < kChains; ++i) acc[i] = _mm256_set1_ps(float(i) * 1e-3f);
      const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
      for (int64_t it = 0; it < kIters; ++it) {
        for (int i = 0; i < kChains; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
      }
      float lanes[8];
      for (int i = 1; i < kChains; ++i) acc[0] = _mm256_add_ps(acc[0], acc[i]);
      _mm256_storeu_ps(lanes, acc[0]);
      for (float v : lanes) sink += v;
    }
    const double s = Since(t);
    if (sink == 12345.0f) std::printf("(%g)\n", double(sink));
    best = std::max(best, double(omp_get_max_threads()) * double(kIters) * kChains * 16 / s);
  }
  return best;
}

// Indexer scoring FLOPs of the tokens [start, start + n): per CSA layer, every token scores
// (p + 1) / 4 keys with every indexer head, a dot of index_head_dim (2 FLOPs per element).
double IndexerFlops(const ModelConfig& c, int64_t start, int64_t n) {
  double keys = 0;
  for (int64_t p = start; p < start + n; ++p) keys += double((p + 1) / 4);
  int64_t layers = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) layers += c.RatioOf(l) == 4;
  return keys * double(layers) * double(c.index_n_heads) * double(c.index_head_dim) * 2;
}

int Main(int argc, char** argv) {
  std::string dir = "models/tiny";
  int64_t max_tokens = 262144, chunk = 2048;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--model")) dir = argv[i + 1];
    if (!std::strcmp(argv[i], "--max-tokens")) max_tokens = std::atoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--chunk")) chunk = std::atoll(argv[i + 1]);
  }
  if (!std::filesystem::exists(dir + "/config.json")) {
    std::printf("making the tiny preset in %s ...\n", dir.c_str());
    auto config = PresetConfig("tiny");
    SyntheticOptions o;
    o.shard_bytes = 48ull << 20;
    absl::Status st = WriteSyntheticCheckpoint(*config, o, dir);
    if (!st.ok()) {
      std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
      return 1;
    }
  }
  auto model = Model::Load(dir, ModelOptions{});
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  const Model& m = **model;
  const ModelConfig& c = m.config();
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    std::fprintf(stderr, "the FMA peak is measured with AVX2 + FMA; this CPU has neither\n");
    return 1;
  }
  const double peak = PeakFlops();
  std::printf("model %s, %d threads, SIMD path %s, chunks of %lld tokens\n", dir.c_str(),
              omp_get_max_threads(), kernels::SimdPath(), static_cast<long long>(chunk));
  std::printf("measured f32 FMA peak %.2f GFLOP/s (the ceiling)\n", peak / 1e9);
  std::printf("%10s %10s %14s %16s %8s %10s %12s\n", "position", "chunk s", "indexer GFLOP",
              "at chunk GFLOP/s", "ratio", "KV pages", "pool B/tok");

  auto seq = m.NewSequence();
  std::vector<int32_t> tokens(chunk);
  Model::Output out;
  for (int64_t pos = 0; pos < max_tokens; pos += chunk) {
    const int64_t n = std::min(chunk, max_tokens - pos);
    for (int64_t i = 0; i < n; ++i) tokens[i] = int32_t(((pos + i) * 7919 + 11) % c.vocab_size);
    Model::Chunk ch{seq.get(), std::span<const int32_t>(tokens.data(), n), false};
    const auto t = Clock::now();
    const absl::Status st = m.Forward(std::span<const Model::Chunk>(&ch, 1), &out);
    const double s = Since(t);
    if (!st.ok()) {
      std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
      return 1;
    }
    const double flops = IndexerFlops(c, pos, n);
    // The pool bytes the sequence holds (pages x page size) per token it has run.
    const int64_t pages = m.kv_pool().pages_used();
    const double per_token = double(pages) * double(m.kv_pool().layout().page_bytes) /
                             double(pos + n);
    std::printf("%10lld %10.3f %14.3f %16.2f %7.2f%% %10lld %12.2f\n",
                static_cast<long long>(pos), s, flops / 1e9, flops / s / 1e9,
                100.0 * flops / s / peak, static_cast<long long>(pages), per_token);
    std::fflush(stdout);
  }
  // What the pool spends per token once the fixed pages are amortised, against spec §8.2's
  // packed bytes per token (no pages).
  std::printf("KV bytes per token: pool %.2f (pages of %lld B, asymptotic), spec 8.2 packed %.2f\n",
              m.kv_pool().layout().BytesPerTokenAsymptotic(),
              static_cast<long long>(m.kv_pool().layout().page_bytes),
              KvBytesPerTokenAsymptotic(c));
  return 0;
}

}  // namespace
}  // namespace flotilla

int main(int argc, char** argv) { return flotilla::Main(argc, argv); }
