// The grouped FP8 x FP4 expert GEMM on wgmma (grouped_gemm_fp4_wgmma.h), sm_90a only.
//
// Shared-memory operands (wgmma_layout.h): per 128-wide K block, the activation tile a_tile
// (128 rows x 128 E4M3 bytes) and the weight tile b_tile (128 columns x 128 E4M3 bytes, decoded
// from 64 packed E2M1 bytes per column by E2m1x4ToE4m3x4 in registers), both K-major without
// swizzling: core matrices of 8 rows x 16 bytes, LBO 128 (next 16 K bytes), SBO 1024 (next 8
// rows). The descriptor of slice s (K bytes 32 s .. 32 s + 31) starts 2 s core matrices along K;
// warpgroup g's A starts 8 g row groups down (row 64 g).
//
// Accumulator fragment of wgmma.m64nNk32 with f32 D (PTX ISA "Register Fragments", matrix D):
// warp w of the warpgroup holds rows 16 w .. 16 w + 15; within the warp, lane = 4 group + tig,
// and for each 8-column chunk j (N / 8 of them) registers
//   d[4j + 0], d[4j + 1] = row 16 w + group,     columns 8 j + 2 tig, 8 j + 2 tig + 1
//   d[4j + 2], d[4j + 3] = row 16 w + group + 8, the same columns
// — the m16n8 C layout of mma.sync repeated over the chunks.
//
// Ordering: operand tiles are written with ordinary stores (the generic proxy); wgmma reads them
// through the async proxy, so every thread issues fence.proxy.async.shared::cta after its stores
// and before the barrier that precedes the wgmma. wgmma.fence precedes each wgmma (its register
// operands were read by the previous slice's FFMAs), and wgmma.wait_group 0 completes it before
// its registers are read. The barrier at the top of each K block is reached only after both
// warpgroups' waits, so no wgmma still reads a tile when it is overwritten.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_formats.h"
#include "kernels/cuda/grouped_gemm_fp4_wgmma.h"
#include "kernels/cuda/wgmma_layout.h"

// wgmma exists on sm_90a alone; other targets get a kernel that traps, and the launch refuses
// them before that.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FLOTILLA_HAVE_WGMMA 1
#endif

namespace flotilla::kernels::cuda {
namespace {

#if defined(FLOTILLA_HAVE_WGMMA)
// D = A · B (scale-d = 0) for one warpgroup: A 64 x 32 and B 128 x 32 E4M3, both K-major in
// shared memory behind their descriptors; d: this thread's 64 f32 of the 64 x 128 result.
__device__ __forceinline__ void WgmmaE4m3M64N128K32(float (&d)[64], uint64_t desc_a,
                                                    uint64_t desc_b) {
  asm volatile(
      "{\n"
      ".reg .pred accumulate;\n"
      "setp.ne.b32 accumulate, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, accumulate, 1, 1;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
        "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(0));
}

__device__ __forceinline__ void WgmmaFence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void WgmmaCommitAndWait() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
// Pins the compiler's view of the accumulator registers: reads of the partial after the wait,
// and of the previous partial before the next wgmma, stay on their side of the asm statements.
__device__ __forceinline__ void FenceOperands(float (&d)[64]) {
#pragma unroll
  for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
__device__ __forceinline__ void FenceProxyAsync() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
#endif

__global__ void __launch_bounds__(kWgmmaGemmThreads, 1)
    GroupedGemmFp8Fp4WgmmaKernel(GroupedGemmFp8Fp4Params p) {
#if defined(FLOTILLA_HAVE_WGMMA)
  __shared__ __align__(128) uint8_t a_tile[kWgmmaGemmTileM * kWgmmaTileKBytes];
  __shared__ __align__(128) uint8_t b_tile[kWgmmaGemmTileN * kWgmmaTileKBytes];
  // Column c: the 4 slice scales of the block, slice order, one byte each.
  __shared__ uint32_t sw_tile[kWgmmaGemmTileN];

  const int64_t expert = blockIdx.y;
  const int32_t row_begin = p.group_offsets[expert];
  const int32_t row_end = p.group_offsets[expert + 1];
  if (row_begin >= row_end) return;  // empty group (uniform across the block)
  const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
  const int group = lane >> 2, tig = lane & 3;
  const int64_t n0 = int64_t(blockIdx.x) * kWgmmaGemmTileN;
  const int64_t k = p.k, kblocks = k / 128, row_bytes = k / 2, slices = k / 32;
  const uint8_t* w = p.w + expert * p.n * row_bytes;
  const e8m0* w_scale = p.w_scale + expert * p.n * slices;
  const uint32_t a_base =
      uint32_t(__cvta_generic_to_shared(a_tile)) + uint32_t(wg) * (64 / 8) * kWgmmaSbo;
  const uint32_t b_base = uint32_t(__cvta_generic_to_shared(b_tile));

  for (int64_t m0 = row_begin; m0 < row_end; m0 += kWgmmaGemmTileM) {
    float acc[64], part[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = part[i] = 0.0f;
    // This thread's two accumulator rows.
    const int64_t r0 = m0 + wg * 64 + warp * 16 + group, r1 = r0 + 8;
    float sa0 = 1.0f, sa1 = 1.0f;
    // Register staging: this thread's pieces of the next K block are loaded while the current
    // block's MMAs run, and stored (the weights decoded) once those have completed.
    constexpr int kPieces = kWgmmaGemmTileM * 8 / kWgmmaGemmThreads;  // 4 of A, 4 of B
    uint4 a_raw[kPieces];
    uint2 b_raw[kPieces];
    uint32_t sw_raw = 0;
    auto load_block = [&](int64_t kb) {
#pragma unroll
      for (int j = 0; j < kPieces; ++j) {
        const int u = tid + j * kWgmmaGemmThreads, row = u / 8, piece = u % 8;
        const int64_t gr = m0 + row;
        a_raw[j] = gr < row_end
                       ? __ldg(reinterpret_cast<const uint4*>(p.a + gr * k + kb * 128) + piece)
                       : make_uint4(0, 0, 0, 0);
        b_raw[j] =
            __ldg(reinterpret_cast<const uint2*>(w + (n0 + row) * row_bytes + kb * 64) + piece);
      }
      if (tid < kWgmmaGemmTileN) {
        const e8m0* s = w_scale + (n0 + tid) * slices + kb * 4;
        sw_raw = uint32_t(s[0]) | uint32_t(s[1]) << 8 | uint32_t(s[2]) << 16 | uint32_t(s[3]) << 24;
      }
    };
    load_block(0);
    for (int64_t kb = 0; kb < kblocks; ++kb) {
      __syncthreads();  // both warpgroups' wgmmas of the previous block have completed
      // Piece u: row (or weight column) u / 8, 16 K bytes u % 8. Activation rows past the
      // group are zeros; 8 packed weight bytes (16 E2M1) become 16 E4M3 bytes.
#pragma unroll
      for (int j = 0; j < kPieces; ++j) {
        const int u = tid + j * kWgmmaGemmThreads, row = u / 8, piece = u % 8;
        *reinterpret_cast<uint4*>(a_tile + WgmmaTileOffset(row, piece * 16)) = a_raw[j];
        const uint2 b = b_raw[j];
        *reinterpret_cast<uint4*>(b_tile + WgmmaTileOffset(row, piece * 16)) =
            make_uint4(E2m1x4ToE4m3x4(b.x & 0xffffu), E2m1x4ToE4m3x4(b.x >> 16),
                       E2m1x4ToE4m3x4(b.y & 0xffffu), E2m1x4ToE4m3x4(b.y >> 16));
      }
      if (tid < kWgmmaGemmTileN) sw_tile[tid] = sw_raw;
      FenceProxyAsync();
      __syncthreads();
      if (kb + 1 < kblocks) load_block(kb + 1);  // in flight during this block's MMAs

      // acc' = acc / sa for this block (exact: sa is a power of two).
      sa0 = r0 < row_end ? E8m0ToF32(p.a_scale[r0 * kblocks + kb]) : 1.0f;
      sa1 = r1 < row_end ? E8m0ToF32(p.a_scale[r1 * kblocks + kb]) : 1.0f;
      const float inv0 = __frcp_rn(sa0), inv1 = __frcp_rn(sa1);
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        acc[4 * j + 0] = __fmul_rn(acc[4 * j + 0], inv0);
        acc[4 * j + 1] = __fmul_rn(acc[4 * j + 1], inv0);
        acc[4 * j + 2] = __fmul_rn(acc[4 * j + 2], inv1);
        acc[4 * j + 3] = __fmul_rn(acc[4 * j + 3], inv1);
      }
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        const uint64_t desc_a = WgmmaDescriptor(a_base + 2 * s * kWgmmaLbo, kWgmmaLbo, kWgmmaSbo);
        const uint64_t desc_b = WgmmaDescriptor(b_base + 2 * s * kWgmmaLbo, kWgmmaLbo, kWgmmaSbo);
        FenceOperands(part);
        WgmmaFence();
        WgmmaE4m3M64N128K32(part, desc_a, desc_b);
        WgmmaCommitAndWait();
        FenceOperands(part);
#pragma unroll
        for (int j = 0; j < 16; ++j) {
          const int c = 8 * j + 2 * tig;
          const float sw0 = E8m0ToF32(e8m0(sw_tile[c] >> (8 * s)));
          const float sw1 = E8m0ToF32(e8m0(sw_tile[c + 1] >> (8 * s)));
          acc[4 * j + 0] = __fmaf_rn(part[4 * j + 0], sw0, acc[4 * j + 0]);
          acc[4 * j + 1] = __fmaf_rn(part[4 * j + 1], sw1, acc[4 * j + 1]);
          acc[4 * j + 2] = __fmaf_rn(part[4 * j + 2], sw0, acc[4 * j + 2]);
          acc[4 * j + 3] = __fmaf_rn(part[4 * j + 3], sw1, acc[4 * j + 3]);
        }
      }
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        acc[4 * j + 0] = __fmul_rn(acc[4 * j + 0], sa0);
        acc[4 * j + 1] = __fmul_rn(acc[4 * j + 1], sa0);
        acc[4 * j + 2] = __fmul_rn(acc[4 * j + 2], sa1);
        acc[4 * j + 3] = __fmul_rn(acc[4 * j + 3], sa1);
      }
    }
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int64_t col = n0 + 8 * j + 2 * tig;
      if (r0 < row_end) {
        *reinterpret_cast<uint32_t*>(p.c + r0 * p.ldc + col) =
            uint32_t(F32ToBf16(acc[4 * j + 0])) | uint32_t(F32ToBf16(acc[4 * j + 1])) << 16;
      }
      if (r1 < row_end) {
        *reinterpret_cast<uint32_t*>(p.c + r1 * p.ldc + col) =
            uint32_t(F32ToBf16(acc[4 * j + 2])) | uint32_t(F32ToBf16(acc[4 * j + 3])) << 16;
      }
    }
  }
#else
  __trap();  // never launched: LaunchGroupedGemmFp8Fp4Wgmma refuses devices other than sm_90
#endif
}

}  // namespace

int LaunchGroupedGemmFp8Fp4Wgmma(const GroupedGemmFp8Fp4Params& p, CUstream_st* stream) {
  int device = 0, major = 0, minor = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess)
    e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (e == cudaSuccess)
    e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  if (e != cudaSuccess) return int(e);
  if (major != 9 || minor != 0) return int(cudaErrorNotSupported);
  const LaunchShape s = GroupedGemmFp8Fp4WgmmaShape(p);
  GroupedGemmFp8Fp4WgmmaKernel<<<dim3(s.grid_x, s.grid_y), dim3(s.block_x), 0, stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace flotilla::kernels::cuda
