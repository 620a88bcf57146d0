// Shared-memory operand layout and matrix descriptors of Hopper's wgmma (PTX ISA 9.7.15.5.1.2,
// "Shared Memory Matrix Layout" and "Matrix Descriptor Format"), written once for host and device
// so that the CPU tests check the very arithmetic the kernel uses.
//
// Operands here are K-major 8-bit tiles without swizzling (the "interleaved" canonical layout
// ((8, m), (T, 2k)) : ((T, SBO), (1, LBO)) with T = 16 one-byte elements): the tile is made of
// core matrices of 8 rows x 16 bytes, each 128 contiguous bytes (row r of a core matrix at byte
// 16 r). A tile of R rows x 128 bytes (one 128-wide K block of E4M3) is stored row-group major:
//   byte (row, kb) at (row / 8) * kWgmmaSbo + (kb / 16) * kWgmmaLbo + (row % 8) * 16 + kb % 16,
// so the leading dimension byte offset (between core matrices adjacent in K) is 128 and the stride
// dimension byte offset (between core matrices adjacent in M or N, i.e. 8-row groups) is 1024.
// One wgmma with K = 32 reads two core matrices along K: its descriptor starts at the tile plus
// 2 * kWgmmaLbo per 32-wide slice (and plus kWgmmaSbo per 8 rows for a sub-tile in M).
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace flotilla::kernels::cuda {

constexpr uint32_t kWgmmaLbo = 128;   // bytes between K-adjacent core matrices
constexpr uint32_t kWgmmaSbo = 1024;  // bytes between 8-row groups (128-byte K block per row)
constexpr uint32_t kWgmmaTileKBytes = 128;

// Byte offset of element (row, kb) (kb: byte index along K within the 128-byte block).
FLOTILLA_HD uint32_t WgmmaTileOffset(uint32_t row, uint32_t kb) {
  return (row / 8) * kWgmmaSbo + (kb / 16) * kWgmmaLbo + (row % 8) * 16 + kb % 16;
}

// The 64-bit matrix descriptor: bits 0-13 start address, 16-29 leading dimension byte offset,
// 32-45 stride dimension byte offset, each encoded as (x & 0x3FFFF) >> 4; base offset (49-51) 0
// and swizzle mode (62-63) 0 = none. `smem_address` is the shared-window address (cvta.shared).
FLOTILLA_HD uint64_t WgmmaDescriptor(uint32_t smem_address, uint32_t lbo, uint32_t sbo) {
  auto encode = [](uint32_t x) { return uint64_t((x & 0x3FFFFu) >> 4); };
  return encode(smem_address) | encode(lbo) << 16 | encode(sbo) << 32;
}

// Where the canonical no-swizzle K-major layout of a descriptor puts element (row, k) of the
// operand it describes (k < 32 for one k32 instruction on 8-bit types): the PTX formula
// row = i + 8 j, k = t + 16 c -> start + i * 16 + j * SBO + t + c * LBO, decoded from the
// descriptor's own fields. The CPU test holds the tile layout above to it.
FLOTILLA_HD uint32_t WgmmaDescriptorElementAddress(uint64_t desc, uint32_t row, uint32_t k) {
  const uint32_t start = uint32_t(desc & 0x3FFF) << 4;
  const uint32_t lbo = uint32_t((desc >> 16) & 0x3FFF) << 4;
  const uint32_t sbo = uint32_t((desc >> 32) & 0x3FFF) << 4;
  return start + (row % 8) * 16 + (row / 8) * sbo + k % 16 + (k / 16) * lbo;
}

}  // namespace flotilla::kernels::cuda
