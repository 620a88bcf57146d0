// bench_sampler: microseconds per sampled token over the real 129,280-entry vocabulary, next to
// the floor of one argmax pass over the same logits (greedy's cost).
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "worker/sampler.h"

namespace flotilla {
namespace {

using Clock = std::chrono::steady_clock;

template <typename F>
double MicrosPerCall(F&& f, int reps) {
  double best = 1e30;
  for (int round = 0; round < 5; ++round) {
    const auto t = Clock::now();
    for (int i = 0; i < reps; ++i) f();
    best = std::min(best, std::chrono::duration<double, std::micro>(Clock::now() - t).count() / reps);
  }
  return best;
}

int Main() {
  const int64_t vocab = 129280;
  std::mt19937_64 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  struct Shape {
    const char* name;
    float scale;
  };
  const Shape shapes[] = {{"N(0, 2^2) logits", 2.0f}, {"N(0, 8^2) logits", 8.0f}};
  struct Setting {
    const char* name;
    float temperature, top_p;
    int64_t top_k;
  };
  const Setting settings[] = {{"T=1", 1.0f, 1.0f, 0},
                              {"T=0.7 top_p=0.9", 0.7f, 0.9f, 0},
                              {"T=1 top_k=50", 1.0f, 1.0f, 50}};
  std::printf("| logits | sampling | us/token | argmax us/token | ratio |\n|---|---|---:|---:|---:|\n");
  for (const Shape& shape : shapes) {
    std::vector<float> logits(vocab);
    for (float& l : logits) l = normal(rng) * shape.scale;
    volatile int32_t sink = 0;
    const double argmax = MicrosPerCall([&] { sink = Argmax(logits.data(), vocab); }, 200);
    for (const Setting& s : settings) {
      SamplingParams sp;
      sp.greedy = false;
      sp.temperature = s.temperature;
      sp.top_p = s.top_p;
      sp.top_k = s.top_k;
      Sampler sampler(sp);
      const double us = MicrosPerCall([&] { sink = sampler.Sample(logits.data(), vocab); }, 50);
      std::printf("| %s | %s | %.0f | %.0f | %.1fx |\n", shape.name, s.name, us, argmax,
                  us / argmax);
    }
  }
  return 0;
}

}  // namespace
}  // namespace flotilla

int main() { return flotilla::Main(); }
