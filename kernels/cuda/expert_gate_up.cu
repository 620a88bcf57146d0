// Fused w1/w3 GEMMs, SwiGLU and act_quant of a routed expert (expert_gate_up.h). Fragment
// layouts as in grouped_gemm_fp4.cu. A block's 8 warps own the 128 columns of one quantisation
// group; the group's amax per row is reduced over the 4 lanes sharing a row (shuffles) and then
// over the 8 warps (shared memory).
#include <cuda_runtime.h>

#include "common/hd_math.h"
#include "kernels/cuda/device_formats.h"
#include "kernels/cuda/expert_gate_up.h"
#include "kernels/cuda/mma_e4m3.cuh"

namespace flotilla::kernels::cuda {
namespace {

constexpr int kWarps = kGateUpThreads / 32;
constexpr int kTileRows = 16 * kGateUpMTiles;

// kernels::SwiGlu for one element from the bf16-rounded gate and up values.
__device__ __forceinline__ float SwiGluOne(float g, float u, float limit, const float* weight) {
  // std::min(g, limit) and std::clamp(u, -limit, limit) as the CPU writes them: NaN passes.
  g = limit < g ? limit : g;
  u = u < -limit ? -limit : (limit < u ? limit : u);
  float a = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, hd::ExpF(-g))), u);  // the CPU SwiGlu's exp
  if (weight != nullptr) a = __fmul_rn(*weight, a);
  return RoundBf16(a);
}

__global__ void __launch_bounds__(kGateUpThreads) ExpertGateUpKernel(ExpertGateUpParams p) {
  __shared__ float amax_smem[kTileRows][kWarps];
  __shared__ int bad_smem[kTileRows][kWarps];
  const int64_t expert = blockIdx.y;
  const int32_t row_begin = p.group_offsets[expert], row_end = p.group_offsets[expert + 1];
  if (row_begin >= row_end) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane >> 2, tig = lane & 3;
  const int64_t qgroup = blockIdx.x;  // 128-column group of h
  const int64_t n0 = qgroup * 128 + warp * 16;
  const int64_t k = p.hidden, row_bytes = k / 2, slices = k / 32;
  const uint8_t* w[2] = {p.w1 + expert * p.inter * row_bytes, p.w3 + expert * p.inter * row_bytes};
  const e8m0* ws[2] = {p.w1_scale + expert * p.inter * slices, p.w3_scale + expert * p.inter * slices};

  for (int64_t m0 = row_begin; m0 < row_end; m0 += kTileRows) {
    float acc[2][kGateUpMTiles][2][4] = {};  // [w1/w3][m tile][n tile][fragment]
    for (int64_t s = 0; s < slices; ++s) {
      uint32_t b[2][2][2];
      float sw[2][2][2];
#pragma unroll
      for (int mat = 0; mat < 2; ++mat) {
#pragma unroll
        for (int t = 0; t < 2; ++t) {
          const uint8_t* wp = w[mat] + (n0 + t * 8 + group) * row_bytes + s * 16 + 2 * tig;
          b[mat][t][0] = E2m1x4ToE4m3x4(LoadFp4x4(wp));
          b[mat][t][1] = E2m1x4ToE4m3x4(LoadFp4x4(wp + 8));
          sw[mat][t][0] = E8m0ToF32(ws[mat][(n0 + t * 8 + 2 * tig) * slices + s]);
          sw[mat][t][1] = E8m0ToF32(ws[mat][(n0 + t * 8 + 2 * tig + 1) * slices + s]);
        }
      }
#pragma unroll
      for (int mt = 0; mt < kGateUpMTiles; ++mt) {
        if (m0 + mt * 16 >= row_end) break;  // uniform across the block
        const AFragment f = LoadAFragment(p.x, p.x_scale, k, m0 + mt * 16 + group, row_end, s, tig);
        const uint32_t(&a)[4] = f.a;
        const float sa0 = f.sa0, sa1 = f.sa1;
#pragma unroll
        for (int mat = 0; mat < 2; ++mat) {
#pragma unroll
          for (int t = 0; t < 2; ++t) {
            float d[4];
            MmaE4m3(a, b[mat][t], d);
            float* c = acc[mat][mt][t];
            c[0] = AccumulateSlice(c[0], d[0], sa0, sw[mat][t][0]);
            c[1] = AccumulateSlice(c[1], d[1], sa0, sw[mat][t][1]);
            c[2] = AccumulateSlice(c[2], d[2], sa1, sw[mat][t][0]);
            c[3] = AccumulateSlice(c[3], d[3], sa1, sw[mat][t][1]);
          }
        }
      }
    }

    // SwiGLU in place of the w1 accumulators; amax and non-finite flags per row.
#pragma unroll
    for (int mt = 0; mt < kGateUpMTiles; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {  // fragment rows group and group + 8
        const int local_row = mt * 16 + group + 8 * half;
        const int64_t row = m0 + local_row;
        const bool valid = row < row_end;
        const float* weight = (valid && p.row_weight != nullptr) ? p.row_weight + row : nullptr;
        float amax = 0.0f;
        int bad = 0;
#pragma unroll
        for (int t = 0; t < 2; ++t) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            float& g = acc[0][mt][t][2 * half + j];
            const float u = acc[1][mt][t][2 * half + j];
            g = valid ? SwiGluOne(RoundBf16(g), RoundBf16(u), p.limit, weight) : 0.0f;
            const float mag = fabsf(g);
            bad |= !(mag <= 3.4028235e38f);
            amax = fmaxf(amax, mag);
          }
        }
        // The 4 lanes of a fragment row, then the 8 warps.
        uint32_t bits = __float_as_uint(amax);
        bits = max(bits, __shfl_xor_sync(0xffffffffu, bits, 1));
        bits = max(bits, __shfl_xor_sync(0xffffffffu, bits, 2));
        bad |= __shfl_xor_sync(0xffffffffu, bad, 1);
        bad |= __shfl_xor_sync(0xffffffffu, bad, 2);
        if (tig == 0) {
          amax_smem[local_row][warp] = __uint_as_float(bits);
          bad_smem[local_row][warp] = bad;
        }
      }
    }
    __syncthreads();
#pragma unroll
    for (int mt = 0; mt < kGateUpMTiles; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int local_row = mt * 16 + group + 8 * half;
        const int64_t row = m0 + local_row;
        if (row >= row_end) continue;
        float amax = 0.0f;
        int bad = 0;
#pragma unroll
        for (int i = 0; i < kWarps; ++i) {
          amax = fmaxf(amax, amax_smem[local_row][i]);
          bad |= bad_smem[local_row][i];
        }
        const e8m0 scale = bad ? e8m0(0xff) : CeilPow2ScaleBits(fmaxf(amax, 1e-4f) * (1.0f / 448.0f));
        const float sv = E8m0ToF32(scale);
        fp8* out = p.h + row * p.inter;
#pragma unroll
        for (int t = 0; t < 2; ++t) {
          const int64_t col = n0 + t * 8 + 2 * tig;
          uint32_t pair = 0;
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const float v = acc[0][mt][t][2 * half + j];
            const fp8 q = bad ? fp8(0x7f) : F32ToFp8(fminf(fmaxf(__fdiv_rn(v, sv), -448.0f), 448.0f));
            pair |= uint32_t(q) << (8 * j);
          }
          *reinterpret_cast<unsigned short*>(out + col) = (unsigned short)pair;
        }
        if (warp == 0 && tig == 0) p.h_scale[row * (p.inter / 128) + qgroup] = scale;
      }
    }
    __syncthreads();  // the shared amax of this tile is read before the next tile writes it
  }
}

}  // namespace

int LaunchExpertGateUp(const ExpertGateUpParams& p, CUstream_st* stream) {
  ExpertGateUpKernel<<<dim3(ExpertGateUpGridX(p), unsigned(p.num_experts)), kGateUpThreads, 0,
                       stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace flotilla::kernels::cuda
