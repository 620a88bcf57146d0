// Deterministic synthetic checkpoints in the official DeepSeek-V4 format (make-model).
#pragma once

#include <cstdint>
#include <string>

#include "common/model_config.h"
#include "common/status.h"

namespace flotilla {

// Presets: "tiny" (every layer kind in 4 layers, real vocabulary, FP8/FP4; the test model),
// "small" (the 1B mini's shape, FP8/FP4; for benchmarks), "mini-1b" (spec §1.5, all BF16).
absl::StatusOr<ModelConfig> PresetConfig(const std::string& preset);

struct SyntheticOptions {
  uint64_t seed = 1;
  uint64_t shard_bytes = 64ull << 20;  // target size of a shard; MTP tensors go to the last one
  std::string tokenizer_dir;           // tokenizer.json / tokenizer_config.json copied from here
};

// Writes config.json, generation_config.json, safetensors shards, model.safetensors.index.json
// and the tokenizer files into `dir` (created if needed). Same seed, same bytes.
absl::Status WriteSyntheticCheckpoint(const ModelConfig& config, const SyntheticOptions& options,
                                      const std::string& dir);

}  // namespace flotilla
