// Number-format conversions the CUDA kernels do in registers beyond the codecs of
// common/dtype.h (whose FLOTILLA_HD functions the kernels call directly), written once for host
// and device so that the CPU tests check exactly the code the GPU runs against those codecs.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace flotilla::kernels::cuda {

// One E2M1 nibble (sign bit 3) as an E4M3 byte (sign bit 7). Every E2M1 value is exactly an
// E4M3 value, so the decode loses nothing. kMag byte i is the E4M3 byte of E2M1 magnitude code i
// (0, 0.5, 1, 1.5, 2, 3, 4, 6 = 0x00, 0x30, 0x38, 0x3C, 0x40, 0x44, 0x48, 0x4C; bias 7).
FLOTILLA_HD uint32_t E2m1ToE4m3(uint32_t nibble) {
  constexpr uint64_t kMag = 0x4C4844403C383000ull;
  return uint32_t((kMag >> ((nibble & 7u) * 8u)) & 0xffu) | ((nibble & 8u) << 4);
}

// __byte_perm(lo, hi, selector) for selectors whose nibbles are 0..7: output byte i is byte
// (selector >> 4i) & 7 of the eight bytes {lo, hi}. One PRMT instruction on the GPU.
FLOTILLA_HD uint32_t BytePerm(uint32_t lo, uint32_t hi, uint32_t selector) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(lo, hi, selector);
#else
  const uint64_t bytes = uint64_t(hi) << 32 | lo;
  uint32_t out = 0;
  for (int i = 0; i < 4; ++i) out |= uint32_t((bytes >> (((selector >> (4 * i)) & 7u) * 8u)) & 0xffu) << (8 * i);
  return out;
#endif
}

// Four packed E2M1 values (two bytes, low nibble first: element 2j in the low nibble of byte j)
// as four E4M3 bytes in one register, element 0 in the lowest byte — the order in which an
// 8-bit mma fragment register holds consecutive K elements. The magnitude codes are the PRMT
// selector itself (nibble i of `two_bytes & 0x7777` picks byte i); the sign bits move from bit
// 4i + 3 to bit 8i + 7.
FLOTILLA_HD uint32_t E2m1x4ToE4m3x4(uint32_t two_bytes) {
  const uint32_t magnitude = BytePerm(0x3C383000u, 0x4C484440u, two_bytes & 0x7777u);
  const uint32_t s = two_bytes & 0x8888u;
  return magnitude | (s & 0x8u) << 4 | (s & 0x80u) << 8 | (s & 0x800u) << 12 | (s & 0x8000u) << 16;
}

}  // namespace flotilla::kernels::cuda
