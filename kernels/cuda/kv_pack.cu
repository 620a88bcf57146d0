// QAT round trips and the packed KV layout (kv_pack.h).
#include <cuda_runtime.h>

#include "kernels/cpu/group_quant.h"
#include "kernels/cuda/kv_pack.h"

namespace flotilla::kernels::cuda {
namespace {

template <SimulateFormat kFormat>
__global__ void __launch_bounds__(kSimulateThreads) SimulateKernel(SimulateParams p) {
  const int64_t groups_per_row = (p.n + p.block - 1) / p.block;
  const int64_t total = p.rows * groups_per_row;
  for (int64_t i = int64_t(blockIdx.x) * kSimulateThreads + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * kSimulateThreads) {
    const int64_t r = i / groups_per_row, g0 = (i % groups_per_row) * p.block;
    const int64_t len = p.block < p.n - g0 ? p.block : p.n - g0;
    bf16* xg = p.x + r * p.ld + g0;
    const float amax = GroupAmaxOrNegative(xg, len);
    if (amax < 0.0f) {
      for (int64_t j = 0; j < len; ++j) xg[j] = NanBf16();
      continue;
    }
    if (kFormat == SimulateFormat::kFp8) {
      const float s = E8m0ToF32(Fp8ScaleBits(amax));
      for (int64_t j = 0; j < len; ++j) {
        xg[j] = F32ToBf16(__fmul_rn(Fp8ToF32(EncodeFp8(Bf16ToF32(xg[j]), s)), s));
      }
    } else {
      const float s = E8m0ToF32(Fp4ScaleBits(amax));
      for (int64_t j = 0; j < len; ++j) {
        xg[j] = F32ToBf16(__fmul_rn(Fp4ToF32(EncodeFp4(Bf16ToF32(xg[j]), s)), s));
      }
    }
  }
}

__global__ void __launch_bounds__(kKvPackThreads) PackKvKernel(KvPackParams p) {
  const int64_t groups = (p.nope + 63) / 64, used = p.nope + 2 * p.rope + groups;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const bf16* x = p.x + r * p.ldx;
    uint8_t* e = p.entries + r * p.entry_bytes;
    e8m0* scales = e + p.nope + 2 * p.rope;
    for (int64_t g = threadIdx.x; g < groups; g += kKvPackThreads) {
      const int64_t g0 = g * 64, len = 64 < p.nope - g0 ? 64 : p.nope - g0;
      const float amax = GroupAmaxOrNegative(x + g0, len);
      if (amax < 0.0f) {
        scales[g] = kNanScaleBits;
        for (int64_t i = g0; i < g0 + len; ++i) e[i] = kFp8NanCode;
        continue;
      }
      scales[g] = Fp8ScaleBits(amax);
      const float s = E8m0ToF32(scales[g]);
      for (int64_t i = g0; i < g0 + len; ++i) e[i] = EncodeFp8(Bf16ToF32(x[i]), s);
    }
    for (int64_t i = threadIdx.x; i < p.rope; i += kKvPackThreads) {
      const bf16 v = x[p.nope + i];
      e[p.nope + 2 * i] = uint8_t(v & 0xff);
      e[p.nope + 2 * i + 1] = uint8_t(v >> 8);
    }
    for (int64_t i = used + threadIdx.x; i < p.entry_bytes; i += kKvPackThreads) e[i] = 0;
  }
}

__global__ void __launch_bounds__(kKvPackThreads) UnpackKvKernel(KvUnpackParams p) {
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const uint8_t* e = p.entries + r * p.entry_bytes;
    bf16* x = p.x + r * p.ldx;
    const e8m0* scales = e + p.nope + 2 * p.rope;
    for (int64_t i = threadIdx.x; i < p.nope; i += kKvPackThreads) {
      const e8m0 sb = scales[i / 64];
      x[i] = sb == kNanScaleBits ? NanBf16() : F32ToBf16(__fmul_rn(Fp8ToF32(e[i]), E8m0ToF32(sb)));
    }
    for (int64_t i = threadIdx.x; i < p.rope; i += kKvPackThreads) {
      x[p.nope + i] = bf16(e[p.nope + 2 * i] | (uint16_t(e[p.nope + 2 * i + 1]) << 8));
    }
  }
}

__global__ void __launch_bounds__(kKvPackThreads) PackIndexerKeysKernel(KvPackParams p) {
  __shared__ e8m0 group_scale[kIndexerKeyMaxDim / 32];
  const int64_t dim = p.nope, groups = dim / 32, used = dim / 2 + groups;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const bf16* x = p.x + r * p.ldx;
    uint8_t* e = p.entries + r * p.entry_bytes;
    for (int64_t g = threadIdx.x; g < groups; g += kKvPackThreads) {
      const float amax = GroupAmaxOrNegative(x + g * 32, 32);
      group_scale[g] = amax < 0.0f ? kNanScaleBits : Fp4ScaleBits(amax);
      e[dim / 2 + g] = group_scale[g];
    }
    __syncthreads();
    // A thread per code byte: elements 2j (low nibble) and 2j + 1 of group j / 16.
    for (int64_t j = threadIdx.x; j < dim / 2; j += kKvPackThreads) {
      const e8m0 sb = group_scale[j / 16];
      if (sb == kNanScaleBits) {
        e[j] = 0;
        continue;
      }
      const float s = E8m0ToF32(sb);
      const uint8_t lo = EncodeFp4(Bf16ToF32(x[2 * j]), s);
      const uint8_t hi = EncodeFp4(Bf16ToF32(x[2 * j + 1]), s);
      e[j] = uint8_t(lo | (hi << 4));
    }
    for (int64_t i = used + threadIdx.x; i < p.entry_bytes; i += kKvPackThreads) e[i] = 0;
    __syncthreads();  // group_scale is reused by the next row
  }
}

__global__ void __launch_bounds__(kKvPackThreads) UnpackIndexerKeysKernel(KvUnpackParams p) {
  const int64_t dim = p.nope;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const uint8_t* e = p.entries + r * p.entry_bytes;
    bf16* x = p.x + r * p.ldx;
    const e8m0* scales = e + dim / 2;
    for (int64_t i = threadIdx.x; i < dim; i += kKvPackThreads) {
      const e8m0 sb = scales[i / 32];
      const uint8_t nibble = (i & 1) ? uint8_t(e[i / 2] >> 4) : uint8_t(e[i / 2] & 0xf);
      x[i] =
          sb == kNanScaleBits ? NanBf16() : F32ToBf16(__fmul_rn(Fp4ToF32(nibble), E8m0ToF32(sb)));
    }
  }
}

}  // namespace

int LaunchSimulate(const SimulateParams& p, CUstream_st* stream) {
  const int64_t blocks = SimulateBlocks(p);
  if (blocks > 0) {
    if (p.format == SimulateFormat::kFp8) {
      SimulateKernel<SimulateFormat::kFp8><<<unsigned(blocks), kSimulateThreads, 0, stream>>>(p);
    } else {
      SimulateKernel<SimulateFormat::kFp4><<<unsigned(blocks), kSimulateThreads, 0, stream>>>(p);
    }
  }
  return int(cudaGetLastError());
}

#define FLOTILLA_ROW_LAUNCH(Kernel)                                             \
  do {                                                                          \
    const int64_t blocks = KvPackBlocks(p.rows);                                \
    if (blocks > 0) Kernel<<<unsigned(blocks), kKvPackThreads, 0, stream>>>(p); \
    return int(cudaGetLastError());                                             \
  } while (0)

int LaunchPackKvEntries(const KvPackParams& p, CUstream_st* stream) {
  FLOTILLA_ROW_LAUNCH(PackKvKernel);
}
int LaunchUnpackKvEntries(const KvUnpackParams& p, CUstream_st* stream) {
  FLOTILLA_ROW_LAUNCH(UnpackKvKernel);
}
int LaunchPackIndexerKeys(const KvPackParams& p, CUstream_st* stream) {
  FLOTILLA_ROW_LAUNCH(PackIndexerKeysKernel);
}
int LaunchUnpackIndexerKeys(const KvUnpackParams& p, CUstream_st* stream) {
  FLOTILLA_ROW_LAUNCH(UnpackIndexerKeysKernel);
}

}  // namespace flotilla::kernels::cuda
