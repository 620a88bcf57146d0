#include "worker/weights.h"

#include <cstring>

#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/model_tensors.h"
#include "kernels/ops.h"

namespace flotilla {
namespace {

class Binder {
 public:
  Binder(const ModelConfig& c, const WeightSource& src, const WeightSelection& sel,
         AlignedCopies* copies)
      : c_(c), src_(src), experts_(sel.experts), copies_(copies) {
    for (const auto& s : sel.tensors) specs_.emplace(s.name, s);
  }

  absl::StatusOr<TensorView> View(const std::string& name) const {
    auto it = specs_.find(name);
    if (it == specs_.end()) {
      return absl::InternalError(absl::StrCat("tensor ", name, " is not held by this process"));
    }
    return src_.GetChecked(name, it->second.dtype, it->second.shape);
  }

  template <typename T>
  absl::Status Bind(const std::string& name, const T** out) const {
    ASSIGN_OR_RETURN(TensorView v, View(name));
    *out = As<T>(v);
    return absl::OkStatus();
  }

  // The tensor's elements as T, at an address aligned for T.
  template <typename T>
  const T* As(const TensorView& v) const {
    return copies_->Aligned<T>(v.data, v.info->NumBytes());
  }

  absl::Status BindLinear(const std::string& base, Linear* l) const {
    ASSIGN_OR_RETURN(TensorView w, View(base + ".weight"));
    l->out = w.shape()[0];
    switch (w.dtype()) {
      case DType::kBF16:
        l->kind = Linear::Kind::kBf16;
        l->in = w.shape()[1];
        l->wb = As<bf16>(w);
        return absl::OkStatus();
      case DType::kI8:
        l->kind = Linear::Kind::kFp4;
        l->in = w.shape()[1] * 2;
        l->w4 = As<uint8_t>(w);
        return Bind(base + ".scale", &l->scale);
      case DType::kF8E4M3: {
        l->in = w.shape()[1];
        l->w8 = As<fp8>(w);
        ASSIGN_OR_RETURN(TensorView s, View(base + ".scale"));
        if (s.dtype() == DType::kF32) {
          l->kind = Linear::Kind::kFp8F32Scale;
          l->scale_f32 = As<float>(s);
        } else {
          l->kind = Linear::Kind::kFp8;
          l->scale = As<e8m0>(s);
        }
        return absl::OkStatus();
      }
      default:
        return absl::InternalError(absl::StrCat("unexpected dtype for ", base));
    }
  }

  absl::Status BindHc(const std::string& prefix, HcWeights* hc) const {
    RETURN_IF_ERROR(Bind(prefix + "_fn", &hc->fn));
    RETURN_IF_ERROR(Bind(prefix + "_base", &hc->base));
    return Bind(prefix + "_scale", &hc->scale);
  }

  absl::Status BindCompressor(const std::string& p, int64_t ratio, int64_t dim,
                              CompressorWeights* cw) const {
    cw->ratio = ratio;
    cw->dim = dim;
    cw->overlap = ratio == 4;
    RETURN_IF_ERROR(Bind(p + ".wkv.weight", &cw->wkv));
    RETURN_IF_ERROR(Bind(p + ".wgate.weight", &cw->wgate));
    RETURN_IF_ERROR(Bind(p + ".ape", &cw->ape));
    return Bind(p + ".norm.weight", &cw->norm);
  }

  // wo_a is used as bf16 (spec §3.6): FP8 tiles dequantised exactly; bf16 copied.
  absl::Status BindWoA(const std::string& base, std::vector<bf16>* out) const {
    Linear l;
    RETURN_IF_ERROR(BindLinear(base, &l));
    out->resize(l.out * l.in);
    if (l.kind == Linear::Kind::kBf16) {
      std::copy(l.wb, l.wb + l.out * l.in, out->begin());
      return absl::OkStatus();
    }
    if (l.kind != Linear::Kind::kFp8) {
      return absl::InvalidArgumentError(absl::StrCat(base, ": expected FP8 or BF16"));
    }
    const int64_t sc = (l.in + 127) / 128;
    for (int64_t r = 0; r < l.out; ++r) {
      for (int64_t k = 0; k < l.in; ++k) {
        const float s = E8m0ToF32(l.scale[(r / 128) * sc + k / 128]);
        (*out)[r * l.in + k] = F32ToBf16(Fp8ToF32(l.w8[r * l.in + k]) * s);
      }
    }
    return absl::OkStatus();
  }

  absl::Status BindBlock(int64_t layer_id, BlockWeights* b) const {
    const std::string p = LayerPrefix(c_, layer_id);
    b->layer_id = layer_id;
    RETURN_IF_ERROR(Bind(p + "attn_norm.weight", &b->attn_norm));
    RETURN_IF_ERROR(Bind(p + "ffn_norm.weight", &b->ffn_norm));
    RETURN_IF_ERROR(BindHc(p + "hc_attn", &b->hc_attn));
    RETURN_IF_ERROR(BindHc(p + "hc_ffn", &b->hc_ffn));
    AttentionWeights& a = b->attn;
    a.layer_id = layer_id;
    RETURN_IF_ERROR(Bind(p + "attn.attn_sink", &a.sink));
    RETURN_IF_ERROR(BindLinear(p + "attn.wq_a", &a.wq_a));
    RETURN_IF_ERROR(Bind(p + "attn.q_norm.weight", &a.q_norm));
    RETURN_IF_ERROR(BindLinear(p + "attn.wq_b", &a.wq_b));
    RETURN_IF_ERROR(BindLinear(p + "attn.wkv", &a.wkv));
    RETURN_IF_ERROR(Bind(p + "attn.kv_norm.weight", &a.kv_norm));
    RETURN_IF_ERROR(BindWoA(p + "attn.wo_a", &a.wo_a));
    RETURN_IF_ERROR(BindLinear(p + "attn.wo_b", &a.wo_b));
    a.ratio = c_.RatioOf(layer_id);
    if (a.ratio != 0) {
      a.compressor.emplace();
      RETURN_IF_ERROR(BindCompressor(p + "attn.compressor", a.ratio, c_.head_dim, &*a.compressor));
    }
    if (a.ratio == 4) {
      a.indexer.emplace();
      RETURN_IF_ERROR(BindLinear(p + "attn.indexer.wq_b", &a.indexer->wq_b));
      RETURN_IF_ERROR(Bind(p + "attn.indexer.weights_proj.weight", &a.indexer->weights_proj));
      RETURN_IF_ERROR(BindCompressor(p + "attn.indexer.compressor", 4, c_.index_head_dim,
                                     &a.indexer->compressor));
    }
    const RopeScaling& y = c_.rope_scaling;
    a.freqs.resize(c_.qk_rope_head_dim / 2);
    kernels::RopeFrequencies(c_.qk_rope_head_dim, a.ratio ? c_.compress_rope_theta : c_.rope_theta,
                             a.ratio != 0, y.factor, y.original_max_position_embeddings,
                             y.beta_fast, y.beta_slow, a.freqs.data());

    MoeWeights& m = b->moe;
    RETURN_IF_ERROR(Bind(p + "ffn.gate.weight", &m.gate));
    if (layer_id < c_.num_hidden_layers && c_.IsHashLayer(layer_id)) {
      {
        ASSIGN_OR_RETURN(TensorView v, View(p + "ffn.gate.tid2eid"));
        m.tid2eid.resize(v.info->NumBytes() / sizeof(int64_t));
        std::memcpy(m.tid2eid.data(), v.data, m.tid2eid.size() * sizeof(int64_t));
      }
      m.tid2eid_cols = c_.num_experts_per_tok;
      RETURN_IF_ERROR(CheckTid2eid(p + "ffn.gate.tid2eid", m.tid2eid.data()));
    } else {
      RETURN_IF_ERROR(Bind(p + "ffn.gate.bias", &m.bias));
    }
    m.has_shared = c_.n_shared_experts > 0;
    if (m.has_shared) {
      RETURN_IF_ERROR(BindLinear(p + "ffn.shared_experts.w1", &m.shared.w1));
      RETURN_IF_ERROR(BindLinear(p + "ffn.shared_experts.w3", &m.shared.w3));
      RETURN_IF_ERROR(BindLinear(p + "ffn.shared_experts.w2", &m.shared.w2));
    }
    m.first_expert = experts_.begin;
    m.experts.resize(experts_.size());
    for (int64_t e = experts_.begin; e < experts_.end; ++e) {
      const std::string ep = absl::StrCat(p, "ffn.experts.", e);
      ExpertWeights& ew = m.experts[e - experts_.begin];
      RETURN_IF_ERROR(BindLinear(ep + ".w1", &ew.w1));
      RETURN_IF_ERROR(BindLinear(ep + ".w3", &ew.w3));
      RETURN_IF_ERROR(BindLinear(ep + ".w2", &ew.w2));
    }
    return absl::OkStatus();
  }

  // Every row must name distinct experts in range (the reference would silently drop a repeat).
  absl::Status CheckTid2eid(const std::string& name, const int64_t* t) const {
    const int64_t k = c_.num_experts_per_tok;
    for (int64_t r = 0; r < c_.vocab_size; ++r) {
      for (int64_t j = 0; j < k; ++j) {
        const int64_t e = t[r * k + j];
        if (e < 0 || e >= c_.n_routed_experts) {
          return absl::InvalidArgumentError(
              absl::StrCat(name, ": row ", r, " column ", j, " holds expert ", e,
                           "; expected 0..", c_.n_routed_experts - 1));
        }
        for (int64_t i = 0; i < j; ++i) {
          if (t[r * k + i] == e) {
            return absl::InvalidArgumentError(absl::StrCat(
                name, ": row ", r, " lists expert ", e, " twice; expected distinct experts"));
          }
        }
      }
    }
    return absl::OkStatus();
  }

 private:
  const ModelConfig& c_;
  const WeightSource& src_;
  IndexRange experts_;
  AlignedCopies* copies_;
  std::map<std::string, TensorSpec> specs_;
};

}  // namespace

const uint8_t* AlignedCopies::Copy(const uint8_t* data, size_t bytes) {
  copies_.emplace_back(new uint64_t[(bytes + 7) / 8]);
  std::memcpy(copies_.back().get(), data, bytes);
  bytes_ += bytes;
  return reinterpret_cast<const uint8_t*>(copies_.back().get());
}

WeightSelection FullSelection(const ModelConfig& config, ExpertFormat experts) {
  return {ExpectedTensors(config, experts), IndexRange{0, config.n_routed_experts}};
}

absl::StatusOr<std::unique_ptr<ModelWeights>> LoadWeights(const ModelConfig& config,
                                                          const WeightSource& source,
                                                          const WeightSelection& selection) {
  auto w = std::make_unique<ModelWeights>();
  const Binder b(config, source, selection, &w->copies);
  RETURN_IF_ERROR(b.Bind("embed.weight", &w->embed));
  RETURN_IF_ERROR(b.Bind("head.weight", &w->head));
  RETURN_IF_ERROR(b.Bind("norm.weight", &w->norm));
  RETURN_IF_ERROR(b.BindHc("hc_head", &w->hc_head));
  w->layers.resize(config.num_hidden_layers);
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    RETURN_IF_ERROR(b.BindBlock(l, &w->layers[l]));
  }
  w->mtp.resize(config.num_nextn_predict_layers);
  for (int64_t i = 0; i < config.num_nextn_predict_layers; ++i) {
    const int64_t id = config.num_hidden_layers + i;
    const std::string p = LayerPrefix(config, id);
    MtpWeights& m = w->mtp[i];
    if (config.RatioOf(id) != 0) {
      return absl::UnimplementedError(absl::StrCat(
          "config.json: compress_ratios[", id, "] (MTP layer) is ", config.RatioOf(id),
          "; this runtime supports sliding-window-only MTP layers (ratio 0)"));
    }
    RETURN_IF_ERROR(b.BindBlock(id, &m.block));
    RETURN_IF_ERROR(b.BindLinear(p + "e_proj", &m.e_proj));
    RETURN_IF_ERROR(b.BindLinear(p + "h_proj", &m.h_proj));
    RETURN_IF_ERROR(b.Bind(p + "enorm.weight", &m.enorm));
    RETURN_IF_ERROR(b.Bind(p + "hnorm.weight", &m.hnorm));
    RETURN_IF_ERROR(b.Bind(p + "norm.weight", &m.norm));
    RETURN_IF_ERROR(b.BindHc(p + "hc_head", &m.hc_head));
  }
  return w;
}

}  // namespace flotilla
