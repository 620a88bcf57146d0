// The HF config.json of DeepSeek-V4 checkpoints (spec §1.1), parsed once and validated.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace flotilla {

struct RopeScaling {
  std::string type = "yarn";
  double factor = 16.0;
  int64_t original_max_position_embeddings = 65536;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
};

struct QuantizationConfig {
  bool present = false;            // absent in all-BF16 checkpoints (the 1B mini)
  std::string quant_method = "fp8";
  std::string fmt = "e4m3";
  std::string activation_scheme = "dynamic";
  std::string scale_fmt = "ue8m0";
  std::vector<int64_t> weight_block_size = {128, 128};
};

struct ModelConfig {
  std::vector<std::string> architectures = {"DeepseekV4ForCausalLM"};
  std::string model_type = "deepseek_v4";
  int64_t vocab_size = 129280;
  int64_t hidden_size = 4096;
  int64_t num_hidden_layers = 43;
  int64_t num_attention_heads = 64;
  int64_t num_key_value_heads = 1;
  int64_t head_dim = 512;
  int64_t qk_rope_head_dim = 64;
  int64_t q_lora_rank = 1024;
  int64_t o_lora_rank = 1024;
  int64_t o_groups = 8;
  int64_t sliding_window = 128;
  // One entry per main layer, optionally followed by one per MTP layer (missing MTP entries
  // mean ratio 0). 0 = sliding window only, 4 = CSA (overlapping, indexer), other = HCA.
  std::vector<int64_t> compress_ratios;
  double compress_rope_theta = 160000.0;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 1048576;
  int64_t index_n_heads = 64;
  int64_t index_head_dim = 128;
  int64_t index_topk = 512;
  int64_t n_routed_experts = 256;
  int64_t n_shared_experts = 1;
  int64_t num_experts_per_tok = 6;
  int64_t moe_intermediate_size = 2048;
  int64_t num_hash_layers = 3;
  std::string scoring_func = "sqrtsoftplus";
  std::string topk_method = "noaux_tc";
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.5;
  double swiglu_limit = 10.0;
  std::string hidden_act = "silu";
  int64_t hc_mult = 4;
  int64_t hc_sinkhorn_iters = 20;
  double hc_eps = 1e-6;
  double rms_norm_eps = 1e-6;
  int64_t num_nextn_predict_layers = 1;
  QuantizationConfig quantization_config;
  std::string expert_dtype;  // "fp4", "fp8" or "" (absent: infer from the tensors)
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  double attention_dropout = 0.0;
  int64_t bos_token_id = 0;
  int64_t eos_token_id = 1;
  double initializer_range = 0.02;
  std::string torch_dtype = "bfloat16";
  bool use_cache = true;
  std::string transformers_version = "4.57.1";

  // Parses config.json text; unknown fields are ignored, missing required fields are errors
  // naming the field. `source` names the file in messages. Does not call Validate().
  // Required: the fields that fix tensor shapes or the layer schedule (dims, head and expert
  // counts, compress_ratios, num_hash_layers, hc_mult); the others default to the Flash values
  // above, as transformers' config class does. Every problem found is reported, one per line.
  static absl::StatusOr<ModelConfig> FromJson(const std::string& text, const std::string& source);
  static absl::StatusOr<ModelConfig> FromFile(const std::string& path);
  std::string ToJson() const;  // HF config.json, 2-space indented

  // Rejects inconsistent configs with a message naming the field and what was expected:
  // compress_ratios length (num_hidden_layers or + num_nextn_predict_layers), ratios >= 0 and
  // (0, 4 or >= 2), head counts (one KV head, o_groups divides heads), rope dims <= head_dim and
  // even, index dims, experts-per-token <= experts, hash layers <= layers, hc_mult >= 1,
  // scoring_func sqrtsoftplus, FP8 block 128x128 with dims divisible by 128 when quantised.
  absl::Status Validate() const;

  // ---- derived ----
  int64_t RatioOf(int64_t layer_id) const;  // layer_id in [0, num_hidden_layers + nextn)
  bool IsHashLayer(int64_t layer_id) const { return layer_id < num_hash_layers; }
  int64_t NopeDim() const { return head_dim - qk_rope_head_dim; }
  int64_t HeadsPerGroup() const { return num_attention_heads / o_groups; }
  bool Quantized() const { return quantization_config.present; }
};

}  // namespace flotilla
