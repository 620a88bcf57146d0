// The MoE gate and the clamped SwiGLU (spec §9.1, §9.2; kernels::Route / SwiGlu) on the GPU, bit
// for bit with the CPU backend: the score is hd::SqrtSoftplusF, the top-k an exact selection
// under the CPU's total order (larger biased score first, NaN after every number, ties to the
// lower expert id), the weights score / (slot-order f32 sum) * scale; SwiGLU's exp is hd::ExpF
// and every f32 operation is separately rounded. Plain C++ header.
#pragma once

#include <cstdint>

#include "common/dtype.h"

struct CUstream_st;

namespace flotilla::kernels::cuda {

struct RouteParams {
  const float* logits = nullptr;      // [m, num_experts] device
  const float* bias = nullptr;        // [num_experts] device (score layers)
  const int64_t* hash_ids = nullptr;  // [m, ld_hash] device (hash layers); exactly one of the two
  int64_t ld_hash = 0;
  int64_t m = 0, num_experts = 0, top_k = 0;
  float route_scale = 1.0f;
  // [m] device or nullptr: row t routes as with row_top_k[t] experts (clamped to 1..top_k), its
  // slots past that repeating its first expert with weight 0 (Backend::RoutePerRowK).
  const int32_t* row_top_k = nullptr;
  int32_t* expert_idx = nullptr;  // [m, top_k] device
  float* weights = nullptr;       // [m, top_k] device
};

// A block per token: its threads form the scores in shared memory, warp 0 selects the top_k.
// A hash id outside [0, num_experts) is written as is and weighs NaN (the CPU would read out of
// bounds); the CUDA backend's callers pass tid2eid rows checked at load.
constexpr int kRouteThreads = 256;
constexpr int64_t kRouteMaxExperts = 4096;  // 9 bytes per expert in shared memory
constexpr int64_t kRouteMaxTopK = 64;

struct SwiGluParams {
  const bf16* gate = nullptr;  // [m, inter] device, row stride ld_in
  const bf16* up = nullptr;    // [m, inter] device, row stride ld_in
  int64_t ld_in = 0;
  const float* row_weight = nullptr;  // [m] device or nullptr
  int64_t m = 0, inter = 0;
  float limit = 10.0f;
  bf16* out = nullptr;  // [m, inter] device, row stride ld_out
  int64_t ld_out = 0;
};

// A thread per element, grid-stride.
constexpr int kSwiGluThreads = 256;

const char* CheckRoute(const RouteParams& p);
int64_t RouteSharedBytes(const RouteParams& p);
const char* CheckSwiGlu(const SwiGluParams& p);
int64_t SwiGluBlocks(const SwiGluParams& p);
int LaunchRoute(const RouteParams& p, CUstream_st* stream);
int LaunchSwiGlu(const SwiGluParams& p, CUstream_st* stream);

}  // namespace flotilla::kernels::cuda
