// The shared-memory operand layout and descriptors of the wgmma expert GEMM
// (kernels/cuda/wgmma_layout.h) and the host side of its launch, on the CPU.
#include "kernels/cuda/wgmma_layout.h"

#include <gtest/gtest.h>

#include <set>
#include <vector>

#include "kernels/cuda/grouped_gemm_fp4_wgmma.h"

namespace flotilla::kernels::cuda {
namespace {

TEST(WgmmaLayout, DescriptorBitFields) {
  // PTX ISA matrix descriptor: start >> 4 in bits 0-13, LBO >> 4 in 16-29, SBO >> 4 in 32-45,
  // base offset and swizzle mode (no swizzle = 0) zero. Hand-worked: start 0x1230, LBO 128,
  // SBO 1024 -> 0x123 | 8 << 16 | 64 << 32.
  EXPECT_EQ(WgmmaDescriptor(0x1230, 128, 1024), 0x123ull | 8ull << 16 | 64ull << 32);
  // Only 18 address bits count (x & 0x3FFFF) >> 4: the shared window's top bits drop out.
  EXPECT_EQ(WgmmaDescriptor(0x41230, 128, 1024), WgmmaDescriptor(0x1230, 128, 1024));
  EXPECT_EQ(WgmmaDescriptor(0x3FFF0, 0, 0), 0x3FFFull);
  EXPECT_EQ(WgmmaDescriptor(0, 128, 1024) >> 62, 0u);  // no swizzle
}

TEST(WgmmaLayout, TileIsAPermutationOfItsBytes) {
  std::set<uint32_t> seen;
  for (uint32_t row = 0; row < 128; ++row) {
    for (uint32_t kb = 0; kb < 128; ++kb) {
      const uint32_t off = WgmmaTileOffset(row, kb);
      ASSERT_LT(off, 128u * 128u);
      ASSERT_TRUE(seen.insert(off).second) << row << "," << kb;
    }
  }
  // 16-byte pieces stay contiguous (the kernel stores them as one uint4).
  EXPECT_EQ(WgmmaTileOffset(13, 37) + 1, WgmmaTileOffset(13, 38));
  EXPECT_EQ(WgmmaTileOffset(13, 32) % 16, 0u);
}

// Every element a descriptor of slice s and row offset r0 makes wgmma read (canonical layout
// from the descriptor's own fields) is where the kernel stored that element of the tile.
TEST(WgmmaLayout, DescriptorsOfEverySliceReadTheStoredElements) {
  const uint32_t base = 0x400;  // any 128-byte aligned shared address
  for (uint32_t wg = 0; wg < 2; ++wg) {
    for (uint32_t s = 0; s < 4; ++s) {
      const uint32_t start = base + wg * (64 / 8) * kWgmmaSbo + 2 * s * kWgmmaLbo;
      const uint64_t desc = WgmmaDescriptor(start, kWgmmaLbo, kWgmmaSbo);
      for (uint32_t row = 0; row < 64; ++row) {
        for (uint32_t k = 0; k < 32; ++k) {
          ASSERT_EQ(WgmmaDescriptorElementAddress(desc, row, k),
                    base + WgmmaTileOffset(64 * wg + row, 32 * s + k))
              << "warpgroup " << wg << " slice " << s << " row " << row << " k " << k;
        }
      }
    }
  }
  // The B operand: 128 columns from the tile start.
  for (uint32_t s = 0; s < 4; ++s) {
    const uint64_t desc = WgmmaDescriptor(base + 2 * s * kWgmmaLbo, kWgmmaLbo, kWgmmaSbo);
    for (uint32_t col = 0; col < 128; ++col) {
      for (uint32_t k = 0; k < 32; ++k) {
        ASSERT_EQ(WgmmaDescriptorElementAddress(desc, col, k),
                  base + WgmmaTileOffset(col, 32 * s + k));
      }
    }
  }
}

TEST(WgmmaExpertGemmLaunch, ShapesRefusalsAndChoice) {
  alignas(16) static uint8_t buf[64];
  GroupedGemmFp8Fp4Params p;
  p.a = buf, p.a_scale = buf, p.w = buf, p.w_scale = buf;
  p.group_offsets = reinterpret_cast<const int32_t*>(buf);
  p.c = reinterpret_cast<bf16*>(buf);
  p.n = 2048, p.k = 4096, p.ldc = 2048, p.num_experts = 32;
  EXPECT_EQ(CheckGroupedGemmFp8Fp4Wgmma(p), nullptr);
  const LaunchShape s = GroupedGemmFp8Fp4WgmmaShape(p);
  EXPECT_EQ(s.grid_x, 16u);
  EXPECT_EQ(s.grid_y, 32u);
  EXPECT_EQ(s.block_x, 256u);
  GroupedGemmFp8Fp4Params q = p;
  q.n = 2064;  // a multiple of 16, not of 128
  EXPECT_NE(CheckGroupedGemmFp8Fp4Wgmma(q), nullptr);
  q = p, q.a = buf + 4;  // fine for mma.sync, not for 16-byte rows of the tile
  EXPECT_EQ(CheckGroupedGemmFp8Fp4(q), nullptr);
  EXPECT_NE(CheckGroupedGemmFp8Fp4Wgmma(q), nullptr);
  q = p, q.w = buf + 2;
  EXPECT_NE(CheckGroupedGemmFp8Fp4Wgmma(q), nullptr);
  q = p, q.k = 4000;
  EXPECT_NE(CheckGroupedGemmFp8Fp4Wgmma(q), nullptr);
  // 4,096 tokens x top-6 over 256 experts: 96 rows per expert, 32 local experts at EP 8 ->
  // wgmma on sm_90; decode (16 per expert), or any step on sm_100, stays on mma.sync.
  EXPECT_TRUE(UseWgmmaExpertGemm(9, 0, 32 * 96, 32));
  EXPECT_FALSE(UseWgmmaExpertGemm(9, 0, 32 * 16, 32));
  EXPECT_FALSE(UseWgmmaExpertGemm(10, 0, 32 * 96, 32));
  EXPECT_FALSE(UseWgmmaExpertGemm(9, 0, 0, 0));
  EXPECT_EQ(kWgmmaGemmSharedBytes, 128 * 128 * 2 + 512);
}

}  // namespace
}  // namespace flotilla::kernels::cuda
