// Device helpers shared by the FP8 x FP4 expert GEMM kernels: the m16n8k32 e4m3 MMA and the
// fragment loads (layouts in grouped_gemm_fp4.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"

namespace flotilla::kernels::cuda {

// D = A * B with a zero accumulator: the f32 partial of one 32-wide K slice.
__device__ __forceinline__ void MmaE4m3(const uint32_t (&a)[4], const uint32_t (&b)[2],
                                        float (&d)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %10, %10, %10};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(0.0f));
}

__device__ __forceinline__ uint32_t LoadFp8x4(const fp8* p, bool valid) {
  return valid ? __ldg(reinterpret_cast<const uint32_t*>(p)) : 0u;
}

__device__ __forceinline__ uint32_t LoadFp4x4(const uint8_t* p) {
  return __ldg(reinterpret_cast<const unsigned short*>(p));
}

// The A fragment of one m16 tile and 32-wide slice `s` of FP8 rows [k] (rows r0 = tile start +
// group, r1 = r0 + 8; rows at or past `row_end` read as zeros) and the two rows' activation
// scales (per 128 columns).
struct AFragment {
  uint32_t a[4];
  float sa0, sa1;
};
__device__ __forceinline__ AFragment LoadAFragment(const fp8* x, const e8m0* x_scale, int64_t k,
                                                   int64_t r0, int64_t row_end, int64_t s,
                                                   int tig) {
  const int64_t r1 = r0 + 8;
  const bool v0 = r0 < row_end, v1 = r1 < row_end;
  const fp8* a0 = x + r0 * k + s * 32 + 4 * tig;
  const fp8* a1 = x + r1 * k + s * 32 + 4 * tig;
  AFragment f;
  f.a[0] = LoadFp8x4(a0, v0);
  f.a[1] = LoadFp8x4(a1, v1);
  f.a[2] = LoadFp8x4(a0 + 16, v0);
  f.a[3] = LoadFp8x4(a1 + 16, v1);
  f.sa0 = v0 ? E8m0ToF32(x_scale[r0 * (k / 128) + s / 4]) : 0.0f;
  f.sa1 = v1 ? E8m0ToF32(x_scale[r1 * (k / 128) + s / 4]) : 0.0f;
  return f;
}

// acc + (P * sa) * sw with every step rounded (no contraction): the CPU backend's order.
__device__ __forceinline__ float AccumulateSlice(float acc, float partial, float sa, float sw) {
  return __fadd_rn(acc, __fmul_rn(__fmul_rn(partial, sa), sw));
}

}  // namespace flotilla::kernels::cuda
