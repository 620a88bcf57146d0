// The compressors' softmax pooling (spec §6; kernels::CompressPool, the CUDA backend's
// CompressPoolArgs: many entries at once, slots addressed by element offsets into the state) on
// the GPU, bit for bit with the CPU backend: per channel the max over slots (fmax), e^(g - max)
// by hd::ExpF summed in slot order, then out = Σ_s (e_s / sum) * k_s in slot order with each
// operation rounded on its own. Plain C++ header.
#pragma once

#include <cstdint>

#include "kernels/cuda/device_error.h"

struct CUstream_st;

namespace flotilla::kernels::cuda {

struct CompressPoolParams {
  const float* kv = nullptr;              // device, state values
  const float* score = nullptr;           // device, state scores (same layout as kv)
  int64_t state_elements = 0;             // elements of kv (and of score)
  const int64_t* slot_offsets = nullptr;  // [num_entries, n_slots] device
  int64_t num_entries = 0, n_slots = 0, d = 0;
  float* out = nullptr;          // [num_entries, d] device
  DeviceError* error = nullptr;  // device: an offset outside the state is recorded here
};

// A thread per (entry, channel), grid-stride; e_s is formed twice (once for the sum, once for the
// weighted sum: the same bits) so nothing per slot is kept.
constexpr int kCompressThreads = 256;

const char* CheckCompressPool(const CompressPoolParams& p);
int64_t CompressPoolBlocks(const CompressPoolParams& p);
int LaunchCompressPool(const CompressPoolParams& p, CUstream_st* stream);

}  // namespace flotilla::kernels::cuda
