// ModelConfig: the shipped configs, JSON parsing errors, ToJson, and every Validate() rule.
#include "common/model_config.h"

#include <functional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/common/test_util.h"

namespace flotilla {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string ConfigPath(const std::string& model) {
  return std::string(FLOTILLA_CONFIGS_DIR) + "/" + model + "/config.json";
}

ModelConfig LoadShipped(const std::string& model) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromFile(ConfigPath(model));
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : ModelConfig();
}

// Flash, built in code from spec §1.1 (the struct defaults plus what they leave out).
ModelConfig FlashFromSpec() {
  ModelConfig c;
  c.compress_ratios = {0, 0};
  for (int i = 0; i < 20; ++i) {
    c.compress_ratios.push_back(4);
    c.compress_ratios.push_back(128);
  }
  c.compress_ratios.push_back(4);
  c.compress_ratios.push_back(0);
  c.quantization_config.present = true;
  c.expert_dtype = "fp4";
  return c;
}

TEST(ShippedConfigs, FlashMatchesSpec) {
  const ModelConfig c = LoadShipped("DeepSeek-V4-Flash");
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
  EXPECT_EQ(c.ToJson(), FlashFromSpec().ToJson());
  EXPECT_EQ(c.architectures, std::vector<std::string>{"DeepseekV4ForCausalLM"});
  EXPECT_EQ(c.vocab_size, 129280);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.num_hidden_layers, 43);
  EXPECT_EQ(c.num_attention_heads, 64);
  EXPECT_EQ(c.head_dim, 512);
  EXPECT_EQ(c.NopeDim(), 448);
  EXPECT_EQ(c.HeadsPerGroup(), 8);
  ASSERT_EQ(c.compress_ratios.size(), 44u);
  EXPECT_EQ(c.RatioOf(0), 0);
  EXPECT_EQ(c.RatioOf(1), 0);
  EXPECT_EQ(c.RatioOf(2), 4);
  EXPECT_EQ(c.RatioOf(3), 128);
  EXPECT_EQ(c.RatioOf(41), 128);
  EXPECT_EQ(c.RatioOf(42), 4);
  EXPECT_EQ(c.RatioOf(43), 0);  // MTP
  EXPECT_TRUE(c.IsHashLayer(2));
  EXPECT_FALSE(c.IsHashLayer(3));
  EXPECT_EQ(c.rope_scaling.factor, 16.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 65536);
  EXPECT_EQ(c.compress_rope_theta, 160000.0);
  EXPECT_EQ(c.hc_eps, 1e-6);
  EXPECT_TRUE(c.Quantized());
  EXPECT_EQ(c.quantization_config.scale_fmt, "ue8m0");
  EXPECT_EQ(c.quantization_config.weight_block_size, (std::vector<int64_t>{128, 128}));
  EXPECT_EQ(c.expert_dtype, "fp4");
  EXPECT_EQ(c.n_routed_experts, 256);
  EXPECT_EQ(c.num_experts_per_tok, 6);
  EXPECT_EQ(c.routed_scaling_factor, 1.5);
}

TEST(ShippedConfigs, ProMatchesSpec) {
  const ModelConfig c = LoadShipped("DeepSeek-V4-Pro");
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.num_hidden_layers, 61);
  EXPECT_EQ(c.num_attention_heads, 128);
  EXPECT_EQ(c.head_dim, 512);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.o_groups, 16);
  EXPECT_EQ(c.o_lora_rank, 1024);
  EXPECT_EQ(c.n_routed_experts, 384);
  EXPECT_EQ(c.num_experts_per_tok, 6);
  EXPECT_EQ(c.moe_intermediate_size, 3072);
  EXPECT_EQ(c.routed_scaling_factor, 2.5);
  EXPECT_EQ(c.index_topk, 1024);
  ASSERT_EQ(c.compress_ratios.size(), 62u);
  EXPECT_EQ(c.RatioOf(0), 128);
  EXPECT_EQ(c.RatioOf(1), 128);
  EXPECT_EQ(c.RatioOf(2), 4);
  EXPECT_EQ(c.RatioOf(59), 128);
  EXPECT_EQ(c.RatioOf(60), 4);
  EXPECT_EQ(c.RatioOf(61), 0);
  // All other fields as Flash.
  EXPECT_EQ(c.vocab_size, 129280);
  EXPECT_EQ(c.index_n_heads, 64);
  EXPECT_EQ(c.num_hash_layers, 3);
  EXPECT_EQ(c.sliding_window, 128);
  EXPECT_EQ(c.expert_dtype, "fp4");
  EXPECT_TRUE(c.Quantized());
}

TEST(ShippedConfigs, Mini1BMatchesSpec) {
  const ModelConfig c = LoadShipped("deepseek-v4-mini-1B");
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
  EXPECT_EQ(c.hidden_size, 1024);
  EXPECT_EQ(c.num_hidden_layers, 24);
  EXPECT_EQ(c.num_attention_heads, 16);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.qk_rope_head_dim, 32);
  EXPECT_EQ(c.q_lora_rank, 384);
  EXPECT_EQ(c.o_lora_rank, 384);
  EXPECT_EQ(c.o_groups, 4);
  EXPECT_EQ(c.n_routed_experts, 16);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.moe_intermediate_size, 512);
  EXPECT_EQ(c.index_n_heads, 8);
  EXPECT_EQ(c.index_head_dim, 64);
  EXPECT_EQ(c.index_topk, 128);
  EXPECT_EQ(c.num_hash_layers, 2);
  EXPECT_EQ(c.sliding_window, 64);
  ASSERT_EQ(c.compress_ratios.size(), 24u);
  EXPECT_EQ(c.RatioOf(3), 96);
  EXPECT_EQ(c.RatioOf(22), 4);
  EXPECT_EQ(c.RatioOf(23), 0);
  EXPECT_EQ(c.RatioOf(24), 0);  // MTP layer: no entry, ratio 0
  EXPECT_FALSE(c.Quantized());
  EXPECT_EQ(c.expert_dtype, "");
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
}

TEST(ShippedConfigs, AreInCanonicalToJsonForm) {
  for (const char* model : {"DeepSeek-V4-Flash", "DeepSeek-V4-Pro", "deepseek-v4-mini-1B"}) {
    const ModelConfig c = LoadShipped(model);
    EXPECT_EQ(c.ToJson(), testing::ReadBytes(ConfigPath(model))) << model;
  }
}

TEST(ModelConfigJson, RoundTripsAndOmitsAbsentSections) {
  ModelConfig c = FlashFromSpec();
  c.hc_eps = 1.2345678901234567e-7;
  c.swiglu_limit = 7.25;
  const std::string text = c.ToJson();
  EXPECT_THAT(text, HasSubstr("\n  \"hidden_size\": 4096,\n"));
  EXPECT_THAT(text, HasSubstr("\"quantization_config\": {\n    \"activation_scheme\""));
  absl::StatusOr<ModelConfig> back = ModelConfig::FromJson(text, "mem");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ToJson(), text);
  EXPECT_EQ(back->hc_eps, c.hc_eps);

  ModelConfig bf16 = c;
  bf16.quantization_config.present = false;
  bf16.expert_dtype = "";
  const std::string plain = bf16.ToJson();
  EXPECT_THAT(plain, Not(HasSubstr("quantization_config")));
  EXPECT_THAT(plain, Not(HasSubstr("expert_dtype")));
  absl::StatusOr<ModelConfig> plain_back = ModelConfig::FromJson(plain, "mem");
  ASSERT_TRUE(plain_back.ok()) << plain_back.status();
  EXPECT_FALSE(plain_back->Quantized());
  EXPECT_EQ(plain_back->expert_dtype, "");
}

// Flash config as a JSON object, to mutate in tests.
nlohmann::json FlashJson() { return nlohmann::json::parse(FlashFromSpec().ToJson()); }

absl::Status ParseStatus(const nlohmann::json& j) {
  return ModelConfig::FromJson(j.dump(), "cfg/config.json").status();
}

TEST(ModelConfigJson, MissingRequiredFieldsAreNamed) {
  for (const char* field : {"vocab_size",
                            "hidden_size",
                            "num_hidden_layers",
                            "num_attention_heads",
                            "num_key_value_heads",
                            "head_dim",
                            "qk_rope_head_dim",
                            "q_lora_rank",
                            "o_lora_rank",
                            "o_groups",
                            "sliding_window",
                            "compress_ratios",
                            "index_n_heads",
                            "index_head_dim",
                            "index_topk",
                            "n_routed_experts",
                            "n_shared_experts",
                            "num_experts_per_tok",
                            "moe_intermediate_size",
                            "num_hash_layers",
                            "hc_mult"}) {
    nlohmann::json j = FlashJson();
    j.erase(field);
    absl::Status st = ParseStatus(j);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_THAT(std::string(st.message()), HasSubstr(std::string("\"") + field + "\" is missing"))
        << field;
    EXPECT_THAT(std::string(st.message()), HasSubstr("cfg/config.json")) << field;
  }
  // Every problem is reported at once.
  absl::Status all =
      ModelConfig::FromJson(R"({"vocab_size": 1, "hidden_size": "x"})", "c").status();
  EXPECT_THAT(std::string(all.message()),
              HasSubstr("\"hidden_size\" is \"x\" (string); expected an integer"));
  EXPECT_THAT(std::string(all.message()), HasSubstr("\"num_hidden_layers\" is missing"));
  EXPECT_THAT(std::string(all.message()), HasSubstr("\"hc_mult\" is missing"));

  nlohmann::json j = FlashJson();
  j["rope_scaling"].erase("factor");
  EXPECT_THAT(std::string(ParseStatus(j).message()), HasSubstr("rope_scaling.factor"));
  j = FlashJson();
  j["quantization_config"].erase("quant_method");
  EXPECT_THAT(std::string(ParseStatus(j).message()), HasSubstr("quantization_config.quant_method"));
}

TEST(ModelConfigJson, OptionalFieldsTakeFlashDefaults) {
  nlohmann::json j = FlashJson();
  for (const char* field : {"architectures", "model_type", "rope_theta", "compress_rope_theta",
                            "rope_scaling", "swiglu_limit", "scoring_func", "hc_eps",
                            "num_nextn_predict_layers", "transformers_version", "use_cache"}) {
    j.erase(field);
  }
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(j.dump(), "cfg");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->ToJson(), FlashFromSpec().ToJson());

  // "rope_type" (newer transformers) is read like "type"; nulls mean absent for the optional
  // sections; unknown fields are ignored.
  j = FlashJson();
  j["rope_scaling"].erase("type");
  j["rope_scaling"]["rope_type"] = "yarn";
  j["quantization_config"] = nullptr;
  j["expert_dtype"] = nullptr;
  j["some_future_field"] = {1, 2, 3};
  c = ModelConfig::FromJson(j.dump(), "cfg");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, "yarn");
  EXPECT_FALSE(c->Quantized());
  EXPECT_EQ(c->expert_dtype, "");
}

TEST(ModelConfigJson, WrongTypesAreNamed) {
  struct Case {
    std::function<void(nlohmann::json&)> mutate;
    std::string must_mention;
  };
  const std::vector<Case> cases = {
      {[](nlohmann::json& j) { j["hidden_size"] = "4096"; }, "\"hidden_size\""},
      {[](nlohmann::json& j) { j["hidden_size"] = 4096.5; }, "\"hidden_size\""},
      {[](nlohmann::json& j) { j["num_hidden_layers"] = nullptr; }, "\"num_hidden_layers\""},
      {[](nlohmann::json& j) { j["vocab_size"] = 18446744073709551615ull; }, "\"vocab_size\""},
      {[](nlohmann::json& j) { j["compress_ratios"] = 4; }, "\"compress_ratios\""},
      {[](nlohmann::json& j) { j["compress_ratios"][3] = 1.5; }, "\"compress_ratios[3]\""},
      {[](nlohmann::json& j) { j["rope_theta"] = "10000"; }, "\"rope_theta\""},
      {[](nlohmann::json& j) { j["rope_scaling"] = "yarn"; }, "\"rope_scaling\""},
      {[](nlohmann::json& j) { j["rope_scaling"]["factor"] = "16"; }, "\"rope_scaling.factor\""},
      {[](nlohmann::json& j) { j["norm_topk_prob"] = 1; }, "\"norm_topk_prob\""},
      {[](nlohmann::json& j) { j["scoring_func"] = 3; }, "\"scoring_func\""},
      {[](nlohmann::json& j) { j["architectures"] = "DeepseekV4ForCausalLM"; },
       "\"architectures\""},
      {[](nlohmann::json& j) { j["quantization_config"] = "fp8"; }, "\"quantization_config\""},
      {[](nlohmann::json& j) { j["quantization_config"]["weight_block_size"] = "128"; },
       "\"quantization_config.weight_block_size\""},
      {[](nlohmann::json& j) { j["expert_dtype"] = 4; }, "\"expert_dtype\""},
      {[](nlohmann::json& j) {
         j["eos_token_id"] = {1, 2};
       },
       "\"eos_token_id\""},
  };
  for (const Case& c : cases) {
    nlohmann::json j = FlashJson();
    c.mutate(j);
    absl::Status st = ParseStatus(j);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.must_mention;
    EXPECT_THAT(std::string(st.message()), HasSubstr(c.must_mention));
    EXPECT_THAT(std::string(st.message()), HasSubstr("cfg/config.json"));
  }
}

TEST(ModelConfigJson, MalformedTextAndFiles) {
  absl::Status st = ModelConfig::FromJson("{\"hidden_size\": ", "x.json").status();
  EXPECT_THAT(std::string(st.message()), HasSubstr("x.json"));
  EXPECT_THAT(std::string(st.message()), HasSubstr("not valid JSON"));
  st = ModelConfig::FromJson("[1]", "x.json").status();
  EXPECT_THAT(std::string(st.message()), HasSubstr("expected an object"));
  st = ModelConfig::FromJson("", "x.json").status();
  EXPECT_FALSE(st.ok());
  const std::string text = FlashFromSpec().ToJson();
  st = ModelConfig::FromJson("{\"hidden_size\": 1, " + text.substr(1), "x.json").status();
  EXPECT_THAT(std::string(st.message()), HasSubstr("\"hidden_size\" appears twice"));
  st = ModelConfig::FromJson(R"({"rope_scaling": {"factor": 4, "factor": 16}})", "x.json").status();
  EXPECT_THAT(std::string(st.message()), HasSubstr("\"rope_scaling.factor\" appears twice"));
  st = ModelConfig::FromFile("/nonexistent/config.json").status();
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(st.message()), HasSubstr("/nonexistent/config.json"));
}

TEST(ModelConfigValidate, CompressRatiosLengthMessage) {
  ModelConfig c = FlashFromSpec();
  c.compress_ratios.resize(42);
  EXPECT_THAT(std::string(c.Validate().message()),
              HasSubstr("config.json: compress_ratios has 42 entries; expected num_hidden_layers "
                        "(43) or num_hidden_layers + num_nextn_predict_layers (44)"));
  c.compress_ratios.resize(43);  // main layers only: fine
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
}

TEST(ModelConfigValidate, EachRuleNamesItsField) {
  struct Case {
    std::function<void(ModelConfig&)> mutate;
    std::vector<std::string> must_mention;
  };
  const std::vector<Case> cases = {
      {[](ModelConfig& c) { c.model_type = "deepseek_v3"; }, {"model_type", "deepseek_v4"}},
      {[](ModelConfig& c) { c.vocab_size = 0; }, {"vocab_size is 0"}},
      {[](ModelConfig& c) { c.max_position_embeddings = int64_t(1) << 33; },
       {"max_position_embeddings is 8589934592", "at most 2^24"}},
      {[](ModelConfig& c) { c.hidden_size = -4096; }, {"hidden_size is -4096", "> 0"}},
      {[](ModelConfig& c) { c.num_hidden_layers = 0; }, {"num_hidden_layers is 0"}},
      {[](ModelConfig& c) { c.head_dim = 0; }, {"head_dim is 0"}},
      {[](ModelConfig& c) { c.q_lora_rank = 0; }, {"q_lora_rank is 0"}},
      {[](ModelConfig& c) { c.o_lora_rank = -1; }, {"o_lora_rank is -1"}},
      {[](ModelConfig& c) { c.index_n_heads = 0; }, {"index_n_heads is 0"}},
      {[](ModelConfig& c) { c.index_topk = 0; }, {"index_topk is 0"}},
      {[](ModelConfig& c) { c.n_routed_experts = 0; }, {"n_routed_experts is 0"}},
      {[](ModelConfig& c) { c.n_shared_experts = -1; }, {"n_shared_experts is -1"}},
      {[](ModelConfig& c) { c.moe_intermediate_size = 0; }, {"moe_intermediate_size is 0"}},
      {[](ModelConfig& c) { c.max_position_embeddings = 0; }, {"max_position_embeddings"}},
      {[](ModelConfig& c) { c.num_nextn_predict_layers = -1; }, {"num_nextn_predict_layers"}},
      {[](ModelConfig& c) { c.sliding_window = 0; }, {"sliding_window is 0"}},
      {[](ModelConfig& c) { c.num_key_value_heads = 8; }, {"num_key_value_heads is 8", "1"}},
      {[](ModelConfig& c) { c.o_groups = 7; }, {"o_groups is 7", "num_attention_heads (64)"}},
      {[](ModelConfig& c) { c.qk_rope_head_dim = 63; }, {"qk_rope_head_dim is 63", "even"}},
      {[](ModelConfig& c) { c.qk_rope_head_dim = 1024; },
       {"qk_rope_head_dim is 1024", "head_dim (512)"}},
      {[](ModelConfig& c) { c.qk_rope_head_dim = 256; }, {"index_head_dim (128)"}},
      {[](ModelConfig& c) { c.index_head_dim = 96; }, {"index_head_dim is 96", "power of two"}},
      {[](ModelConfig& c) { c.num_experts_per_tok = 300; },
       {"num_experts_per_tok is 300", "n_routed_experts (256)"}},
      {[](ModelConfig& c) { c.num_hash_layers = 44; },
       {"num_hash_layers is 44", "num_hidden_layers (43)"}},
      {[](ModelConfig& c) { c.compress_ratios.push_back(0); }, {"compress_ratios has 45 entries"}},
      {[](ModelConfig& c) { c.compress_ratios[5] = -4; }, {"compress_ratios[5] is -4"}},
      {[](ModelConfig& c) { c.compress_ratios[7] = 1; }, {"compress_ratios[7] is 1"}},
      {[](ModelConfig& c) { c.rope_scaling.type = "linear"; }, {"rope_scaling.type", "yarn"}},
      {[](ModelConfig& c) { c.rope_scaling.factor = 0.5; }, {"rope_scaling.factor is 0.5"}},
      {[](ModelConfig& c) { c.rope_scaling.original_max_position_embeddings = 0; },
       {"rope_scaling.original_max_position_embeddings"}},
      {[](ModelConfig& c) { c.rope_scaling.beta_slow = 64; }, {"rope_scaling.beta_fast"}},
      {[](ModelConfig& c) { c.rope_theta = 0; }, {"rope_theta is 0"}},
      {[](ModelConfig& c) { c.compress_rope_theta = -1; }, {"compress_rope_theta"}},
      {[](ModelConfig& c) { c.rms_norm_eps = 0; }, {"rms_norm_eps"}},
      {[](ModelConfig& c) { c.hc_eps = -1e-6; }, {"hc_eps"}},
      {[](ModelConfig& c) { c.routed_scaling_factor = 0; }, {"routed_scaling_factor"}},
      {[](ModelConfig& c) { c.swiglu_limit = 0; }, {"swiglu_limit"}},
      {[](ModelConfig& c) { c.hc_mult = 0; }, {"hc_mult is 0", ">= 1"}},
      {[](ModelConfig& c) { c.hc_sinkhorn_iters = 0; }, {"hc_sinkhorn_iters is 0", ">= 1"}},
      {[](ModelConfig& c) { c.scoring_func = "softmax"; },
       {"scoring_func", "softmax", "unsupported", "sqrtsoftplus"}},
      {[](ModelConfig& c) { c.topk_method = "greedy"; }, {"topk_method", "unsupported"}},
      {[](ModelConfig& c) { c.hidden_act = "gelu"; }, {"hidden_act", "unsupported"}},
      {[](ModelConfig& c) { c.attention_bias = true; }, {"attention_bias"}},
      {[](ModelConfig& c) { c.attention_dropout = 1.5; }, {"attention_dropout"}},
      {[](ModelConfig& c) { c.eos_token_id = 129280; }, {"eos_token_id is 129280"}},
      {[](ModelConfig& c) { c.bos_token_id = -1; }, {"bos_token_id is -1"}},
      {[](ModelConfig& c) { c.expert_dtype = "int4"; }, {"expert_dtype", "int4"}},
      {[](ModelConfig& c) { c.quantization_config.quant_method = "awq"; },
       {"quantization_config.quant_method", "unsupported"}},
      {[](ModelConfig& c) { c.quantization_config.fmt = "e5m2"; }, {"quantization_config.fmt"}},
      {[](ModelConfig& c) { c.quantization_config.scale_fmt = "fp32"; },
       {"quantization_config.scale_fmt"}},
      {[](ModelConfig& c) {
         c.quantization_config.weight_block_size = {64, 64};
       },
       {"quantization_config.weight_block_size is [64, 64]", "[128, 128]"}},
      {[](ModelConfig& c) { c.hidden_size = 4000; }, {"hidden_size is 4000", "multiple of 128"}},
      {[](ModelConfig& c) { c.q_lora_rank = 1000; }, {"q_lora_rank is 1000", "multiple of 128"}},
      {[](ModelConfig& c) {
         c.head_dim = 99;
         c.qk_rope_head_dim = 64;
       },
       {"num_attention_heads * head_dim (64 * 99)", "multiple of 128"}},
      {[](ModelConfig& c) { c.o_lora_rank = 1000; },
       {"o_groups * o_lora_rank (8 * 1000)", "multiple of 128"}},
      {[](ModelConfig& c) { c.moe_intermediate_size = 2000; },
       {"moe_intermediate_size is 2000", "multiple of 128"}},
      {[](ModelConfig& c) { c.quantization_config.present = false; },
       {"expert_dtype", "quantization_config"}},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    ModelConfig c = FlashFromSpec();
    cases[i].mutate(c);
    absl::Status st = c.Validate();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << "case " << i;
    EXPECT_THAT(std::string(st.message()), HasSubstr("config.json: ")) << "case " << i;
    for (const std::string& s : cases[i].must_mention) {
      EXPECT_THAT(std::string(st.message()), HasSubstr(s)) << "case " << i;
    }
  }
}

TEST(ModelConfigValidate, UnquantisedSkipsBlockRulesAndReportsAllProblems) {
  ModelConfig c = LoadShipped("deepseek-v4-mini-1B");
  c.hidden_size = 1000;  // not a multiple of 128: fine without FP8 blocks
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
  c.hc_mult = 0;
  c.sliding_window = 0;
  const std::string msg(c.Validate().message());
  EXPECT_THAT(msg, HasSubstr("hc_mult"));
  EXPECT_THAT(msg, HasSubstr("sliding_window"));
}

TEST(ModelConfigValidate, OverflowingProductsAreReportedNotUndefined) {
  ModelConfig c = FlashFromSpec();
  c.num_attention_heads = int64_t(1) << 40;
  c.head_dim = int64_t(1) << 40;
  c.qk_rope_head_dim = 64;
  EXPECT_THAT(std::string(c.Validate().message()), HasSubstr("overflows"));
}

TEST(ModelConfigDeathTest, RatioOfOutOfRangeIsAProgrammerError) {
  const ModelConfig c = FlashFromSpec();
  EXPECT_DEATH(c.RatioOf(44), "check failed");
  EXPECT_DEATH(c.RatioOf(-1), "check failed");
}

}  // namespace
}  // namespace flotilla
