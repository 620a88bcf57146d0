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

// The compressor state update of one sequence's chunk (worker/attention.cc, Model::Compress),
// bitwise with the CPU: tokens in position order; token p writes its kv row and score row
// (g + ape[p % ratio], one f32 add) into slot (overlap ? ratio : 0) + p % ratio of the state;
// after each token with (p + 1) % ratio == 0 an entry is pooled (CompressPool over the ratio
// slots, or with overlap the A-halves of the previous block's slots then the B-halves of this
// block's: channels [0, d) of slots 0..ratio-1 and [d, 2d) of slots ratio..2 ratio-1) into the
// next row of `pooled`, and with overlap this block's slots become the previous block's.
struct CompressorUpdateParams {
  const float* k = nullptr;    // [n, width] device: the chunk's kv projections
  const float* g = nullptr;    // [n, width] device: the chunk's gate projections
  const float* ape = nullptr;  // [ratio, width] device
  int64_t n = 0, width = 0, d = 0, ratio = 0;
  bool overlap = false;  // width == 2 d
  int64_t start_pos = 0;
  float* state_kv = nullptr;     // [(overlap ? 2 : 1) * ratio, width] device, updated
  float* state_score = nullptr;  // the same layout
  float* pooled = nullptr;       // [CompressorEntries(start_pos, n, ratio), d] device
};

// One block walks the chunk's tokens in order (a barrier between writing a token's slot and
// pooling from it); its threads own channels.
constexpr int kCompressorUpdateThreads = 512;

// How many entries a chunk of n tokens from start_pos completes.
int64_t CompressorEntries(int64_t start_pos, int64_t n, int64_t ratio);
const char* CheckCompressorUpdate(const CompressorUpdateParams& p);
int LaunchCompressorUpdate(const CompressorUpdateParams& p, CUstream_st* stream);

const char* CheckCompressPool(const CompressPoolParams& p);
int64_t CompressPoolBlocks(const CompressPoolParams& p);
int LaunchCompressPool(const CompressPoolParams& p, CUstream_st* stream);

}  // namespace flotilla::kernels::cuda
