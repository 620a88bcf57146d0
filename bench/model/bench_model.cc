// bench_model: prefill and decode tokens/s of a checkpoint (default: the `small` preset, made on
// first use) next to the decode roofline: weight bytes one decode token touches ÷ measured read
// bandwidth.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "common/model_tensors.h"
#include "common/synthetic.h"
#include "kernels/ops.h"
#include "worker/model.h"
#include "worker/sampler.h"

namespace flotilla {
namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Read bandwidth: every thread sums its share of a buffer far larger than the caches.
double ReadBandwidthGBs() {
  const size_t n = size_t(1) << 28;  // 2^28 floats = 1 GiB
  std::vector<float> buf(n, 1.0f);
  double best = 0;
  for (int rep = 0; rep < 4; ++rep) {
    const auto t = Clock::now();
    float total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static)
    for (size_t i = 0; i < n; i += 16) {
      float s = 0;
      for (size_t j = 0; j < 16; ++j) s += buf[i + j];
      total += s;
    }
    const double s = Since(t);
    if (total != float(n)) std::fprintf(stderr, "(checksum %g)\n", double(total));
    best = std::max(best, double(n) * 4 / s / 1e9);
  }
  return best;
}

// Weight bytes a decode token reads: every tensor except the embedding (one row) and the routed
// experts (top-k of them per layer).
double BytesPerToken(const ModelConfig& c, const WeightSource& src, int64_t top_k) {
  double dense = 0, experts = 0;
  for (const std::string& name : src.Names()) {
    auto v = src.Get(name);
    const double b = double(v->info->NumBytes());
    if (name == "embed.weight") {
      dense += double(c.hidden_size) * 2;
    } else if (name.find(".ffn.experts.") != std::string::npos) {
      experts += b;
    } else {
      dense += b;
    }
  }
  const double layers = double(c.num_hidden_layers + c.num_nextn_predict_layers);
  const double per_expert = experts / (layers * double(c.n_routed_experts));
  return dense + layers * double(top_k) * per_expert;
}

int Main(int argc, char** argv) {
  std::string dir = "models/small";
  int64_t prompt_len = 256, decode = 32;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--model")) dir = argv[i + 1];
    if (!std::strcmp(argv[i], "--prompt")) prompt_len = std::atoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--decode")) decode = std::atoll(argv[i + 1]);
  }
  if (!std::filesystem::exists(dir + "/config.json")) {
    std::printf("making the small preset in %s ...\n", dir.c_str());
    auto config = PresetConfig("small");
    SyntheticOptions o;
    o.shard_bytes = 512ull << 20;
    absl::Status st = WriteSyntheticCheckpoint(*config, o, dir);
    if (!st.ok()) {
      std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
      return 1;
    }
  }
  ModelOptions options;
  options.tokens_per_step = std::max(options.tokens_per_step, prompt_len);  // one prefill step
  auto model = Model::Load(dir, options);
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  const Model& m = **model;
  const ModelConfig& c = m.config();
  auto ckpt = CheckpointDir::Open(dir);
  const double bytes_tok = BytesPerToken(c, **ckpt, m.experts_per_token());
  const double bw = ReadBandwidthGBs();

  std::vector<int32_t> prompt(prompt_len);
  for (int64_t i = 0; i < prompt_len; ++i) prompt[i] = int32_t((i * 7919 + 11) % c.vocab_size);
  auto seq = m.NewSequence();
  Model::Output out;
  Model::Chunk ch{seq.get(), std::span<const int32_t>(prompt), false};
  auto t = Clock::now();
  if (!m.Forward(std::span<const Model::Chunk>(&ch, 1), &out).ok()) return 1;
  const double prefill_s = Since(t);
  t = Clock::now();
  for (int64_t i = 0; i < decode; ++i) {
    const int32_t tok = Argmax(out.logits.data(), c.vocab_size);
    Model::Chunk d{seq.get(), std::span<const int32_t>(&tok, 1), false};
    if (!m.Forward(std::span<const Model::Chunk>(&d, 1), &out).ok()) return 1;
  }
  const double decode_s = Since(t);
  const double prefill_tps = double(prompt_len) / prefill_s, decode_tps = double(decode) / decode_s;
  const double roofline = bw * 1e9 / bytes_tok;
  std::printf("model %s, %d threads, SIMD path %s\n", dir.c_str(), omp_get_max_threads(),
              kernels::SimdPath());
  std::printf("measured read bandwidth            %8.2f GB/s\n", bw);
  std::printf("weight bytes per decode token      %8.1f MB\n", bytes_tok / 1e6);
  std::printf("%-34s %10s %14s %8s\n", "phase", "tokens/s", "roofline tok/s", "ratio");
  std::printf("%-34s %10.2f %14.2f %7.1f%%\n", "decode (1 sequence)", decode_tps, roofline,
              100.0 * decode_tps / roofline);
  std::printf("%-34s %10.2f %14s %8s\n", ("prefill (" + std::to_string(prompt_len) + " tokens)").c_str(),
              prefill_tps, "compute-bound", "");
  return 0;
}

}  // namespace
}  // namespace flotilla

int main(int argc, char** argv) { return flotilla::Main(argc, argv); }
