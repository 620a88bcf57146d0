// The register-level format conversions of the CUDA kernels (kernels/cuda/device_formats.h),
// run here on the CPU, against the reference codecs of common/dtype.h; and the host side of the
// grouped FP8 x FP4 GEMM launch.
#include "kernels/cuda/device_formats.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <algorithm>
#include <functional>
#include <random>
#include <vector>
#include <string>

#include "common/dtype.h"
#include "kernels/ops.h"
#include "kernels/cuda/act_quant.h"
#include "kernels/cuda/expert_gate_up.h"
#include "kernels/cuda/grouped_gemm_fp4.h"
#include "kernels/cuda/indexer.h"
#include "kernels/cuda/norm.h"

namespace flotilla::kernels::cuda {
namespace {

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

TEST(DeviceFormats, EveryE2m1NibbleIsTheSameE4m3Value) {
  for (uint32_t nibble = 0; nibble < 16; ++nibble) {
    const uint32_t byte = E2m1ToE4m3(nibble);
    ASSERT_LT(byte, 256u);
    // Bitwise: -0 stays -0.
    EXPECT_EQ(Bits(Fp8ToF32(fp8(byte))), Bits(Fp4ToF32(uint8_t(nibble)))) << "nibble " << nibble;
  }
  // Hand-worked: 6 = 1.5 * 2^2 -> exponent 2 + 7 = 9, mantissa 4 -> 0x4C; -0.5 -> 0x80 | 0x30.
  EXPECT_EQ(E2m1ToE4m3(0x7), 0x4Cu);
  EXPECT_EQ(E2m1ToE4m3(0x9), 0xB0u);
}

TEST(DeviceFormats, FourNibblesPerRegisterInKOrder) {
  for (uint32_t two = 0; two < 65536; ++two) {
    const uint32_t word = E2m1x4ToE4m3x4(two);
    for (int i = 0; i < 4; ++i) {
      const uint32_t nibble = (two >> (4 * i)) & 0xf;
      ASSERT_EQ((word >> (8 * i)) & 0xff, E2m1ToE4m3(nibble)) << "input " << two << " element " << i;
    }
  }
}

TEST(DeviceFormats, BytePermPicksBytesOfTheEightByteSource) {
  // Bytes 0..7 of {lo, hi} are 0x00 0x11 ... 0x77; selector 0x7531 picks bytes 1, 3, 5, 7.
  EXPECT_EQ(BytePerm(0x33221100u, 0x77665544u, 0x7531u), 0x77553311u);
  EXPECT_EQ(BytePerm(0x33221100u, 0x77665544u, 0x0000u), 0x00000000u);
  EXPECT_EQ(BytePerm(0x33221100u, 0x77665544u, 0x4444u), 0x44444444u);
}

GroupedGemmFp8Fp4Params Valid() {
  alignas(16) static uint8_t bytes[64];
  GroupedGemmFp8Fp4Params p;
  p.a = bytes;
  p.a_scale = bytes;
  p.w = bytes;
  p.w_scale = bytes;
  p.group_offsets = reinterpret_cast<const int32_t*>(bytes);
  p.c = reinterpret_cast<bf16*>(bytes);
  p.n = 2048;
  p.k = 4096;
  p.ldc = 2048;
  p.num_experts = 32;
  return p;
}

TEST(GroupedGemmFp8Fp4Launch, ShapeOfAV4FlashExpertRank) {
  // One rank of EP 8 on V4-Flash: 32 local experts, w1 is [2048, 4096].
  const GroupedGemmFp8Fp4Params p = Valid();
  EXPECT_EQ(CheckGroupedGemmFp8Fp4(p), nullptr);
  const LaunchShape s = GroupedGemmFp8Fp4Shape(p);
  EXPECT_EQ(s.grid_x, 32u);  // 2048 / 64 columns per block
  EXPECT_EQ(s.grid_y, 32u);
  EXPECT_EQ(s.block_x, 128u);
  GroupedGemmFp8Fp4Params q = p;
  q.n = 80;  // one full block and one with a single active warp
  q.ldc = 80;
  EXPECT_EQ(GroupedGemmFp8Fp4Shape(q).grid_x, 2u);
}

TEST(GroupedGemmFp8Fp4Launch, RefusesWhatTheKernelCannotRun) {
  auto refuse = [](GroupedGemmFp8Fp4Params p, const char* what) {
    const char* why = CheckGroupedGemmFp8Fp4(p);
    ASSERT_NE(why, nullptr) << what;
    EXPECT_NE(std::string(why).find(what), std::string::npos) << why;
  };
  GroupedGemmFp8Fp4Params p = Valid();
  p.k = 4000;
  refuse(p, "k must be");
  p = Valid();
  p.n = 2040;
  refuse(p, "n must be");
  p = Valid();
  p.ldc = 1024;
  refuse(p, "ldc must be at least n");
  p = Valid();
  p.num_experts = 0;
  refuse(p, "num_experts");
  p = Valid();
  p.w_scale = nullptr;
  refuse(p, "must all be set");
  p = Valid();
  p.a = p.a + 1;
  refuse(p, "aligned");
  // A window over int64 offsets instead of int32 ones (the backend's grouped op), not both.
  p = Valid();
  p.group_offsets64 = reinterpret_cast<const int64_t*>(p.group_offsets);
  refuse(p, "exactly one of group_offsets / group_offsets64");
  p.group_offsets = nullptr;
  p.window_rows = -1;
  refuse(p, "window");
  p.window_rows = 64;
  EXPECT_EQ(CheckGroupedGemmFp8Fp4(p), nullptr);
}

TEST(ActQuantLaunch, ShapesAndRefusals) {
  alignas(16) static uint8_t bytes[64];
  ActQuantFp8Params p;
  p.x = reinterpret_cast<const bf16*>(bytes);
  p.q = bytes;
  p.scale = bytes;
  p.m = 3000;
  p.k = 4096;
  p.ldx = 4096;
  EXPECT_EQ(CheckActQuantFp8(p), nullptr);
  EXPECT_EQ(ActQuantFp8Blocks(p), 12000);  // 3000 rows x 32 groups / 8 warps
  p.m = 0;
  EXPECT_EQ(ActQuantFp8Blocks(p), 0);
  p.m = 1;
  p.k = 100;
  EXPECT_NE(CheckActQuantFp8(p), nullptr);
  p.k = 4096;
  p.block = 96;
  EXPECT_NE(CheckActQuantFp8(p), nullptr);
  p.block = 128;
  p.ldx = 2048;
  EXPECT_NE(CheckActQuantFp8(p), nullptr);
}

TEST(NormLaunch, ShapesAndRefusals) {
  alignas(16) static uint8_t bytes[64];
  bf16* b = reinterpret_cast<bf16*>(bytes);
  RmsNormParams p;
  p.x = b;
  p.w = b;
  p.y = b;
  p.m = 33;
  p.d = 4096;
  p.ldx = p.ldy = 4096;
  EXPECT_EQ(CheckRmsNorm(p), nullptr);
  EXPECT_EQ(NormBlocks(33), 2);  // 32 rows per block
  EXPECT_EQ(NormBlocks(0), 0);
  p.ldy = 8192;  // in place with different strides
  EXPECT_NE(CheckRmsNorm(p), nullptr);
  p.ldy = 4096;
  p.ldx = 100;
  EXPECT_NE(CheckRmsNorm(p), nullptr);
  HeadRmsNormParams h;
  h.q = b;
  h.rows = 4;
  h.dim = 0;
  EXPECT_NE(CheckHeadRmsNorm(h), nullptr);
  h.dim = 512;
  EXPECT_EQ(CheckHeadRmsNorm(h), nullptr);
}

TEST(ExpertGateUpLaunch, ShapesAndRefusals) {
  alignas(16) static uint8_t bytes[64];
  ExpertGateUpParams p;
  p.x = bytes;
  p.x_scale = bytes;
  p.w1 = p.w3 = bytes;
  p.w1_scale = p.w3_scale = bytes;
  p.group_offsets = reinterpret_cast<const int32_t*>(bytes);
  p.h = bytes;
  p.h_scale = bytes;
  p.inter = 2048;
  p.hidden = 4096;
  p.num_experts = 32;
  EXPECT_EQ(CheckExpertGateUp(p), nullptr);
  EXPECT_EQ(ExpertGateUpGridX(p), 16u);  // one block per 128-column quantisation group
  p.inter = 2000;
  EXPECT_NE(CheckExpertGateUp(p), nullptr);
  p.inter = 2048;
  p.limit = 0.0f;
  EXPECT_NE(CheckExpertGateUp(p), nullptr);
  p.limit = 10.0f;
  p.w3 = nullptr;
  EXPECT_NE(CheckExpertGateUp(p), nullptr);
}

// The GPU top-k selects and orders by TopKKey; sorting by it on the CPU must give the CPU
// backend's TopK exactly (larger first, NaN last, -0 == +0, ties to the lower index).
TEST(TopKKey, OrdersAsTheCpuTopK) {
  std::mt19937 rng(21);
  for (int trial = 0; trial < 50; ++trial) {
    const int n = 1 + int(rng() % 3000);
    std::vector<float> scores(n);
    for (auto& x : scores) {
      switch (rng() % 8) {
        case 0: x = std::nanf(""); break;
        case 1: x = -0.0f; break;
        case 2: x = 0.0f; break;
        case 3: x = (rng() % 2) ? INFINITY : -INFINITY; break;
        case 4: x = float(int(rng() % 5));  // many ties
          break;
        default: x = std::ldexp(float(int32_t(rng())), -20);
      }
    }
    const int k = 1 + int(rng() % n);
    std::vector<int32_t> want(k);
    TopK(scores.data(), n, k, want.data());
    std::vector<uint64_t> keys(n);
    for (int i = 0; i < n; ++i) keys[i] = TopKKey(scores[i], uint32_t(i));
    std::sort(keys.begin(), keys.end(), std::greater<>());
    for (int i = 0; i < k; ++i) {
      ASSERT_EQ(int32_t(~uint32_t(keys[i])), want[i]) << "trial " << trial << " rank " << i;
    }
  }
}

TEST(IndexerLaunch, ShapesAndRefusals) {
  alignas(16) static uint8_t bytes[64];
  bf16* b = reinterpret_cast<bf16*>(bytes);
  HadamardParams h{b, 4, 128};
  EXPECT_EQ(CheckHadamard(h), nullptr);
  h.dim = 96;
  EXPECT_NE(CheckHadamard(h), nullptr);
  h.dim = 16384;
  EXPECT_NE(CheckHadamard(h), nullptr);
  EXPECT_EQ(HadamardScale(128), float(1.0 / std::sqrt(128.0)));
  IndexerScoresParams s;
  s.q = s.w = s.keys = b;
  s.scores = reinterpret_cast<float*>(bytes);
  s.num_heads = 64;
  s.dim = 128;
  s.ldk = 128;
  s.n = 262144;
  EXPECT_EQ(CheckIndexerScores(s), nullptr);  // V4-Flash: 64 heads x 128
  s.num_heads = 128;
  EXPECT_NE(CheckIndexerScores(s), nullptr);
  TopKParams t;
  t.scores = reinterpret_cast<float*>(bytes);
  t.idx = reinterpret_cast<int32_t*>(bytes);
  t.n = 262144;
  t.k = 512;
  EXPECT_EQ(CheckTopK(t), nullptr);
  t.k = 5000;
  EXPECT_NE(CheckTopK(t), nullptr);
  t.k = 0;
  EXPECT_NE(CheckTopK(t), nullptr);
}

}  // namespace
}  // namespace flotilla::kernels::cuda
