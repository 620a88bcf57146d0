// The FP8 dense GEMM (kernels/cuda/fp8_gemm.h: cuBLASLt block-scaled FP8, one pinned algorithm
// per weight shape) at V4-Flash shapes, next to ceilings measured in the same run:
//   decode (m <= 32 rows): bytes moved per second against the device's read bandwidth;
//   prefill (m = 4096): FLOP/s against the measured FP8 peak — cuBLASLt's own FP8 GEMM with one
//     scale per tensor (the fastest FP8 path the library has) at 8192 x 8192 x 8192;
//   and, given --torch FILE (written by bench_fp8_gemm_torch.py on the same device), against
//   torch._scaled_mm on the same shapes.
//   bench_fp8_gemm [--torch FILE]
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "bench/kernels/bench_util.cuh"
#include "kernels/cuda/fp8_gemm.h"

namespace {

using flotilla::bf16;
using flotilla::e8m0;
using flotilla::fp8;
using flotilla::bench::MeasureFp8Peak;
using flotilla::bench::RandomCodes;
using flotilla::bench::TimeMs;
namespace fk = flotilla::kernels::cuda;

struct Shape {
  const char* name;
  int64_t n, k;
};

}  // namespace

int main(int argc, char** argv) {
  std::map<std::tuple<long long, long long, long long>, double> torch_tflops;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) != "--torch") continue;
    std::ifstream in(argv[i + 1]);
    long long n, k, m;
    double tf;
    while (in >> n >> k >> m >> tf) torch_tflops[{n, k, m}] = tf;
  }
  cudaDeviceProp prop;
  BENCH_CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  const double read_gbs = flotilla::bench::MeasureReadBandwidth(prop.multiProcessorCount);
  cublasLtHandle_t lt;
  BENCH_LT_OK(cublasLtCreate(&lt));
  const double peak = MeasureFp8Peak(lt, 8192);
  std::printf(
      "ceilings: read bandwidth %.0f GB/s (4 GiB stream), FP8 peak %.0f TFLOP/s "
      "(cuBLASLt, per-tensor scales, 8192^3)\n",
      read_gbs, peak / 1e12);

  fk::Fp8GemmLt gemm;
  if (const char* err = gemm.Init()) {
    std::fprintf(stderr, "%s\n", err);
    return 1;
  }
  const std::vector<Shape> shapes = {
      {"wq_a", 1024, 4096}, {"wq_b", 32768, 1024},     {"wkv", 512, 4096},
      {"wo_b", 4096, 8192}, {"shared w1", 2048, 4096}, {"shared w2", 4096, 2048},
  };
  std::printf("%-10s %6s %6s %5s %10s %8s %8s %-22s %s\n", "linear", "n", "k", "m", "time", "GB/s",
              "TFLOP/s", "of ceiling", "vs torch._scaled_mm");
  for (const Shape& s : shapes) {
    if (const char* err = gemm.Prepare(s.n, s.k)) {
      std::fprintf(stderr, "%s (n %lld, k %lld)\n", err, (long long)s.n, (long long)s.k);
      return 1;
    }
    int algo = -1, split = -1;
    gemm.AlgoInfo(s.n, s.k, &algo, &split);
    fp8* w = RandomCodes(s.n * s.k, 3);
    std::vector<e8m0> sw_host((s.n + 127) / 128 * (s.k / 128));
    std::mt19937 rng(5);
    for (auto& x : sw_host) x = e8m0(120 + rng() % 8);
    e8m0* sw_raw;
    float* sw;
    BENCH_CUDA_OK(cudaMalloc(&sw_raw, sw_host.size()));
    BENCH_CUDA_OK(cudaMemcpy(sw_raw, sw_host.data(), sw_host.size(), cudaMemcpyHostToDevice));
    BENCH_CUDA_OK(cudaMalloc(&sw, fk::Fp8WeightScaleCount(s.n, s.k) * 4));
    BENCH_CUDA_OK(cudaError_t(fk::LaunchConvertFp8WeightScales(sw_raw, s.n, s.k, sw, nullptr)));
    for (int64_t m : {1, 32, 4096}) {
      fp8* a = RandomCodes(m * s.k, 4);
      e8m0* sa;
      bf16* c;
      void* ws;
      const size_t ws_bytes = fk::Fp8GemmWorkspaceBytes(m, s.k);
      BENCH_CUDA_OK(cudaMalloc(&sa, m * s.k / 128));
      BENCH_CUDA_OK(cudaMemset(sa, 125, m * s.k / 128));
      BENCH_CUDA_OK(cudaMalloc(&c, m * s.n * 2));
      BENCH_CUDA_OK(cudaMalloc(&ws, ws_bytes));
      fk::Fp8GemmParams p;
      p.a = a, p.a_scale = sa, p.w = w, p.w_scale = sw, p.c = c;
      p.ldc = s.n, p.m = m, p.n = s.n, p.k = s.k;
      const float ms = TimeMs(
          [&] {
            if (const char* err = gemm.Run(p, ws, ws_bytes, nullptr)) {
              std::fprintf(stderr, "%s\n", err);
              std::exit(1);
            }
          },
          20);
      const double bytes = double(s.n * s.k + m * s.k + m * s.n * 2 + m * s.k / 128 +
                                  fk::Fp8WeightScaleCount(s.n, s.k) * 4);
      const double gbs = bytes / (ms * 1e-3) / 1e9;
      const double tflops = 2.0 * m * s.n * s.k / (ms * 1e-3) / 1e12;
      const bool decode = m <= 32;
      const double ratio = decode ? gbs / read_gbs : tflops * 1e12 / peak;
      char versus[64] = "-";
      const auto it = torch_tflops.find({(long long)s.n, (long long)s.k, (long long)m});
      if (it != torch_tflops.end() && it->second > 0) {
        std::snprintf(versus, sizeof(versus), "%.2fx (torch %.1f TFLOP/s)", tflops / it->second,
                      it->second);
      }
      std::printf("%-10s %6lld %6lld %5lld %7.3f ms %8.0f %8.1f %5.0f%% of %-14s %s\n", s.name,
                  (long long)s.n, (long long)s.k, (long long)m, ms, gbs, tflops, 100 * ratio,
                  decode ? "read bandwidth" : "FP8 peak", versus);
      for (void* ptr : {static_cast<void*>(a), static_cast<void*>(sa), static_cast<void*>(c), ws}) {
        BENCH_CUDA_OK(cudaFree(ptr));
      }
    }
    std::printf("%-10s pinned cuBLASLt algorithm %d, split-K %d\n", "", algo, split);
    BENCH_CUDA_OK(cudaFree(w));
    BENCH_CUDA_OK(cudaFree(sw_raw));
    BENCH_CUDA_OK(cudaFree(sw));
  }
  cublasLtDestroy(lt);
  return 0;
}
