// Model weights as the forward pass uses them: views into the memory-mapped checkpoint (zero
// copy), except wo_a, which is dequantised to bf16 at load (spec §3.6), and any tensor whose
// mapped address does not suit its element type (safetensors packs tensors without padding, so
// an f32 tensor after an odd-sized bf16 one starts at an odd address): that one is copied into
// owned storage, aligned to 8 bytes, when it is bound.
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
#include "sharding/layout.h"
#include "worker/linear.h"

namespace flotilla {

struct HcWeights {
  const float* fn = nullptr;     // [mix, hc*D]
  const float* base = nullptr;   // [mix]
  const float* scale = nullptr;  // [3] (block) or [1] (head)
};

struct CompressorWeights {
  int64_t ratio = 0;    // tokens per entry
  int64_t dim = 0;      // entry width d
  bool overlap = false; // ratio 4: two halves of width d (A: previous block, B: current)
  const bf16* wkv = nullptr;    // [width, D], width = overlap ? 2d : d
  const bf16* wgate = nullptr;  // [width, D]
  const float* ape = nullptr;   // [ratio, width]
  const bf16* norm = nullptr;   // [d]
  int64_t width() const { return overlap ? 2 * dim : dim; }
};

struct IndexerWeights {
  Linear wq_b;                          // [IH*ihd, q_lora]
  const bf16* weights_proj = nullptr;   // [IH, D]
  CompressorWeights compressor;         // ratio 4, dim ihd
};

struct AttentionWeights {
  int64_t layer_id = 0;          // main layers 0..L-1, MTP layers L..
  const float* sink = nullptr;  // [H]
  Linear wq_a, wq_b, wkv, wo_b;
  const bf16* q_norm = nullptr;   // [q_lora]
  const bf16* kv_norm = nullptr;  // [hd]
  std::vector<bf16> wo_a;         // [G*o_lora, (H/G)*hd], dequantised
  int64_t ratio = 0;
  std::optional<CompressorWeights> compressor;
  std::optional<IndexerWeights> indexer;
  std::vector<float> freqs;       // RoPE inverse frequencies of this layer [rope/2]
};

struct ExpertWeights {
  Linear w1, w3, w2;
};

struct MoeWeights {
  const bf16* gate = nullptr;       // [E, D]
  const float* bias = nullptr;      // [E] (score-routed layers)
  // [V, cols] (hash layers), copied at load: an I64 tensor in a safetensors file need not be
  // 8-byte aligned.
  std::vector<int64_t> tid2eid;
  int64_t tid2eid_cols = 0;
  bool has_shared = false;
  ExpertWeights shared;
  int64_t first_expert = 0;             // global id of experts[0]
  std::vector<ExpertWeights> experts;   // this rank's routed experts (all in one process)
};

struct BlockWeights {
  int64_t layer_id = 0;
  const bf16* attn_norm = nullptr;
  const bf16* ffn_norm = nullptr;
  HcWeights hc_attn, hc_ffn;
  AttentionWeights attn;
  MoeWeights moe;
};

struct MtpWeights {
  BlockWeights block;
  Linear e_proj, h_proj;
  const bf16* enorm = nullptr;
  const bf16* hnorm = nullptr;
  const bf16* norm = nullptr;
  HcWeights hc_head;
};

// Owned copies of tensors whose mapped address was misaligned for their element type; every
// copy is aligned to 8 bytes, enough for every checkpoint dtype.
class AlignedCopies {
 public:
  // `data` itself when it is aligned for T, else a copy of its `bytes` bytes held here.
  template <typename T>
  const T* Aligned(const uint8_t* data, size_t bytes) {
    if (reinterpret_cast<uintptr_t>(data) % alignof(T) == 0) {
      return reinterpret_cast<const T*>(data);
    }
    return reinterpret_cast<const T*>(Copy(data, bytes));
  }
  int64_t num_copies() const { return int64_t(copies_.size()); }
  uint64_t bytes() const { return bytes_; }

 private:
  const uint8_t* Copy(const uint8_t* data, size_t bytes);
  std::vector<std::unique_ptr<uint64_t[]>> copies_;
  uint64_t bytes_ = 0;
};

struct ModelWeights {
  AlignedCopies copies;         // storage behind the pointers below that were realigned
  const bf16* embed = nullptr;  // [V, D]
  const bf16* head = nullptr;   // [V, D]
  const bf16* norm = nullptr;   // [D]
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
// file), copies misaligned tensors (AlignedCopies), dequantises wo_a, checks tid2eid rows (ids
// in range, no repeats).
absl::StatusOr<std::unique_ptr<ModelWeights>> LoadWeights(const ModelConfig& config,
                                                          const WeightSource& source,
                                                          const WeightSelection& selection);

}  // namespace flotilla
