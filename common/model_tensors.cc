#include "common/model_tensors.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace flotilla {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

class Inventory {
 public:
  Inventory(const ModelConfig& c, ExpertFormat experts) : c_(c), experts_(experts) {}

  void Add(std::string name, DType dtype, std::vector<int64_t> shape) {
    out_.push_back({std::move(name), dtype, std::move(shape)});
  }

  // A dense linear: FP8 + UE8M0 128x128 block scales when quantised, else bf16.
  void Dense(const std::string& name, int64_t out, int64_t in) {
    if (c_.Quantized()) {
      Add(name + ".weight", DType::kF8E4M3, {out, in});
      Add(name + ".scale", DType::kF8E8M0, {CeilDiv(out, 128), CeilDiv(in, 128)});
    } else {
      Add(name + ".weight", DType::kBF16, {out, in});
    }
  }

  void Expert(const std::string& name, int64_t out, int64_t in) {
    switch (experts_) {
      case ExpertFormat::kFp4:
        Add(name + ".weight", DType::kI8, {out, in / 2});
        Add(name + ".scale", DType::kF8E8M0, {out, in / 32});
        break;
      case ExpertFormat::kFp8:
        Add(name + ".weight", DType::kF8E4M3, {out, in});
        Add(name + ".scale", DType::kF32, {CeilDiv(out, 128), CeilDiv(in, 128)});
        break;
      case ExpertFormat::kBf16:
        Add(name + ".weight", DType::kBF16, {out, in});
        break;
    }
  }

  void Norm(const std::string& name, int64_t dim) { Add(name + ".weight", DType::kBF16, {dim}); }

  void Hc(const std::string& prefix, int64_t mix) {
    const int64_t width = c_.hc_mult * c_.hidden_size;
    Add(prefix + "_fn", DType::kF32, {mix, width});
    Add(prefix + "_base", DType::kF32, {mix});
    Add(prefix + "_scale", DType::kF32, {mix == c_.hc_mult ? 1 : 3});
  }

  void Compressor(const std::string& p, int64_t ratio, int64_t dim) {
    const int64_t width = ratio == 4 ? 2 * dim : dim;
    Add(p + ".wkv.weight", DType::kBF16, {width, c_.hidden_size});
    Add(p + ".wgate.weight", DType::kBF16, {width, c_.hidden_size});
    Add(p + ".ape", DType::kF32, {ratio, width});
    Norm(p + ".norm", dim);
  }

  void Block(int64_t layer_id) {
    const std::string p = LayerPrefix(c_, layer_id);
    const int64_t d = c_.hidden_size, hd = c_.head_dim, h = c_.num_attention_heads;
    const int64_t mix = (2 + c_.hc_mult) * c_.hc_mult;
    Norm(p + "attn_norm", d);
    Norm(p + "ffn_norm", d);
    Hc(p + "hc_attn", mix);
    Hc(p + "hc_ffn", mix);
    Add(p + "attn.attn_sink", DType::kF32, {h});
    Dense(p + "attn.wq_a", c_.q_lora_rank, d);
    Norm(p + "attn.q_norm", c_.q_lora_rank);
    Dense(p + "attn.wq_b", h * hd, c_.q_lora_rank);
    Dense(p + "attn.wkv", hd, d);
    Norm(p + "attn.kv_norm", hd);
    Dense(p + "attn.wo_a", c_.o_groups * c_.o_lora_rank, c_.HeadsPerGroup() * hd);
    Dense(p + "attn.wo_b", d, c_.o_groups * c_.o_lora_rank);
    const int64_t ratio = c_.RatioOf(layer_id);
    if (ratio != 0) Compressor(p + "attn.compressor", ratio, hd);
    if (ratio == 4) {
      const int64_t ih = c_.index_n_heads, ihd = c_.index_head_dim;
      Dense(p + "attn.indexer.wq_b", ih * ihd, c_.q_lora_rank);
      Add(p + "attn.indexer.weights_proj.weight", DType::kBF16, {ih, d});
      Compressor(p + "attn.indexer.compressor", 4, ihd);
    }
    const int64_t e = c_.n_routed_experts, inter = c_.moe_intermediate_size;
    Add(p + "ffn.gate.weight", DType::kBF16, {e, d});
    if (layer_id < c_.num_hidden_layers && c_.IsHashLayer(layer_id)) {
      Add(p + "ffn.gate.tid2eid", DType::kI64, {c_.vocab_size, c_.num_experts_per_tok});
    } else {
      Add(p + "ffn.gate.bias", DType::kF32, {e});
    }
    const int64_t shared_inter = inter * c_.n_shared_experts;
    if (c_.n_shared_experts > 0) {
      Dense(p + "ffn.shared_experts.w1", shared_inter, d);
      Dense(p + "ffn.shared_experts.w3", shared_inter, d);
      Dense(p + "ffn.shared_experts.w2", d, shared_inter);
    }
    for (int64_t x = 0; x < e; ++x) {
      const std::string ep = absl::StrCat(p, "ffn.experts.", x);
      Expert(ep + ".w1", inter, d);
      Expert(ep + ".w3", inter, d);
      Expert(ep + ".w2", d, inter);
    }
  }

  std::vector<TensorSpec> Build() {
    const int64_t d = c_.hidden_size, hc = c_.hc_mult;
    Add("embed.weight", DType::kBF16, {c_.vocab_size, d});
    Add("head.weight", DType::kBF16, {c_.vocab_size, d});
    Norm("norm", d);
    Hc("hc_head", hc);
    for (int64_t l = 0; l < c_.num_hidden_layers; ++l) Block(l);
    for (int64_t i = 0; i < c_.num_nextn_predict_layers; ++i) {
      const int64_t id = c_.num_hidden_layers + i;
      const std::string p = LayerPrefix(c_, id);
      Block(id);
      Dense(p + "e_proj", d, d);
      Dense(p + "h_proj", d, d);
      Norm(p + "enorm", d);
      Norm(p + "hnorm", d);
      Norm(p + "norm", d);
      Hc(p + "hc_head", hc);
    }
    return std::move(out_);
  }

 private:
  const ModelConfig& c_;
  ExpertFormat experts_;
  std::vector<TensorSpec> out_;
};

}  // namespace

ExpertFormat ExpertFormatOf(const ModelConfig& config) {
  if (config.expert_dtype == "fp8") return ExpertFormat::kFp8;
  if (config.expert_dtype == "fp4") return ExpertFormat::kFp4;
  return config.Quantized() ? ExpertFormat::kFp4 : ExpertFormat::kBf16;
}

ExpertFormat DetectExpertFormat(const ModelConfig& config, const WeightSource& source) {
  auto v = source.Get("layers.0.ffn.experts.0.w1.weight");
  if (!v.ok()) return ExpertFormatOf(config);
  switch (v->dtype()) {
    case DType::kI8: return ExpertFormat::kFp4;
    case DType::kF8E4M3: return ExpertFormat::kFp8;
    case DType::kBF16: return ExpertFormat::kBf16;
    default: return ExpertFormatOf(config);
  }
}

std::string LayerPrefix(const ModelConfig& config, int64_t layer_id) {
  if (layer_id < config.num_hidden_layers) return absl::StrCat("layers.", layer_id, ".");
  return absl::StrCat("mtp.", layer_id - config.num_hidden_layers, ".");
}

std::vector<TensorSpec> ExpectedTensors(const ModelConfig& config, ExpertFormat experts) {
  return Inventory(config, experts).Build();
}

absl::Status CheckInventory(const ModelConfig& config, const WeightSource& source) {
  std::map<std::string, TensorSpec> expected;
  for (TensorSpec& s : ExpectedTensors(config, DetectExpertFormat(config, source))) {
    expected.emplace(s.name, std::move(s));
  }
  std::vector<std::string> unexpected, wrong;
  for (const std::string& name : source.Names()) {
    auto it = expected.find(name);
    if (it == expected.end()) {
      unexpected.push_back(name);
      continue;
    }
    auto view = source.Get(name);
    if (!view.ok()) return view.status();
    if (view->info->dtype != it->second.dtype || view->info->shape != it->second.shape) {
      wrong.push_back(absl::StrCat(name, " is ", std::string(DTypeName(view->info->dtype)),
                                   ShapeString(view->info->shape), ", expected ",
                                   std::string(DTypeName(it->second.dtype)), ShapeString(it->second.shape)));
    }
    expected.erase(it);
  }
  if (unexpected.empty() && wrong.empty() && expected.empty()) return absl::OkStatus();
  std::vector<std::string> parts;
  auto list = [&](const char* what, std::vector<std::string> names, const char* hint) {
    if (names.empty()) return;
    const size_t n = names.size();
    if (n > 4) names.resize(4);
    parts.push_back(absl::StrCat(n, " ", what, " (", absl::StrJoin(names, ", "), n > 4 ? ", ..." : "",
                                 ")", hint));
  };
  std::vector<std::string> missing;
  for (const auto& [name, spec] : expected) missing.push_back(name);
  list("tensors the config does not explain", unexpected,
       absl::StrCat("; does config.json's num_hidden_layers (", config.num_hidden_layers,
                    ") match the shards?")
           .c_str());
  list("missing tensors", missing, "");
  list("tensors of the wrong dtype or shape", wrong, "");
  return absl::FailedPreconditionError(absl::StrCat(
      source.Describe(), ": the checkpoint does not match its config: ", absl::StrJoin(parts, "; "),
      " (flotilla inspect lists them all)"));
}

}  // namespace flotilla
