// The grouped FP8 x FP4 expert GEMM on the GPU against the CPU backend's GemmFp8Fp4, one expert
// group at a time (label cuda; skips without a GPU).
//
// Tolerance: the tensor core forms each 32-wide partial with its own accumulation (on sm_90a and
// sm_100a mma.sync e4m3 runs as E4M3 -> F16 unpacks and F16 MMAs with f32 accumulation), so P may
// differ from the CPU's exactly rounded partial in its last f32 bits; everything after P is the
// same sequence of rounded f32 operations. Each output is therefore held to
// |gpu - cpu| <= 2^-8 * sum over slices of |P * sa * sw| (one bf16 rounding on either side plus
// the partials' f32 differences), computed in double from the inputs; NaN rows must match.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "kernels/cuda/grouped_gemm_fp4.h"
#include "kernels/cuda/grouped_gemm_fp4_wgmma.h"
#include "kernels/ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace flotilla::kernels::cuda {
namespace {

using testing::HaveGpu;

template <typename T>
struct DeviceArray {
  T* ptr = nullptr;
  explicit DeviceArray(const std::vector<T>& host) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&ptr), std::max<size_t>(1, host.size()) * sizeof(T)),
              cudaSuccess);
    if (!host.empty()) {
      EXPECT_EQ(cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
                cudaSuccess);
    }
  }
  ~DeviceArray() { cudaFree(ptr); }
  std::vector<T> Read(size_t n) const {
    std::vector<T> out(n);
    EXPECT_EQ(cudaMemcpy(out.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return out;
  }
};

struct Problem {
  int64_t n = 0, k = 0;
  std::vector<int32_t> offsets;  // [experts + 1]
  std::vector<fp8> a;            // [rows, k]
  std::vector<e8m0> a_scale;     // [rows, k/128]
  std::vector<uint8_t> w;        // [experts, n, k/2]
  std::vector<e8m0> w_scale;     // [experts, n, k/32]
  int64_t rows() const { return offsets.back(); }
  int64_t experts() const { return int64_t(offsets.size()) - 1; }
};

Problem Random(std::vector<int32_t> group_sizes, int64_t n, int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  Problem p;
  p.n = n;
  p.k = k;
  p.offsets = {0};
  for (int32_t g : group_sizes) p.offsets.push_back(p.offsets.back() + g);
  p.a.resize(p.rows() * k);
  for (auto& x : p.a) {
    do x = fp8(rng()); while ((x & 0x7f) == 0x7f);  // no NaN codes
  }
  p.a_scale.resize(p.rows() * (k / 128));
  for (auto& s : p.a_scale) s = e8m0(120 + rng() % 10);
  p.w.resize(p.experts() * n * (k / 2));
  for (auto& b : p.w) b = uint8_t(rng());
  p.w_scale.resize(p.experts() * n * (k / 32));
  for (auto& s : p.w_scale) s = e8m0(118 + rng() % 12);
  return p;
}

using Launcher = int (*)(const GroupedGemmFp8Fp4Params&, CUstream_st*);

// Runs `p` on the GPU (the mma.sync kernel, or `launch` with its own check) and checks every
// output against the CPU backend.
void CheckAgainstCpu(const Problem& p, Launcher launch = LaunchGroupedGemmFp8Fp4,
                     const char* (*check)(const GroupedGemmFp8Fp4Params&) = CheckGroupedGemmFp8Fp4) {
  const int64_t rows = p.rows(), n = p.n, k = p.k;
  DeviceArray<fp8> a(p.a);
  DeviceArray<e8m0> a_scale(p.a_scale);
  DeviceArray<uint8_t> w(p.w);
  DeviceArray<e8m0> w_scale(p.w_scale);
  DeviceArray<int32_t> offsets(p.offsets);
  // Poison the output so that a row the kernel forgets is caught.
  DeviceArray<bf16> c(std::vector<bf16>(std::max<int64_t>(rows, 1) * n, bf16(0x7fa1)));
  GroupedGemmFp8Fp4Params g;
  g.a = a.ptr;
  g.a_scale = a_scale.ptr;
  g.w = w.ptr;
  g.w_scale = w_scale.ptr;
  g.group_offsets = offsets.ptr;
  g.c = c.ptr;
  g.ldc = n;
  g.n = n;
  g.k = k;
  g.num_experts = p.experts();
  ASSERT_EQ(check(g), nullptr);
  ASSERT_EQ(launch(g, nullptr), 0);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<bf16> got = c.Read(rows * n);

  for (int64_t e = 0; e < p.experts(); ++e) {
    const int64_t r0 = p.offsets[e], m = p.offsets[e + 1] - r0;
    if (m == 0) continue;
    std::vector<bf16> want(m * n);
    GemmFp8Fp4Params cpu;
    cpu.a = p.a.data() + r0 * k;
    cpu.a_scale = p.a_scale.data() + r0 * (k / 128);
    cpu.w = p.w.data() + e * n * (k / 2);
    cpu.w_scale = p.w_scale.data() + e * n * (k / 32);
    cpu.c = want.data();
    cpu.ldc = n;
    cpu.m = m;
    cpu.n = n;
    cpu.k = k;
    GemmFp8Fp4(cpu);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        const float ref = Bf16ToF32(want[i * n + j]);
        const float gpu = Bf16ToF32(got[(r0 + i) * n + j]);
        if (std::isnan(ref)) {
          ASSERT_TRUE(std::isnan(gpu)) << "expert " << e << " row " << i << " col " << j;
          continue;
        }
        double bound = 0;
        for (int64_t s = 0; s < k / 32; ++s) {
          double partial = 0;
          for (int64_t q = s * 32; q < s * 32 + 32; ++q) {
            const uint8_t byte = cpu.w[j * (k / 2) + q / 2];
            partial += double(Fp8ToF32(cpu.a[i * k + q])) * Fp4ToF32(q % 2 ? byte >> 4 : byte & 0xf);
          }
          bound += std::fabs(partial * E8m0ToF32(cpu.a_scale[i * (k / 128) + s / 4]) *
                             E8m0ToF32(cpu.w_scale[j * (k / 32) + s]));
        }
        ASSERT_LE(std::fabs(double(gpu) - ref), std::ldexp(bound, -8) + 1e-30)
            << "expert " << e << " row " << i << " col " << j << ": gpu " << gpu << " cpu " << ref;
      }
    }
  }
}

TEST(GroupedGemmFp8Fp4Cuda, RaggedAndEmptyGroups) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  // Empty, single-row, exactly one m16 tile, a ragged tail, and more than one 64-row tile;
  // n = 80 leaves a block with one active warp.
  CheckAgainstCpu(Random({0, 1, 16, 37, 0, 70}, 80, 256, 1));
}

TEST(GroupedGemmFp8Fp4Cuda, DecodeShapesAtV4FlashWidth) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  // Up to 16 tokens per expert, hidden 4096 -> 2048 (w1 of V4-Flash), 8 experts.
  CheckAgainstCpu(Random({3, 16, 1, 0, 9, 12, 2, 5}, 2048, 4096, 2));
}

TEST(GroupedGemmFp8Fp4Cuda, NanPoisonsItsRowOnly) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  Problem p = Random({5, 7}, 32, 128, 3);
  p.a[2 * 128 + 77] = 0x7f;  // row 2 of expert 0
  p.a[9 * 128 + 5] = 0xff;   // row 4 of expert 1
  CheckAgainstCpu(p);
}

TEST(GroupedGemmFp8Fp4Cuda, ExtremeMagnitudesAndScales) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  Problem p = Random({20, 3}, 48, 256, 4);
  for (size_t i = 0; i < p.a.size(); i += 3) p.a[i] = (i % 2) ? 0x7e : 0xfe;  // +-448
  for (size_t i = 0; i < p.w.size(); i += 2) p.w[i] = 0x7f;                   // 6 and -6
  for (size_t i = 0; i < p.a_scale.size(); ++i) p.a_scale[i] = (i % 2) ? 100 : 140;
  for (size_t i = 0; i < p.w_scale.size(); ++i) p.w_scale[i] = (i % 3) ? 110 : 135;
  CheckAgainstCpu(p);
}

// The wgmma kernel (sm_90 only) against the same CPU reference and bound: the partial of each
// 32-wide slice is the FP8 tensor core's, everything after it the same rounded f32 steps while
// values stay normal (grouped_gemm_fp4_wgmma.h).
bool HaveSm90() {
  if (!HaveGpu()) return false;
  cudaDeviceProp prop{};
  return cudaGetDeviceProperties(&prop, 0) == cudaSuccess && prop.major == 9 && prop.minor == 0;
}

void CheckWgmma(const Problem& p) {
  CheckAgainstCpu(p, LaunchGroupedGemmFp8Fp4Wgmma, CheckGroupedGemmFp8Fp4Wgmma);
}

TEST(GroupedGemmFp8Fp4WgmmaCuda, RaggedGroupsAndSeveralRowTiles) {
  if (!HaveSm90()) GTEST_SKIP() << "no sm_90 device";
  // Empty, one row, a partial 128-row tile, more than one and more than two tiles.
  CheckWgmma(Random({0, 1, 96, 130, 0, 257, 64}, 256, 512, 11));
}

TEST(GroupedGemmFp8Fp4WgmmaCuda, PrefillAtV4FlashWidth) {
  if (!HaveSm90()) GTEST_SKIP() << "no sm_90 device";
  // 96 rows per expert (4,096 tokens x top-6 over 256 experts), w1: 4096 -> 2048.
  CheckWgmma(Random({96, 96, 96, 96}, 2048, 4096, 12));
}

TEST(GroupedGemmFp8Fp4WgmmaCuda, NanAndExtremeValues) {
  if (!HaveSm90()) GTEST_SKIP() << "no sm_90 device";
  Problem p = Random({70, 3}, 128, 384, 13);
  for (size_t i = 0; i < p.a.size(); i += 3) p.a[i] = (i % 2) ? 0x7e : 0xfe;  // +-448
  for (size_t i = 0; i < p.w.size(); i += 2) p.w[i] = 0x7f;                   // 6 and -6
  for (size_t i = 0; i < p.a_scale.size(); ++i) p.a_scale[i] = (i % 2) ? 100 : 140;
  for (size_t i = 0; i < p.w_scale.size(); ++i) p.w_scale[i] = (i % 3) ? 110 : 135;
  p.a[5 * 384 + 300] = 0x7f;  // NaN in row 5 of expert 0
  CheckWgmma(p);
}

TEST(GroupedGemmFp8Fp4WgmmaCuda, RefusedOffSm90) {
  if (!HaveGpu() || HaveSm90()) GTEST_SKIP() << "needs a device other than sm_90";
  GroupedGemmFp8Fp4Params g;
  g.n = 128, g.k = 128, g.num_experts = 1, g.ldc = 128;
  EXPECT_EQ(LaunchGroupedGemmFp8Fp4Wgmma(g, nullptr), int(cudaErrorNotSupported));
}

}  // namespace
}  // namespace flotilla::kernels::cuda
