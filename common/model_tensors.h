// The tensor inventory a config implies (spec §3): official names, shapes and dtypes. Used by
// make-model to write checkpoints, by inspect to check them, and by the loader.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/model_config.h"
#include "common/safetensors.h"

namespace flotilla {

// How routed-expert and dense linear weights are stored.
enum class ExpertFormat {
  kFp4,      // int8 packed E2M1 [out, in/2] + UE8M0 scale [out, in/32] (V4-Flash)
  kFp8,      // E4M3 [out, in] + f32 block scale [ceil(out/128), ceil(in/128)] (V4-Flash-Base)
  kBf16,     // plain bf16 [out, in] (all-BF16 checkpoints)
};

struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
};

// The expert format a config declares: expert_dtype "fp4"/"fp8", else kFp4 when quantised and
// kBf16 when not.
ExpertFormat ExpertFormatOf(const ModelConfig& config);

// The stored expert format, read from the first expert's weight dtype (a checkpoint may carry
// FP4 or FP8 experts whatever expert_dtype says); ExpertFormatOf(config) when absent.
ExpertFormat DetectExpertFormat(const ModelConfig& config, const WeightSource& source);

// Every tensor of the checkpoint, in a stable order: globals, then each main layer, then MTP.
std::vector<TensorSpec> ExpectedTensors(const ModelConfig& config, ExpertFormat experts);

// The inventory check `flotilla inspect` prints, as one status for the loaders: every expected
// tensor present with its dtype and shape, and no tensor the config does not explain (a config
// with fewer layers than the shards, say). The error names the directory, the count of each kind
// of problem and the first few tensors of each.
absl::Status CheckInventory(const ModelConfig& config, const WeightSource& source);

// Name prefix of a layer id: "layers.L." for main layers, "mtp.I." for MTP layers.
std::string LayerPrefix(const ModelConfig& config, int64_t layer_id);

}  // namespace flotilla
