// Grouped FP8 x FP4 expert GEMM (grouped_gemm_fp4.h): mma.sync m16n8k32 e4m3 with f32
// accumulation, the documented fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k32"):
//   lane = 4 * group + tig;
//   A (16x32, row): reg 0 = row group, k 4tig..4tig+3; reg 1 = row group+8, same k;
//                   reg 2 = row group, k + 16;       reg 3 = row group+8, k + 16
//   B (32x8, col):  reg 0 = column group, k 4tig..4tig+3; reg 1 = k + 16
//   C (16x8 f32):   c0, c1 = row group, columns 2tig, 2tig+1; c2, c3 = row group+8
#include <cuda_runtime.h>

#include "kernels/cuda/device_formats.h"
#include "kernels/cuda/grouped_gemm_fp4.h"
#include "kernels/cuda/mma_e4m3.cuh"

namespace flotilla::kernels::cuda {
namespace {

__device__ __forceinline__ float ScaleOf(e8m0 s) { return E8m0ToF32(s); }

__global__ void __launch_bounds__(kGroupedGemmThreads)
    GroupedGemmFp8Fp4Kernel(GroupedGemmFp8Fp4Params p) {
  const int64_t expert = blockIdx.y;
  int32_t row_begin, row_end;
  if (p.group_offsets64 != nullptr) {  // the window's part of the group
    const int64_t b = p.group_offsets64[expert] - p.window_begin;
    const int64_t e = p.group_offsets64[expert + 1] - p.window_begin;
    row_begin = int32_t(b < 0 ? 0 : (b > p.window_rows ? p.window_rows : b));
    row_end = int32_t(e < 0 ? 0 : (e > p.window_rows ? p.window_rows : e));
  } else {
    row_begin = p.group_offsets[expert];
    row_end = p.group_offsets[expert + 1];
  }
  if (row_begin >= row_end) return;  // empty group
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane >> 2, tig = lane & 3;
  const int64_t n0 = (int64_t(blockIdx.x) * (kGroupedGemmThreads / 32) + warp) *
                     kGroupedGemmColumnsPerWarp;
  if (n0 >= p.n) return;

  const int64_t k = p.k, row_bytes = k / 2, slices = k / 32;
  const uint8_t* w = p.w + expert * p.n * row_bytes;
  const e8m0* w_scale = p.w_scale + expert * p.n * slices;
  // This lane's B columns (one per n tile) and C columns (two per n tile).
  const uint8_t* w_row[2] = {w + (n0 + group) * row_bytes, w + (n0 + 8 + group) * row_bytes};
  const e8m0* sw_row[2][2] = {
      {w_scale + (n0 + 2 * tig) * slices, w_scale + (n0 + 2 * tig + 1) * slices},
      {w_scale + (n0 + 8 + 2 * tig) * slices, w_scale + (n0 + 8 + 2 * tig + 1) * slices}};

  for (int64_t m0 = row_begin; m0 < row_end; m0 += 16 * kGroupedGemmMTiles) {
    float acc[kGroupedGemmMTiles][2][4] = {};
    for (int64_t s = 0; s < slices; ++s) {
      uint32_t b[2][2];
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        const uint8_t* wp = w_row[t] + s * 16 + 2 * tig;
        b[t][0] = E2m1x4ToE4m3x4(LoadFp4x4(wp));
        b[t][1] = E2m1x4ToE4m3x4(LoadFp4x4(wp + 8));
      }
      float sw[2][2];
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        sw[t][0] = ScaleOf(sw_row[t][0][s]);
        sw[t][1] = ScaleOf(sw_row[t][1][s]);
      }
#pragma unroll
      for (int mt = 0; mt < kGroupedGemmMTiles; ++mt) {
        if (m0 + mt * 16 >= row_end) break;  // uniform across the warp
        const AFragment f = LoadAFragment(p.a, p.a_scale, k, m0 + mt * 16 + group, row_end, s, tig);
        const uint32_t(&a)[4] = f.a;
        const float sa0 = f.sa0, sa1 = f.sa1;
#pragma unroll
        for (int t = 0; t < 2; ++t) {
          float d[4];
          MmaE4m3(a, b[t], d);
          // acc + (P * sa) * sw, each step rounded: no fused multiply-add (the CPU contract).
          float* c = acc[mt][t];
          c[0] = AccumulateSlice(c[0], d[0], sa0, sw[t][0]);
          c[1] = AccumulateSlice(c[1], d[1], sa0, sw[t][1]);
          c[2] = AccumulateSlice(c[2], d[2], sa1, sw[t][0]);
          c[3] = AccumulateSlice(c[3], d[3], sa1, sw[t][1]);
        }
      }
    }
#pragma unroll
    for (int mt = 0; mt < kGroupedGemmMTiles; ++mt) {
      const int64_t r0 = m0 + mt * 16 + group, r1 = r0 + 8;
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        const int64_t col = n0 + t * 8 + 2 * tig;
        const float* c = acc[mt][t];
        if (r0 < row_end) {
          *reinterpret_cast<uint32_t*>(p.c + r0 * p.ldc + col) =
              uint32_t(F32ToBf16(c[0])) | uint32_t(F32ToBf16(c[1])) << 16;
        }
        if (r1 < row_end) {
          *reinterpret_cast<uint32_t*>(p.c + r1 * p.ldc + col) =
              uint32_t(F32ToBf16(c[2])) | uint32_t(F32ToBf16(c[3])) << 16;
        }
      }
    }
  }
}

}  // namespace

int LaunchGroupedGemmFp8Fp4(const GroupedGemmFp8Fp4Params& p, CUstream_st* stream) {
  const LaunchShape s = GroupedGemmFp8Fp4Shape(p);
  GroupedGemmFp8Fp4Kernel<<<dim3(s.grid_x, s.grid_y), dim3(s.block_x), 0, stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace flotilla::kernels::cuda
