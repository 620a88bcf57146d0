// act_quant on the GPU (spec §2.3; kernels::ActQuantFp8's contract): per row and per group of
// `block` consecutive elements, amax = max(|x|, 1e-4), s = 2^ceil(log2(amax / 448)),
// q = e4m3(clamp(x / s, ±448)); a group holding a NaN or an infinity gets scale 0xFF and NaN
// codes. Bitwise equal to the CPU backend: the amax is a maximum (order-free) and every other
// step is the same FLOTILLA_HD codec of common/dtype.h with IEEE division.
#pragma once

#include <cstdint>

#include "common/dtype.h"

struct CUstream_st;

namespace flotilla::kernels::cuda {

struct ActQuantFp8Params {
  const bf16* x = nullptr;  // [m, k] device, row stride ldx
  int64_t ldx = 0;
  int64_t m = 0, k = 0;
  int64_t block = 128;      // 32, 64 or 128
  fp8* q = nullptr;         // [m, k] device, dense
  e8m0* scale = nullptr;    // [m, k / block] device
};

// One warp per group, 8 warps per block.
constexpr int kActQuantThreads = 256;

// nullptr when `p` can be launched, else what is wrong.
const char* CheckActQuantFp8(const ActQuantFp8Params& p);
// Blocks of the launch: ceil(m * k / block / 8).
int64_t ActQuantFp8Blocks(const ActQuantFp8Params& p);
// Enqueues on `stream`; returns the launch's cudaError_t (0 on success).
int LaunchActQuantFp8(const ActQuantFp8Params& p, CUstream_st* stream);

}  // namespace flotilla::kernels::cuda
