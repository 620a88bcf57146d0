// FP8 and FP8xFP4 GEMM throughput at V4-Flash shapes against the machine's DRAM read bandwidth.
//
// Weights rotate over copies spread through a pool of at least 1 GiB (far larger than the caches),
// so every call streams its weights from memory. GB/s counts weight bytes including scales per
// call; the ceiling is a streaming read by all threads over a separate 1 GiB buffer, measured in
// the same run. Every figure is the median of several passes. Usage: bench_gemm [--quick]
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "kernels/ops.h"

namespace {

using flotilla::bf16;
using flotilla::e8m0;
using flotilla::fp8;
namespace kernels = flotilla::kernels;

constexpr size_t kPoolBytes = size_t(1) << 30;

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

uint8_t* AllocPool(size_t bytes) {
  auto* p = static_cast<uint8_t*>(std::aligned_alloc(4096, bytes));
  if (p == nullptr) {
    std::fprintf(stderr, "out of memory (%zu bytes)\n", bytes);
    std::exit(1);
  }
  return p;
}

// Fills with pseudo-random bytes in parallel (first touch by the threads that read it later).
void FillRandom(uint8_t* p, size_t bytes, uint64_t seed) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < bytes / 8; ++i) {
    uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    std::memcpy(p + 8 * i, &x, 8);
  }
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// One pass of all threads streaming the buffer (GB/s).
__attribute__((target("avx2"))) double ReadPass(const uint8_t* buf, size_t bytes) {
  {
    const double t0 = Now();
    uint64_t sink = 0;
#pragma omp parallel reduction(^ : sink)
    {
      __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
#pragma omp for schedule(static)
      for (size_t i = 0; i < bytes; i += 128) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(buf + i)));
        a1 =
            _mm256_add_epi64(a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(buf + i + 32)));
        a2 =
            _mm256_add_epi64(a2, _mm256_load_si256(reinterpret_cast<const __m256i*>(buf + i + 64)));
        a3 =
            _mm256_add_epi64(a3, _mm256_load_si256(reinterpret_cast<const __m256i*>(buf + i + 96)));
      }
      const __m256i s = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
      sink ^= static_cast<uint64_t>(_mm256_extract_epi64(s, 0));
    }
    const double dt = Now() - t0;
    if (sink == 42) std::printf(" ");
    return bytes / dt / 1e9;
  }
}

struct Shape {
  const char* name;
  bool fp4;
  int64_t n, k;
};

struct Result {
  const Shape* shape;
  int64_t m;
  double seconds, gbps, gflops;
  double dram;  // read bandwidth measured in passes interleaved with this row's passes (M = 1)
};

// One timed configuration: rotates the weight copies so each call reads fresh memory.
// At M = 1 the passes alternate with streaming-read passes over `stream`, so that the bandwidth
// ceiling is measured under the same conditions (the machine may be shared).
Result Run(const Shape& s, int64_t m, uint8_t* pool, const uint8_t* stream, bool quick) {
  const int64_t w_bytes = s.fp4 ? s.n * s.k / 2 : s.n * s.k;
  const int64_t s_bytes = s.fp4 ? s.n * (s.k / 32) : (s.n + 127) / 128 * (s.k / 128);
  const int64_t stride = (w_bytes + 4095) / 4096 * 4096;
  const int64_t copies = static_cast<int64_t>(kPoolBytes / stride);
  // Scales: one realistic table shared by all copies (the bytes are still counted).
  std::vector<e8m0> w_scale(s_bytes);
  for (int64_t i = 0; i < s_bytes; ++i) w_scale[i] = static_cast<e8m0>(120 + i % 7);
  // Activations through act_quant, as in the model.
  std::vector<bf16> x(m * s.k);
  for (int64_t i = 0; i < m * s.k; ++i)
    x[i] = flotilla::F32ToBf16(std::sin(0.37f * static_cast<float>(i)));
  std::vector<fp8> a(m * s.k);
  std::vector<e8m0> a_scale(m * s.k / 128);
  kernels::ActQuantFp8({.x = x.data(),
                        .ldx = s.k,
                        .m = m,
                        .k = s.k,
                        .block = 128,
                        .q = a.data(),
                        .scale = a_scale.data()});
  std::vector<bf16> c(m * s.n);

  const double flop = 2.0 * m * s.n * s.k;
  // A pass = enough calls to cover the pool (M = 1) or ~1 s of work; median of the passes.
  const int64_t per_pass = m == 1 ? copies : std::max<int64_t>(1, static_cast<int64_t>(1e9 / flop));
  const int passes = quick ? 3 : 5;
  int64_t next = 0;
  const auto call = [&] {
    const uint8_t* w = pool + (next++ % copies) * stride;
    if (s.fp4) {
      kernels::GemmFp8Fp4({.a = a.data(),
                           .a_scale = a_scale.data(),
                           .w = w,
                           .w_scale = w_scale.data(),
                           .c = c.data(),
                           .ldc = s.n,
                           .m = m,
                           .n = s.n,
                           .k = s.k});
    } else {
      kernels::GemmFp8({.a = a.data(),
                        .a_scale = a_scale.data(),
                        .w = reinterpret_cast<const fp8*>(w),
                        .w_scale = w_scale.data(),
                        .c = c.data(),
                        .ldc = s.n,
                        .m = m,
                        .n = s.n,
                        .k = s.k});
    }
  };
  call();  // warm-up (scratch, thread pool)
  std::vector<double> times, dram;
  for (int pass = 0; pass < passes; ++pass) {
    if (m == 1) dram.push_back(ReadPass(stream, kPoolBytes));
    const double t0 = Now();
    for (int64_t i = 0; i < per_pass; ++i) call();
    times.push_back((Now() - t0) / per_pass);
  }
  const double per_call = Median(times);
  return {&s,
          m,
          per_call,
          (w_bytes + s_bytes) / per_call / 1e9,
          flop / per_call / 1e9,
          dram.empty() ? 0.0 : Median(dram)};
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else {
      std::fprintf(stderr, "usage: %s [--quick]\n", argv[0]);
      return 2;
    }
  }
  if (std::strcmp(kernels::SimdPath(), "avx2") != 0) {
    std::printf("note: SIMD path is '%s' (the bar is meant for the AVX2 path)\n",
                kernels::SimdPath());
  }
  const int threads = omp_get_max_threads();
  std::printf("bench_gemm: %d threads, SIMD path %s, weight pool %.1f GiB%s\n", threads,
              kernels::SimdPath(), kPoolBytes / 1073741824.0, quick ? " (quick)" : "");

  uint8_t* pool = AllocPool(kPoolBytes);
  FillRandom(pool, kPoolBytes, 1);
  // FP8 weights must not hold the NaN codes (0x7f / 0xff): real checkpoints never do.
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < kPoolBytes; ++i) {
    if ((pool[i] & 0x7f) == 0x7f) pool[i] ^= 1;
  }
  uint8_t* stream = AllocPool(kPoolBytes);
  FillRandom(stream, kPoolBytes, 2);
  std::vector<double> dram_passes;
  for (int i = 0; i < (quick ? 5 : 9); ++i) dram_passes.push_back(ReadPass(stream, kPoolBytes));
  const double dram = Median(dram_passes);
  std::printf("DRAM read bandwidth (%d threads streaming 1 GiB, median of passes): %.1f GB/s\n",
              threads, dram);
  std::printf(
      "M = 1 rows: GB/s and DRAM GB/s are medians of alternating passes (kernel, stream)\n\n");

  static const Shape kShapes[] = {
      {"wq_b   fp8", false, 32768, 1024},
      {"wo_b   fp8", false, 4096, 8192},
      {"wq_a   fp8", false, 1024, 4096},
      {"w1     fp4", true, 2048, 4096},
  };
  const std::vector<int64_t> ms =
      quick ? std::vector<int64_t>{1, 8, 64} : std::vector<int64_t>{1, 8, 64, 512};
  std::printf("%-11s %6s %6s %5s %11s %9s %9s %10s %8s\n", "gemm", "n", "k", "M", "time/call",
              "GB/s", "GFLOP/s", "DRAM GB/s", "of DRAM");
  std::vector<Result> results;
  for (const Shape& s : kShapes) {
    for (const int64_t m : ms) {
      Result r = Run(s, m, pool, stream, quick);
      if (r.dram == 0) r.dram = dram;
      results.push_back(r);
      std::printf("%-11s %6lld %6lld %5lld %9.3f ms %9.1f %9.1f %10.1f %7.0f%%\n", s.name,
                  static_cast<long long>(s.n), static_cast<long long>(s.k),
                  static_cast<long long>(m), r.seconds * 1e3, r.gbps, r.gflops, r.dram,
                  100.0 * r.gbps / r.dram);
      std::fflush(stdout);
    }
  }
  std::free(pool);
  std::free(stream);

  std::printf(
      "\nBar: M = 1 weight streaming >= 60%% of the DRAM read bandwidth measured alongside\n");
  for (const bool fp4 : {false, true}) {
    double worst = 1e9;
    for (const Result& r : results) {
      if (r.m == 1 && r.shape->fp4 == fp4) worst = std::min(worst, r.gbps / r.dram);
    }
    const bool pass = worst >= 0.6;
    std::printf("  %s GEMM at M = 1: worst %.0f%% of DRAM -> %s\n", fp4 ? "FP4" : "FP8",
                100 * worst, pass ? "PASS" : "FAIL");
  }
  return 0;  // a benchmark reports; the verdict is in the output
}
