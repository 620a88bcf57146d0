#include "common/model_config.h"

#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/json_util.h"
#include "nlohmann/json.hpp"

namespace flotilla {
namespace {

using Json = nlohmann::json;

// Reads typed fields of one JSON object; collects every error, each naming source and field.
class FieldReader {
 public:
  FieldReader(const Json& obj, std::string source, std::string prefix)
      : obj_(obj), source_(std::move(source)), prefix_(std::move(prefix)) {}

  // Required fields: missing is an error. Optional fields: missing keeps *out unchanged.
  // JSON null counts as a type error for both.
  void Int(const char* key, int64_t* out, bool required) {
    const Json* v = Find(key, required);
    if (v == nullptr) return;
    if (v->is_number_integer() &&
        (!v->is_number_unsigned() || v->get<uint64_t>() <= uint64_t(INT64_MAX))) {
      *out = v->get<int64_t>();
    } else {
      TypeError(key, *v, "an integer");
    }
  }
  void Double(const char* key, double* out, bool required) {
    const Json* v = Find(key, required);
    if (v == nullptr) return;
    if (v->is_number()) {
      *out = v->get<double>();
    } else {
      TypeError(key, *v, "a number");
    }
  }
  void Bool(const char* key, bool* out, bool required) {
    const Json* v = Find(key, required);
    if (v == nullptr) return;
    if (v->is_boolean()) {
      *out = v->get<bool>();
    } else {
      TypeError(key, *v, "true or false");
    }
  }
  void String(const char* key, std::string* out, bool required) {
    const Json* v = Find(key, required);
    if (v == nullptr) return;
    if (v->is_string()) {
      *out = v->get<std::string>();
    } else {
      TypeError(key, *v, "a string");
    }
  }
  void IntList(const char* key, std::vector<int64_t>* out, bool required) {
    const Json* v = Find(key, required);
    if (v == nullptr) return;
    if (!v->is_array()) return TypeError(key, *v, "an array of integers");
    std::vector<int64_t> values;
    for (size_t i = 0; i < v->size(); ++i) {
      const Json& e = (*v)[i];
      if (!e.is_number_integer() ||
          (e.is_number_unsigned() && e.get<uint64_t>() > uint64_t(INT64_MAX))) {
        return TypeError(absl::StrCat(key, "[", i, "]"), e, "an integer");
      }
      values.push_back(e.get<int64_t>());
    }
    *out = std::move(values);
  }
  void StringList(const char* key, std::vector<std::string>* out, bool required) {
    const Json* v = Find(key, required);
    if (v == nullptr) return;
    if (!v->is_array()) return TypeError(key, *v, "an array of strings");
    std::vector<std::string> values;
    for (size_t i = 0; i < v->size(); ++i) {
      if (!(*v)[i].is_string()) {
        return TypeError(absl::StrCat(key, "[", i, "]"), (*v)[i], "a string");
      }
      values.push_back((*v)[i].get<std::string>());
    }
    *out = std::move(values);
  }
  // An object-valued field; nullptr (and maybe an error) when absent or not an object.
  const Json* Object(const char* key, bool required) {
    const Json* v = Find(key, required);
    if (v == nullptr) return nullptr;
    if (!v->is_object()) {
      TypeError(key, *v, "an object");
      return nullptr;
    }
    return v;
  }
  bool Has(const char* key) const { return obj_.contains(key); }
  void Fail(const absl::Status& st) {
    if (!st.ok()) errors_.emplace_back(st.message());
  }
  // Every problem found, one per line.
  absl::Status status() const {
    if (errors_.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrJoin(errors_, "\n"));
  }

 private:
  const Json* Find(const char* key, bool required) {
    auto it = obj_.find(key);
    if (it == obj_.end()) {
      if (required) {
        Fail(absl::InvalidArgumentError(
            absl::StrCat(source_, ": required field \"", prefix_, key, "\" is missing")));
      }
      return nullptr;
    }
    return &*it;
  }
  void TypeError(const std::string& key, const Json& v, const char* expected) {
    Fail(absl::InvalidArgumentError(absl::StrCat(source_, ": field \"", prefix_, key, "\" is ",
                                                 JsonSnippet(v), " (", v.type_name(),
                                                 "); expected ", expected)));
  }

  const Json& obj_;
  std::string source_;
  std::string prefix_;
  std::vector<std::string> errors_;
};

constexpr bool kRequired = true;
constexpr bool kOptional = false;

void ReadRopeScaling(const Json& obj, const std::string& source, RopeScaling* rope,
                     FieldReader* parent) {
  FieldReader r(obj, source, "rope_scaling.");
  // transformers writes "rope_type" in newer versions and "type" in older ones.
  if (r.Has("type") || !r.Has("rope_type")) {
    r.String("type", &rope->type, kRequired);
  } else {
    r.String("rope_type", &rope->type, kRequired);
  }
  r.Double("factor", &rope->factor, kRequired);
  r.Int("original_max_position_embeddings", &rope->original_max_position_embeddings, kRequired);
  r.Double("beta_fast", &rope->beta_fast, kOptional);
  r.Double("beta_slow", &rope->beta_slow, kOptional);
  parent->Fail(r.status());
}

void ReadQuantization(const Json& obj, const std::string& source, QuantizationConfig* q,
                      FieldReader* parent) {
  FieldReader r(obj, source, "quantization_config.");
  q->present = true;
  r.String("quant_method", &q->quant_method, kRequired);
  r.String("fmt", &q->fmt, kOptional);
  r.String("activation_scheme", &q->activation_scheme, kOptional);
  r.String("scale_fmt", &q->scale_fmt, kOptional);
  r.IntList("weight_block_size", &q->weight_block_size, kRequired);
  parent->Fail(r.status());
}

// Validate() helpers: each appends "field ...; expected ..." to the problem list.
class Problems {
 public:
  void Add(std::string text) { list_.push_back(std::move(text)); }
  void Positive(const char* field, int64_t v) {
    if (v <= 0) Add(absl::StrCat(field, " is ", v, "; expected > 0"));
  }
  void NonNegative(const char* field, int64_t v) {
    if (v < 0) Add(absl::StrCat(field, " is ", v, "; expected >= 0"));
  }
  void PositiveFinite(const char* field, double v) {
    if (!(v > 0) || !std::isfinite(v)) Add(absl::StrCat(field, " is ", v, "; expected > 0"));
  }
  void Equals(const char* field, const std::string& v, const char* expected) {
    if (v != expected) {
      Add(absl::StrCat(field, " is \"", v, "\"; unsupported, expected \"", expected, "\""));
    }
  }
  void MultipleOf128(const std::string& what, int64_t v) {
    if (v % 128 != 0) {
      Add(absl::StrCat(what, " is ", v, "; expected a multiple of 128 (FP8 128x128 blocks)"));
    }
  }
  void MultipleOf128Product(const char* what, int64_t a, int64_t b) {
    int64_t v = 0;
    if (__builtin_mul_overflow(a, b, &v)) {
      Add(absl::StrCat(what, " (", a, " * ", b, ") overflows 64 bits"));
    } else {
      MultipleOf128(absl::StrCat(what, " (", a, " * ", b, ")"), v);
    }
  }
  absl::Status ToStatus() const {
    if (list_.empty()) return absl::OkStatus();
    std::vector<std::string> lines;
    for (const std::string& p : list_) lines.push_back(absl::StrCat("config.json: ", p));
    return absl::InvalidArgumentError(absl::StrJoin(lines, "\n"));
  }

 private:
  std::vector<std::string> list_;
};

bool IsPowerOfTwo(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

}  // namespace

absl::StatusOr<ModelConfig> ModelConfig::FromJson(const std::string& text,
                                                  const std::string& source) {
  std::string duplicate;
  ASSIGN_OR_RETURN(Json root, ParseJsonWithDuplicateCheck(text.data(), text.data() + text.size(),
                                                          source, &duplicate));
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": top level is a ", root.type_name(), "; expected an object"));
  }
  if (!duplicate.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": field \"", duplicate, "\" appears twice"));
  }

  // Fields that fix tensor shapes or the layer schedule are required; the others default to the
  // DeepSeek-V4-Flash values, as transformers' config class does.
  ModelConfig c;
  FieldReader r(root, source, "");
  r.StringList("architectures", &c.architectures, kOptional);
  r.String("model_type", &c.model_type, kOptional);
  r.Int("vocab_size", &c.vocab_size, kRequired);
  r.Int("hidden_size", &c.hidden_size, kRequired);
  r.Int("num_hidden_layers", &c.num_hidden_layers, kRequired);
  r.Int("num_attention_heads", &c.num_attention_heads, kRequired);
  r.Int("num_key_value_heads", &c.num_key_value_heads, kRequired);
  r.Int("head_dim", &c.head_dim, kRequired);
  r.Int("qk_rope_head_dim", &c.qk_rope_head_dim, kRequired);
  r.Int("q_lora_rank", &c.q_lora_rank, kRequired);
  r.Int("o_lora_rank", &c.o_lora_rank, kRequired);
  r.Int("o_groups", &c.o_groups, kRequired);
  r.Int("sliding_window", &c.sliding_window, kRequired);
  r.IntList("compress_ratios", &c.compress_ratios, kRequired);
  r.Double("compress_rope_theta", &c.compress_rope_theta, kOptional);
  r.Double("rope_theta", &c.rope_theta, kOptional);
  if (const Json* rope = r.Object("rope_scaling", kOptional)) {
    ReadRopeScaling(*rope, source, &c.rope_scaling, &r);
  }
  r.Int("max_position_embeddings", &c.max_position_embeddings, kOptional);
  r.Int("index_n_heads", &c.index_n_heads, kRequired);
  r.Int("index_head_dim", &c.index_head_dim, kRequired);
  r.Int("index_topk", &c.index_topk, kRequired);
  r.Int("n_routed_experts", &c.n_routed_experts, kRequired);
  r.Int("n_shared_experts", &c.n_shared_experts, kRequired);
  r.Int("num_experts_per_tok", &c.num_experts_per_tok, kRequired);
  r.Int("moe_intermediate_size", &c.moe_intermediate_size, kRequired);
  r.Int("num_hash_layers", &c.num_hash_layers, kRequired);
  r.String("scoring_func", &c.scoring_func, kOptional);
  r.String("topk_method", &c.topk_method, kOptional);
  r.Bool("norm_topk_prob", &c.norm_topk_prob, kOptional);
  r.Double("routed_scaling_factor", &c.routed_scaling_factor, kOptional);
  r.Double("swiglu_limit", &c.swiglu_limit, kOptional);
  r.String("hidden_act", &c.hidden_act, kOptional);
  r.Int("hc_mult", &c.hc_mult, kRequired);
  r.Int("hc_sinkhorn_iters", &c.hc_sinkhorn_iters, kOptional);
  r.Double("hc_eps", &c.hc_eps, kOptional);
  r.Double("rms_norm_eps", &c.rms_norm_eps, kOptional);
  r.Int("num_nextn_predict_layers", &c.num_nextn_predict_layers, kOptional);
  // quantization_config / expert_dtype: absent or null means an all-BF16 checkpoint / unknown.
  if (root.contains("quantization_config") && !root["quantization_config"].is_null()) {
    if (const Json* q = r.Object("quantization_config", kOptional)) {
      ReadQuantization(*q, source, &c.quantization_config, &r);
    }
  }
  if (root.contains("expert_dtype") && !root["expert_dtype"].is_null()) {
    r.String("expert_dtype", &c.expert_dtype, kOptional);
  }
  r.Bool("tie_word_embeddings", &c.tie_word_embeddings, kOptional);
  r.Bool("attention_bias", &c.attention_bias, kOptional);
  r.Double("attention_dropout", &c.attention_dropout, kOptional);
  r.Int("bos_token_id", &c.bos_token_id, kOptional);
  r.Int("eos_token_id", &c.eos_token_id, kOptional);
  r.Double("initializer_range", &c.initializer_range, kOptional);
  r.String("torch_dtype", &c.torch_dtype, kOptional);
  r.Bool("use_cache", &c.use_cache, kOptional);
  r.String("transformers_version", &c.transformers_version, kOptional);
  RETURN_IF_ERROR(r.status());
  return c;
}

absl::StatusOr<ModelConfig> ModelConfig::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return FromJson(text, path);
}

std::string ModelConfig::ToJson() const {
  // nlohmann::json keeps keys sorted, as transformers' to_json_file (sort_keys=True) does.
  Json j = Json::object();
  j["architectures"] = architectures;
  j["model_type"] = model_type;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["qk_rope_head_dim"] = qk_rope_head_dim;
  j["q_lora_rank"] = q_lora_rank;
  j["o_lora_rank"] = o_lora_rank;
  j["o_groups"] = o_groups;
  j["sliding_window"] = sliding_window;
  j["compress_ratios"] = compress_ratios;
  j["compress_rope_theta"] = compress_rope_theta;
  j["rope_theta"] = rope_theta;
  j["rope_scaling"] = {
      {"type", rope_scaling.type},
      {"factor", rope_scaling.factor},
      {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings},
      {"beta_fast", rope_scaling.beta_fast},
      {"beta_slow", rope_scaling.beta_slow}};
  j["max_position_embeddings"] = max_position_embeddings;
  j["index_n_heads"] = index_n_heads;
  j["index_head_dim"] = index_head_dim;
  j["index_topk"] = index_topk;
  j["n_routed_experts"] = n_routed_experts;
  j["n_shared_experts"] = n_shared_experts;
  j["num_experts_per_tok"] = num_experts_per_tok;
  j["moe_intermediate_size"] = moe_intermediate_size;
  j["num_hash_layers"] = num_hash_layers;
  j["scoring_func"] = scoring_func;
  j["topk_method"] = topk_method;
  j["norm_topk_prob"] = norm_topk_prob;
  j["routed_scaling_factor"] = routed_scaling_factor;
  j["swiglu_limit"] = swiglu_limit;
  j["hidden_act"] = hidden_act;
  j["hc_mult"] = hc_mult;
  j["hc_sinkhorn_iters"] = hc_sinkhorn_iters;
  j["hc_eps"] = hc_eps;
  j["rms_norm_eps"] = rms_norm_eps;
  j["num_nextn_predict_layers"] = num_nextn_predict_layers;
  if (quantization_config.present) {
    j["quantization_config"] = {{"quant_method", quantization_config.quant_method},
                                {"fmt", quantization_config.fmt},
                                {"activation_scheme", quantization_config.activation_scheme},
                                {"scale_fmt", quantization_config.scale_fmt},
                                {"weight_block_size", quantization_config.weight_block_size}};
  }
  if (!expert_dtype.empty()) j["expert_dtype"] = expert_dtype;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["attention_bias"] = attention_bias;
  j["attention_dropout"] = attention_dropout;
  j["bos_token_id"] = bos_token_id;
  j["eos_token_id"] = eos_token_id;
  j["initializer_range"] = initializer_range;
  j["torch_dtype"] = torch_dtype;
  j["use_cache"] = use_cache;
  j["transformers_version"] = transformers_version;
  return j.dump(2, ' ', false, Json::error_handler_t::replace) + "\n";
}

absl::Status ModelConfig::Validate() const {
  Problems p;
  p.Equals("model_type", model_type, "deepseek_v4");

  p.Positive("vocab_size", vocab_size);
  p.Positive("hidden_size", hidden_size);
  p.Positive("num_hidden_layers", num_hidden_layers);
  p.Positive("num_attention_heads", num_attention_heads);
  p.Positive("head_dim", head_dim);
  p.Positive("qk_rope_head_dim", qk_rope_head_dim);
  p.Positive("q_lora_rank", q_lora_rank);
  p.Positive("o_lora_rank", o_lora_rank);
  p.Positive("o_groups", o_groups);
  p.Positive("sliding_window", sliding_window);
  p.Positive("max_position_embeddings", max_position_embeddings);
  p.Positive("index_n_heads", index_n_heads);
  p.Positive("index_head_dim", index_head_dim);
  p.Positive("index_topk", index_topk);
  p.Positive("n_routed_experts", n_routed_experts);
  p.NonNegative("n_shared_experts", n_shared_experts);
  p.Positive("num_experts_per_tok", num_experts_per_tok);
  p.Positive("moe_intermediate_size", moe_intermediate_size);
  p.NonNegative("num_hash_layers", num_hash_layers);
  p.NonNegative("num_nextn_predict_layers", num_nextn_predict_layers);
  p.PositiveFinite("rope_theta", rope_theta);
  p.PositiveFinite("compress_rope_theta", compress_rope_theta);
  p.PositiveFinite("routed_scaling_factor", routed_scaling_factor);
  p.PositiveFinite("swiglu_limit", swiglu_limit);
  p.PositiveFinite("hc_eps", hc_eps);
  p.PositiveFinite("rms_norm_eps", rms_norm_eps);

  if (num_key_value_heads != 1) {
    p.Add(absl::StrCat("num_key_value_heads is ", num_key_value_heads,
                       "; expected 1 (a single shared KV head)"));
  }
  if (o_groups > 0 && num_attention_heads % o_groups != 0) {
    p.Add(absl::StrCat("o_groups is ", o_groups, "; expected a divisor of num_attention_heads (",
                       num_attention_heads, ")"));
  }
  if (qk_rope_head_dim % 2 != 0) {
    p.Add(absl::StrCat("qk_rope_head_dim is ", qk_rope_head_dim, "; expected an even number"));
  }
  if (qk_rope_head_dim > head_dim) {
    p.Add(absl::StrCat("qk_rope_head_dim is ", qk_rope_head_dim, "; expected <= head_dim (",
                       head_dim, ")"));
  }
  if (qk_rope_head_dim > index_head_dim) {
    p.Add(absl::StrCat("qk_rope_head_dim is ", qk_rope_head_dim, "; expected <= index_head_dim (",
                       index_head_dim, ")"));
  }
  if (index_head_dim > 0 && !IsPowerOfTwo(index_head_dim)) {
    p.Add(absl::StrCat("index_head_dim is ", index_head_dim,
                       "; expected a power of two (Hadamard rotation)"));
  }
  if (num_experts_per_tok > n_routed_experts) {
    p.Add(absl::StrCat("num_experts_per_tok is ", num_experts_per_tok,
                       "; expected <= n_routed_experts (", n_routed_experts, ")"));
  }
  // RoPE angles are computed from float32 positions, which are exact integers up to 2^24.
  if (max_position_embeddings > (int64_t(1) << 24)) {
    p.Add(absl::StrCat("max_position_embeddings is ", max_position_embeddings,
                       "; expected at most 2^24 = 16777216 (RoPE positions are float32, exact up "
                       "to 2^24)"));
  }
  if (num_hash_layers > num_hidden_layers) {
    p.Add(absl::StrCat("num_hash_layers is ", num_hash_layers, "; expected <= num_hidden_layers (",
                       num_hidden_layers, ")"));
  }

  const int64_t num_layers = num_hidden_layers;
  const int64_t with_mtp = num_hidden_layers + num_nextn_predict_layers;
  const int64_t num_ratios = int64_t(compress_ratios.size());
  if (num_ratios != num_layers && num_ratios != with_mtp) {
    p.Add(absl::StrCat(
        "compress_ratios has ", num_ratios, " entries; expected num_hidden_layers (", num_layers,
        ")",
        num_nextn_predict_layers > 0
            ? absl::StrCat(" or num_hidden_layers + num_nextn_predict_layers (", with_mtp, ")")
            : ""));
  }
  for (size_t i = 0; i < compress_ratios.size(); ++i) {
    const int64_t ratio = compress_ratios[i];
    if (ratio < 0 || ratio == 1) {
      p.Add(absl::StrCat("compress_ratios[", i, "] is ", ratio,
                         "; expected 0 (sliding window), 4 (CSA) or another ratio >= 2 (HCA)"));
    }
  }

  if (rope_scaling.type != "yarn") {
    p.Add(absl::StrCat("rope_scaling.type is \"", rope_scaling.type,
                       "\"; unsupported, expected \"yarn\""));
  }
  if (!(rope_scaling.factor >= 1) || !std::isfinite(rope_scaling.factor)) {
    p.Add(absl::StrCat("rope_scaling.factor is ", rope_scaling.factor, "; expected >= 1"));
  }
  p.Positive("rope_scaling.original_max_position_embeddings",
             rope_scaling.original_max_position_embeddings);
  p.PositiveFinite("rope_scaling.beta_fast", rope_scaling.beta_fast);
  p.PositiveFinite("rope_scaling.beta_slow", rope_scaling.beta_slow);
  if (rope_scaling.beta_fast < rope_scaling.beta_slow) {
    p.Add(absl::StrCat("rope_scaling.beta_fast is ", rope_scaling.beta_fast,
                       "; expected >= rope_scaling.beta_slow (", rope_scaling.beta_slow, ")"));
  }

  if (hc_mult < 1) p.Add(absl::StrCat("hc_mult is ", hc_mult, "; expected >= 1"));
  if (hc_sinkhorn_iters < 1) {
    p.Add(absl::StrCat("hc_sinkhorn_iters is ", hc_sinkhorn_iters, "; expected >= 1"));
  }
  p.Equals("scoring_func", scoring_func, "sqrtsoftplus");
  p.Equals("topk_method", topk_method, "noaux_tc");
  p.Equals("hidden_act", hidden_act, "silu");
  if (attention_bias) p.Add("attention_bias is true; unsupported, expected false");
  if (!(attention_dropout >= 0 && attention_dropout < 1)) {
    p.Add(absl::StrCat("attention_dropout is ", attention_dropout, "; expected in [0, 1)"));
  }
  if (bos_token_id < 0 || bos_token_id >= vocab_size) {
    p.Add(absl::StrCat("bos_token_id is ", bos_token_id, "; expected in [0, vocab_size (",
                       vocab_size, "))"));
  }
  if (eos_token_id < 0 || eos_token_id >= vocab_size) {
    p.Add(absl::StrCat("eos_token_id is ", eos_token_id, "; expected in [0, vocab_size (",
                       vocab_size, "))"));
  }

  if (expert_dtype != "" && expert_dtype != "fp4" && expert_dtype != "fp8") {
    p.Add(absl::StrCat("expert_dtype is \"", expert_dtype,
                       "\"; expected \"fp4\", \"fp8\" or absent"));
  }
  if (quantization_config.present) {
    const QuantizationConfig& q = quantization_config;
    p.Equals("quantization_config.quant_method", q.quant_method, "fp8");
    p.Equals("quantization_config.fmt", q.fmt, "e4m3");
    p.Equals("quantization_config.scale_fmt", q.scale_fmt, "ue8m0");
    p.Equals("quantization_config.activation_scheme", q.activation_scheme, "dynamic");
    if (q.weight_block_size != std::vector<int64_t>{128, 128}) {
      p.Add(absl::StrCat("quantization_config.weight_block_size is [",
                         absl::StrJoin(q.weight_block_size, ", "), "]; expected [128, 128]"));
    }
    p.MultipleOf128("hidden_size", hidden_size);
    p.MultipleOf128("q_lora_rank", q_lora_rank);
    p.MultipleOf128Product("num_attention_heads * head_dim", num_attention_heads, head_dim);
    p.MultipleOf128Product("o_groups * o_lora_rank", o_groups, o_lora_rank);
    p.MultipleOf128("moe_intermediate_size", moe_intermediate_size);
  } else if (!expert_dtype.empty()) {
    p.Add(absl::StrCat("expert_dtype is \"", expert_dtype,
                       "\" but quantization_config is absent; expected both or neither"));
  }
  return p.ToStatus();
}

int64_t ModelConfig::RatioOf(int64_t layer_id) const {
  FLOTILLA_CHECK(layer_id >= 0 && layer_id < num_hidden_layers + num_nextn_predict_layers);
  return layer_id < int64_t(compress_ratios.size()) ? compress_ratios[size_t(layer_id)] : 0;
}

}  // namespace flotilla
