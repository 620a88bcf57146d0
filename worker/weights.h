// Model weights as the forward pass uses them: spans of backend memory. On a backend that can
// read host memory in place (the CPU backend) the tensors of the memory-mapped checkpoint are
// imported (Backend::ImportHost: zero copy); tensors converted at load (wo_a dequantised to bf16,
// spec §3.6; tid2eid as int64; the RoPE frequencies) and tensors whose mapped address does not
// suit their element type (safetensors packs tensors without padding, so an f32 tensor after an
// odd-sized bf16 one starts at an odd address) are uploaded into one owned arena. A backend that
// cannot import (CUDA), or ModelOptions::upload_weights, uploads every tensor into that arena.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/model_config.h"
#include "common/model_tensors.h"
#include "common/safetensors.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "sharding/layout.h"
#include "worker/linear.h"

namespace flotilla {

struct HcWeights {
  kernels::In<float> fn;     // [mix, hc*D]
  kernels::In<float> base;   // [mix]
  kernels::In<float> scale;  // [3] (block) or [1] (head)
};

struct CompressorWeights {
  int64_t ratio = 0;    // tokens per entry
  int64_t dim = 0;      // entry width d
  bool overlap = false; // ratio 4: two halves of width d (A: previous block, B: current)
  kernels::In<bf16> wkv;    // [width, D], width = overlap ? 2d : d
  kernels::In<bf16> wgate;  // [width, D]
  kernels::In<float> ape;   // [ratio, width]
  kernels::In<bf16> norm;   // [d]
  int64_t width() const { return overlap ? 2 * dim : dim; }
};

struct IndexerWeights {
  Linear wq_b;                          // [IH*ihd, q_lora]
  kernels::In<bf16> weights_proj;       // [IH, D]
  CompressorWeights compressor;         // ratio 4, dim ihd
};

struct AttentionWeights {
  int64_t layer_id = 0;          // main layers 0..L-1, MTP layers L..
  kernels::In<float> sink;       // [H]
  Linear wq_a, wq_b, wkv, wo_b;
  kernels::In<bf16> q_norm;   // [q_lora]
  kernels::In<bf16> kv_norm;  // [hd]
  kernels::In<bf16> wo_a;     // [G*o_lora, (H/G)*hd], dequantised
  int64_t ratio = 0;
  std::optional<CompressorWeights> compressor;
  std::optional<IndexerWeights> indexer;
  kernels::In<float> freqs;  // RoPE inverse frequencies of this layer [rope/2]
};

struct ExpertWeights {
  Linear w1, w3, w2;
};

// The routed experts' tensors as one list per tensor, the grouped GEMMs' arguments; index 0, 1,
// 2: w1, w3, w2 (unset spans where the experts' precision has no such tensor).
struct ExpertLists {
  std::vector<kernels::In<uint8_t>> w4[3];
  std::vector<kernels::In<fp8>> w8[3];
  std::vector<kernels::In<e8m0>> scale[3];
  std::vector<kernels::In<float>> scale_f32[3];
  std::vector<kernels::In<bf16>> wb[3];
};

struct MoeWeights {
  kernels::In<bf16> gate;   // [E, D]
  kernels::In<float> bias;  // [E] (score-routed layers); unset otherwise
  // [V, cols] (hash layers; unset otherwise), checked at load (ids in range, no repeats).
  kernels::In<int64_t> tid2eid;
  int64_t tid2eid_cols = 0;
  bool has_shared = false;
  ExpertWeights shared;
  int64_t first_expert = 0;             // global id of experts[0]
  std::vector<ExpertWeights> experts;   // this rank's routed experts (all in one process)
  ExpertLists lists;                    // the same, per tensor (MakeExpertLists, at load)
};

struct BlockWeights {
  int64_t layer_id = 0;
  kernels::In<bf16> attn_norm;  // [D]
  kernels::In<bf16> ffn_norm;   // [D]
  HcWeights hc_attn, hc_ffn;
  AttentionWeights attn;
  MoeWeights moe;
};

struct MtpWeights {
  BlockWeights block;
  Linear e_proj, h_proj;
  kernels::In<bf16> enorm;  // [D]
  kernels::In<bf16> hnorm;  // [D]
  kernels::In<bf16> norm;   // [D]
  HcWeights hc_head;
};

struct ModelWeights {
  // The memory behind every span below: checkpoint tensors viewed in place (one imported arena
  // each) and the owned arena of uploaded tensors.
  std::vector<std::unique_ptr<kernels::Arena>> imported;
  std::unique_ptr<kernels::Arena> owned;
  int64_t num_realigned = 0;   // checkpoint tensors copied because their address was misaligned
  int64_t uploaded_bytes = 0;  // bytes uploaded into `owned`
  kernels::In<bf16> embed;     // [V, D] (this rank's vocab slice)
  kernels::In<bf16> head;      // [V, D] (this rank's vocab slice)
  kernels::In<bf16> norm;      // [D]
  HcWeights hc_head;
  std::vector<BlockWeights> layers;
  std::vector<MtpWeights> mtp;
};

// What a process binds: the tensors it holds (names, dtypes, shapes of its slices) and the
// routed experts it owns.
struct WeightSelection {
  std::vector<TensorSpec> tensors;
  IndexRange experts;
};
// Everything, for a single process.
WeightSelection FullSelection(const ModelConfig& config, ExpertFormat experts);

// Binds every selected tensor, checking dtypes and shapes (errors name the tensor and its
// file), dequantises wo_a, checks tid2eid rows (ids in range, no repeats). Tensors are imported
// from `source` (which must outlive the weights) where `backend` can and `upload` is false,
// else uploaded on `queue`; returns once every upload is done.
absl::StatusOr<std::unique_ptr<ModelWeights>> LoadWeights(const ModelConfig& config,
                                                          const WeightSource& source,
                                                          const WeightSelection& selection,
                                                          kernels::Backend& backend,
                                                          kernels::Queue& queue, bool upload);

}  // namespace flotilla
