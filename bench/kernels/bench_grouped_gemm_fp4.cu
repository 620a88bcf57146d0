// The grouped FP8 x FP4 expert GEMM on one GPU, at V4-Flash shapes as one rank of EP 8 sees
// them (32 local experts; w1: n 2048, k 4096; w2: n 4096, k 2048), next to ceilings measured in
// the same run:
//   decode (1-16 tokens per expert): weight bytes read per second against the device's read
//     bandwidth (a streaming kernel over 4 GiB); bar >= 70%.
//   prefill (4,096 tokens x top-6 over 256 experts: 96 rows per local expert): FLOP/s against
//     the peak of the same MMA instruction path (mma.sync m16n8k32 e4m3, registers only); bar
//     >= 50%.
//   prefill on the wgmma kernel (sm_90 only): FLOP/s against the measured FP8 peak (cuBLASLt's
//     FP8 GEMM with per-tensor scales at 8192^3); bar >= 50%.
//   bench_grouped_gemm_fp4 [--quick]
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bench/kernels/bench_util.cuh"
#include "kernels/cuda/expert_gate_up.h"
#include "kernels/cuda/grouped_gemm_fp4.h"
#include "kernels/cuda/grouped_gemm_fp4_wgmma.h"

namespace {

using flotilla::bf16;
using flotilla::e8m0;
using flotilla::fp8;
using flotilla::bench::MeasureReadBandwidth;
using flotilla::bench::TimeMs;
namespace fk = flotilla::kernels::cuda;

__global__ void MmaPeakKernel(int iters, float* sink) {
  uint32_t a[4] = {threadIdx.x, threadIdx.x * 3, threadIdx.x * 5, threadIdx.x * 7};
  uint32_t b[2] = {threadIdx.x * 11, threadIdx.x * 13};
  float d[4][4] = {};
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      asm volatile(
          "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 "
          "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
          : "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
  }
  float s = 0;
  for (int j = 0; j < 4; ++j) s += d[j][0] + d[j][1] + d[j][2] + d[j][3];
  if (s == 1234.5f) sink[0] = s;
}

struct Case {
  const char* name;
  int64_t n, k, experts, tokens_per_expert;
};

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  cudaDeviceProp prop;
  BENCH_CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);

  // Read bandwidth: 4 GiB streamed once per call.
  const double read_gbs = MeasureReadBandwidth(prop.multiProcessorCount);
  uint32_t* sink;
  BENCH_CUDA_OK(cudaMalloc(&sink, 64));

  // Peak of the MMA path the kernel uses.
  const int iters = 4096;
  const int blocks = prop.multiProcessorCount * 8, threads = 256;
  const float mma_ms = TimeMs([&] { MmaPeakKernel<<<blocks, threads>>>(iters, reinterpret_cast<float*>(sink)); }, 3);
  const double mma_flops = double(blocks) * (threads / 32) * iters * 4 * (2.0 * 16 * 8 * 32) / (mma_ms * 1e-3);
  std::printf("ceilings: read bandwidth %.0f GB/s (4 GiB stream), mma.sync m16n8k32 e4m3 peak %.0f TFLOP/s\n",
              read_gbs, mma_flops / 1e12);
  const bool sm90 = prop.major == 9 && prop.minor == 0;
  double fp8_peak = 0;
  if (sm90) {
    cublasLtHandle_t lt;
    BENCH_LT_OK(cublasLtCreate(&lt));
    fp8_peak = flotilla::bench::MeasureFp8Peak(lt, 8192);
    cublasLtDestroy(lt);
    std::printf("ceiling of the wgmma kernel: FP8 peak %.0f TFLOP/s (cuBLASLt, per-tensor scales, 8192^3)\n",
                fp8_peak / 1e12);
  }

  std::vector<Case> cases = {
      {"w1 decode", 2048, 4096, 32, 1},  {"w1 decode", 2048, 4096, 32, 4},
      {"w1 decode", 2048, 4096, 32, 16}, {"w2 decode", 4096, 2048, 32, 16},
      {"w1 prefill", 2048, 4096, 32, 96}, {"w2 prefill", 4096, 2048, 32, 96},
  };
  std::printf("%-11s %6s %6s %8s %6s %10s %9s %9s %9s\n", "gemm", "n", "k", "experts", "rows", "time",
              "GB/s", "TFLOP/s", "of ceil");
  bool pass = true;
  std::mt19937 rng(7);
  for (const Case& c : cases) {
    const int64_t rows = c.experts * c.tokens_per_expert;
    std::vector<fp8> a(rows * c.k);
    for (auto& x : a) do x = fp8(rng()); while ((x & 0x7f) == 0x7f);
    std::vector<e8m0> sa(rows * c.k / 128, 127);
    std::vector<uint8_t> w(c.experts * c.n * c.k / 2);
    for (auto& x : w) x = uint8_t(rng());
    std::vector<e8m0> sw(c.experts * c.n * c.k / 32, 127);
    std::vector<int32_t> off(c.experts + 1);
    for (int64_t e = 0; e <= c.experts; ++e) off[e] = int32_t(e * c.tokens_per_expert);
    fk::GroupedGemmFp8Fp4Params p;
    void *da, *dsa, *dw, *dsw, *doff, *dc;
    BENCH_CUDA_OK(cudaMalloc(&da, a.size()));
    BENCH_CUDA_OK(cudaMalloc(&dsa, sa.size()));
    BENCH_CUDA_OK(cudaMalloc(&dw, w.size()));
    BENCH_CUDA_OK(cudaMalloc(&dsw, sw.size()));
    BENCH_CUDA_OK(cudaMalloc(&doff, off.size() * 4));
    BENCH_CUDA_OK(cudaMalloc(&dc, rows * c.n * 2));
    BENCH_CUDA_OK(cudaMemcpy(da, a.data(), a.size(), cudaMemcpyHostToDevice));
    BENCH_CUDA_OK(cudaMemcpy(dsa, sa.data(), sa.size(), cudaMemcpyHostToDevice));
    BENCH_CUDA_OK(cudaMemcpy(dw, w.data(), w.size(), cudaMemcpyHostToDevice));
    BENCH_CUDA_OK(cudaMemcpy(dsw, sw.data(), sw.size(), cudaMemcpyHostToDevice));
    BENCH_CUDA_OK(cudaMemcpy(doff, off.data(), off.size() * 4, cudaMemcpyHostToDevice));
    p.a = static_cast<const fp8*>(da);
    p.a_scale = static_cast<const e8m0*>(dsa);
    p.w = static_cast<const uint8_t*>(dw);
    p.w_scale = static_cast<const e8m0*>(dsw);
    p.group_offsets = static_cast<const int32_t*>(doff);
    p.c = static_cast<bf16*>(dc);
    p.ldc = c.n;
    p.n = c.n;
    p.k = c.k;
    p.num_experts = c.experts;
    if (const char* why = fk::CheckGroupedGemmFp8Fp4(p)) {
      std::fprintf(stderr, "%s\n", why);
      return 1;
    }
    const float ms = TimeMs([&] { BENCH_CUDA_OK(cudaError_t(fk::LaunchGroupedGemmFp8Fp4(p, nullptr))); }, quick ? 5 : 20);
    const double bytes = double(w.size() + sw.size() + a.size() + sa.size() + rows * c.n * 2);
    const double gbs = bytes / (ms * 1e-3) / 1e9;
    const double tflops = 2.0 * rows * c.n * c.k / (ms * 1e-3) / 1e12;
    const bool decode = c.tokens_per_expert <= 16;
    const double ratio = decode ? gbs / read_gbs : tflops * 1e12 / mma_flops;
    const bool ok = decode ? ratio >= 0.70 : ratio >= 0.50;
    pass = pass && ok;
    std::printf("%-11s %6lld %6lld %8lld %6lld %8.3f ms %9.0f %9.1f %8.0f%% %s\n", c.name, (long long)c.n,
                (long long)c.k, (long long)c.experts, (long long)rows, ms, gbs, tflops, 100 * ratio,
                ok ? "PASS" : (decode ? "FAIL (bar 70% of read bandwidth)" : "FAIL (bar 50% of MMA peak)"));
    if (!decode && sm90) {
      if (const char* why = fk::CheckGroupedGemmFp8Fp4Wgmma(p)) {
        std::fprintf(stderr, "%s\n", why);
        return 1;
      }
      const float wms = TimeMs(
          [&] { BENCH_CUDA_OK(cudaError_t(fk::LaunchGroupedGemmFp8Fp4Wgmma(p, nullptr))); }, quick ? 5 : 20);
      const double wtflops = 2.0 * rows * c.n * c.k / (wms * 1e-3) / 1e12;
      const double wratio = wtflops * 1e12 / fp8_peak;
      const bool wok = wratio >= 0.50;
      pass = pass && wok;
      std::printf("%-11s %6lld %6lld %8lld %6lld %8.3f ms %9.0f %9.1f %8.0f%% %s\n", "  (wgmma)",
                  (long long)c.n, (long long)c.k, (long long)c.experts, (long long)rows, wms,
                  bytes / (wms * 1e-3) / 1e9, wtflops, 100 * wratio,
                  wok ? "PASS" : "FAIL (bar 50% of FP8 peak)");
    }
    for (void* ptr : {da, dsa, dw, dsw, doff, dc}) BENCH_CUDA_OK(cudaFree(ptr));
  }
  // The fused gate/up kernel (w1 and w3, SwiGLU, FP8 out) at decode shapes: both weight
  // matrices are read once.
  for (int64_t t : {1, 16}) {
    const int64_t experts = 32, inter = 2048, hidden = 4096, rows = experts * t;
    std::vector<fp8> a(rows * hidden);
    for (auto& x : a) do x = fp8(rng()); while ((x & 0x7f) == 0x7f);
    std::vector<e8m0> sa(rows * hidden / 128, 127), sw(experts * inter * hidden / 32, 120);
    std::vector<uint8_t> w(experts * inter * hidden / 2);
    for (auto& x : w) x = uint8_t(rng());
    std::vector<int32_t> off(experts + 1);
    for (int64_t e = 0; e <= experts; ++e) off[e] = int32_t(e * t);
    std::vector<float> rw(rows, 0.5f);
    void *da, *dsa, *dw1, *dw3, *dsw, *doff, *drw, *dh, *dhs;
    BENCH_CUDA_OK(cudaMalloc(&da, a.size()));
    BENCH_CUDA_OK(cudaMalloc(&dsa, sa.size()));
    BENCH_CUDA_OK(cudaMalloc(&dw1, w.size()));
    BENCH_CUDA_OK(cudaMalloc(&dw3, w.size()));
    BENCH_CUDA_OK(cudaMalloc(&dsw, sw.size()));
    BENCH_CUDA_OK(cudaMalloc(&doff, off.size() * 4));
    BENCH_CUDA_OK(cudaMalloc(&drw, rw.size() * 4));
    BENCH_CUDA_OK(cudaMalloc(&dh, rows * inter));
    BENCH_CUDA_OK(cudaMalloc(&dhs, rows * inter / 128));
    BENCH_CUDA_OK(cudaMemcpy(da, a.data(), a.size(), cudaMemcpyHostToDevice));
    BENCH_CUDA_OK(cudaMemcpy(dsa, sa.data(), sa.size(), cudaMemcpyHostToDevice));
    BENCH_CUDA_OK(cudaMemcpy(dw1, w.data(), w.size(), cudaMemcpyHostToDevice));
    BENCH_CUDA_OK(cudaMemcpy(dw3, w.data(), w.size(), cudaMemcpyHostToDevice));
    BENCH_CUDA_OK(cudaMemcpy(dsw, sw.data(), sw.size(), cudaMemcpyHostToDevice));
    BENCH_CUDA_OK(cudaMemcpy(doff, off.data(), off.size() * 4, cudaMemcpyHostToDevice));
    BENCH_CUDA_OK(cudaMemcpy(drw, rw.data(), rw.size() * 4, cudaMemcpyHostToDevice));
    fk::ExpertGateUpParams g;
    g.x = static_cast<const fp8*>(da);
    g.x_scale = static_cast<const e8m0*>(dsa);
    g.w1 = static_cast<const uint8_t*>(dw1);
    g.w3 = static_cast<const uint8_t*>(dw3);
    g.w1_scale = g.w3_scale = static_cast<const e8m0*>(dsw);
    g.group_offsets = static_cast<const int32_t*>(doff);
    g.row_weight = static_cast<const float*>(drw);
    g.h = static_cast<fp8*>(dh);
    g.h_scale = static_cast<e8m0*>(dhs);
    g.inter = inter;
    g.hidden = hidden;
    g.num_experts = experts;
    if (const char* why = fk::CheckExpertGateUp(g)) {
      std::fprintf(stderr, "%s\n", why);
      return 1;
    }
    const float ms = TimeMs([&] { BENCH_CUDA_OK(cudaError_t(fk::LaunchExpertGateUp(g, nullptr))); }, quick ? 5 : 20);
    const double bytes = 2.0 * (w.size() + sw.size()) + a.size() + sa.size() + rows * inter;
    const double gbs = bytes / (ms * 1e-3) / 1e9;
    const bool ok = gbs / read_gbs >= 0.70;
    pass = pass && ok;
    std::printf("%-11s %6lld %6lld %8lld %6lld %8.3f ms %9.0f %9.1f %8.0f%% %s\n", "gate/up", (long long)inter,
                (long long)hidden, (long long)experts, (long long)rows, ms, gbs,
                4.0 * rows * inter * hidden / (ms * 1e-3) / 1e12, 100 * gbs / read_gbs,
                ok ? "PASS" : "FAIL (bar 70% of read bandwidth)");
    for (void* ptr : {da, dsa, dw1, dw3, dsw, doff, drw, dh, dhs}) BENCH_CUDA_OK(cudaFree(ptr));
  }
  std::printf("grouped FP8xFP4 GEMM: %s\n", pass ? "every bar met" : "a bar was missed");
  return 0;
}
