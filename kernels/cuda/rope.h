// Interleaved-pair RoPE and its inverse (spec §5.3; kernels::ApplyRope's contract) on the GPU,
// bit for bit with the CPU backend: θ = f32(pos) * f_i, (sin θ, cos θ) from hd::SinCosF (the
// same IEEE double sequence on both sides), then (re c - im s, re s + im c) with separately
// rounded f32 operations and one bf16 rounding. The frequency table is kernels::RopeFrequencies'
// (computed on the host once and copied). Plain C++ header.
#pragma once

#include <cstdint>

#include "common/dtype.h"

struct CUstream_st;

namespace flotilla::kernels::cuda {

struct RopeParams {
  bf16* x = nullptr;  // device; token t, head h at x + t*ld + h*head_stride; in place
  int64_t ld = 0;
  int64_t head_stride = 0;
  int64_t num_tokens = 0, num_heads = 0;
  int64_t rope_offset = 0, rope_dim = 0;  // rope_dim even
  const int64_t* positions = nullptr;     // [num_tokens] device
  const float* freqs = nullptr;           // [rope_dim / 2] device
  bool inverse = false;
};

// A block per token; thread i of kRopeThreads rotates pairs i, i + kRopeThreads, ... of every
// head (sin/cos formed once per token and pair).
constexpr int kRopeThreads = 64;

const char* CheckRope(const RopeParams& p);
int64_t RopeBlocks(const RopeParams& p);
int LaunchRope(const RopeParams& p, CUstream_st* stream);

}  // namespace flotilla::kernels::cuda
