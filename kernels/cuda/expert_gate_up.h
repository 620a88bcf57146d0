// The first half of a routed expert on the GPU, fused: for every local expert's rows (ragged
// groups from device-side offsets), gate = bf16(x · w1ᵀ) and up = bf16(x · w3ᵀ) with the grouped
// FP8 x FP4 GEMM's math (grouped_gemm_fp4.h), then SwiGLU exactly as kernels::SwiGlu (gate
// clamped above at `limit`, up to ±limit, (g / (1 + exp(-g))) * u, times the row's routing
// weight, bf16), then act_quant of that row in groups of 128 (kernels::ActQuantFp8) — the FP8
// input of w2 with its scales — without the bf16 intermediates ever reaching memory.
//
// Against the CPU chain GemmFp8Fp4 (w1), GemmFp8Fp4 (w3), SwiGlu, ActQuantFp8: the GEMM partials
// carry the grouped GEMM's tolerance and the device expf may differ from the host's in the last
// bit, so a code can land one FP8 step away; docs/cuda.md states the bound the test checks.
#pragma once

#include <cstdint>

#include "common/dtype.h"

struct CUstream_st;

namespace flotilla::kernels::cuda {

struct ExpertGateUpParams {
  const fp8* x = nullptr;                  // [rows, hidden] device, rows grouped by expert
  const e8m0* x_scale = nullptr;           // [rows, hidden/128]
  const uint8_t* w1 = nullptr;             // [num_experts, inter, hidden/2] packed E2M1
  const e8m0* w1_scale = nullptr;          // [num_experts, inter, hidden/32]
  const uint8_t* w3 = nullptr;             // same shapes as w1
  const e8m0* w3_scale = nullptr;
  const int32_t* group_offsets = nullptr;  // [num_experts + 1] device
  const float* row_weight = nullptr;       // [rows] routing weights, or nullptr
  float limit = 10.0f;
  fp8* h = nullptr;                        // [rows, inter] device, dense
  e8m0* h_scale = nullptr;                 // [rows, inter/128]
  int64_t inter = 0, hidden = 0;
  int64_t num_experts = 0;
};

// 256 threads (8 warps x 16 columns): a block owns one 128-column quantisation group of h; grid
// (inter / 128, num_experts); rows in tiles of 16 * kGateUpMTiles.
constexpr int kGateUpThreads = 256;
constexpr int kGateUpMTiles = 2;

const char* CheckExpertGateUp(const ExpertGateUpParams& p);
uint32_t ExpertGateUpGridX(const ExpertGateUpParams& p);
int LaunchExpertGateUp(const ExpertGateUpParams& p, CUstream_st* stream);

}  // namespace flotilla::kernels::cuda
