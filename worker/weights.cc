#include "worker/weights.h"

#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <span>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/model_tensors.h"
#include "kernels/ops.h"
#include "worker/backend_status.h"

namespace flotilla {
namespace {

// Binds tensors to spans: checkpoint tensors are imported in place where the backend can and
// their address suits their type; the rest (and everything when uploading) are queued and
// uploaded by Finish() into one owned arena sized to hold them all.
class Binder {
 public:
  Binder(const ModelConfig& c, const WeightSource& src, const WeightSelection& sel,
         kernels::Backend& backend, bool upload, ModelWeights* w)
      : c_(c), src_(src), experts_(sel.experts), backend_(backend), upload_(upload), w_(w) {
    for (const auto& s : sel.tensors) specs_.emplace(s.name, s);
    // A backend that cannot view host memory (CUDA) gets every tensor uploaded.
    if (!upload_) upload_ = !backend_.ImportHost("import probe", nullptr, 0).ok();
  }

  absl::StatusOr<TensorView> View(const std::string& name) const {
    auto it = specs_.find(name);
    if (it == specs_.end()) {
      return absl::InternalError(absl::StrCat("tensor ", name, " is not held by this process"));
    }
    return src_.GetChecked(name, it->second.dtype, it->second.shape);
  }

  template <typename T>
  absl::Status Bind(const std::string& name, kernels::In<T>* out) {
    ASSIGN_OR_RETURN(TensorView v, View(name));
    return Place(name, v, out);
  }

  // The tensor's elements as a span of T: imported, or queued for upload.
  template <typename T>
  absl::Status Place(const std::string& name, const TensorView& v, kernels::In<T>* out) {
    const int64_t bytes = int64_t(v.info->NumBytes());
    const bool aligned = reinterpret_cast<uintptr_t>(v.data) % alignof(T) == 0;
    if (!upload_ && aligned) {
      std::unique_ptr<kernels::Arena> arena;
      ASSIGN_OR_RETURN_BACKEND(arena, backend_.ImportHost(name, v.data, bytes));
      ASSIGN_OR_RETURN_BACKEND(*out, arena->Whole<const T>());
      w_->imported.push_back(std::move(arena));
      return absl::OkStatus();
    }
    if (!aligned && !upload_) ++w_->num_realigned;
    Queue(v.data, bytes / int64_t(sizeof(T)), out);
    return absl::OkStatus();
  }

  // Host values made at load (kept here until Finish has uploaded them).
  template <typename T>
  void Own(std::vector<T> values, kernels::In<T>* out) {
    auto held = std::make_shared<std::vector<T>>(std::move(values));
    Queue(held->data(), int64_t(held->size()), out);
    owned_.push_back(std::move(held));
  }

  // Makes the owned arena, uploads every queued tensor and waits for the uploads.
  absl::Status Finish(kernels::Queue& queue) {
    const int64_t align = backend_.memory().alignment;
    int64_t total = 0;
    for (const Pending& p : pending_)
      total += (std::max<int64_t>(p.bytes, 1) + align - 1) / align * align;
    ASSIGN_OR_RETURN_BACKEND(w_->owned, backend_.NewArena("weights", total));
    for (const Pending& p : pending_) RETURN_IF_ERROR(p.place(*w_->owned, queue));
    RETURN_IF_BACKEND_ERROR(queue.Synchronize());
    w_->uploaded_bytes = 0;
    for (const Pending& p : pending_) w_->uploaded_bytes += p.bytes;
    pending_.clear();
    owned_.clear();
    return absl::OkStatus();
  }

  absl::Status BindLinear(const std::string& base, Linear* l) {
    ASSIGN_OR_RETURN(TensorView w, View(base + ".weight"));
    l->out = w.shape()[0];
    switch (w.dtype()) {
      case DType::kBF16:
        l->kind = Linear::Kind::kBf16;
        l->in = w.shape()[1];
        return Place(base + ".weight", w, &l->wb);
      case DType::kI8:
        l->kind = Linear::Kind::kFp4;
        l->in = w.shape()[1] * 2;
        RETURN_IF_ERROR(Place(base + ".weight", w, &l->w4));
        return Bind(base + ".scale", &l->scale);
      case DType::kF8E4M3: {
        l->in = w.shape()[1];
        RETURN_IF_ERROR(Place(base + ".weight", w, &l->w8));
        ASSIGN_OR_RETURN(TensorView s, View(base + ".scale"));
        if (s.dtype() == DType::kF32) {
          l->kind = Linear::Kind::kFp8F32Scale;
          return Place(base + ".scale", s, &l->scale_f32);
        }
        l->kind = Linear::Kind::kFp8;
        return Place(base + ".scale", s, &l->scale);
      }
      default:
        return absl::InternalError(absl::StrCat("unexpected dtype for ", base));
    }
  }

  absl::Status BindHc(const std::string& prefix, HcWeights* hc) {
    RETURN_IF_ERROR(Bind(prefix + "_fn", &hc->fn));
    RETURN_IF_ERROR(Bind(prefix + "_base", &hc->base));
    return Bind(prefix + "_scale", &hc->scale);
  }

  absl::Status BindCompressor(const std::string& p, int64_t ratio, int64_t dim,
                              CompressorWeights* cw) {
    cw->ratio = ratio;
    cw->dim = dim;
    cw->overlap = ratio == 4;
    RETURN_IF_ERROR(Bind(p + ".wkv.weight", &cw->wkv));
    RETURN_IF_ERROR(Bind(p + ".wgate.weight", &cw->wgate));
    RETURN_IF_ERROR(Bind(p + ".ape", &cw->ape));
    return Bind(p + ".norm.weight", &cw->norm);
  }

  // wo_a is used as bf16 (spec §3.6): FP8 tiles dequantised exactly; bf16 copied.
  absl::Status BindWoA(const std::string& base, kernels::In<bf16>* out) {
    ASSIGN_OR_RETURN(TensorView w, View(base + ".weight"));
    const int64_t rows = w.shape()[0], cols = w.shape()[1];
    std::vector<bf16> values(size_t(rows * cols));
    if (w.dtype() == DType::kBF16) {
      std::memcpy(values.data(), w.data, values.size() * sizeof(bf16));
      Own(std::move(values), out);
      return absl::OkStatus();
    }
    ASSIGN_OR_RETURN(TensorView s, View(base + ".scale"));
    if (w.dtype() != DType::kF8E4M3 || s.dtype() != DType::kF8E8M0) {
      return absl::InvalidArgumentError(absl::StrCat(base, ": expected FP8 or BF16"));
    }
    const auto* w8 = reinterpret_cast<const fp8*>(w.data);
    const auto* scale = reinterpret_cast<const e8m0*>(s.data);
    const int64_t sc = (cols + 127) / 128;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t k = 0; k < cols; ++k) {
        const float f = E8m0ToF32(scale[(r / 128) * sc + k / 128]);
        values[size_t(r * cols + k)] = F32ToBf16(Fp8ToF32(w8[r * cols + k]) * f);
      }
    }
    Own(std::move(values), out);
    return absl::OkStatus();
  }

  absl::Status BindBlock(int64_t layer_id, BlockWeights* b) {
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
    std::vector<float> freqs(size_t(c_.qk_rope_head_dim / 2));
    kernels::RopeFrequencies(c_.qk_rope_head_dim, a.ratio ? c_.compress_rope_theta : c_.rope_theta,
                             a.ratio != 0, y.factor, y.original_max_position_embeddings,
                             y.beta_fast, y.beta_slow, freqs.data());
    Own(std::move(freqs), &a.freqs);

    MoeWeights& m = b->moe;
    RETURN_IF_ERROR(Bind(p + "ffn.gate.weight", &m.gate));
    if (layer_id < c_.num_hidden_layers && c_.IsHashLayer(layer_id)) {
      ASSIGN_OR_RETURN(TensorView v, View(p + "ffn.gate.tid2eid"));
      // Copied: an I64 tensor in a safetensors file need not be 8-byte aligned.
      std::vector<int64_t> tid2eid(v.info->NumBytes() / sizeof(int64_t));
      std::memcpy(tid2eid.data(), v.data, tid2eid.size() * sizeof(int64_t));
      m.tid2eid_cols = c_.num_experts_per_tok;
      RETURN_IF_ERROR(CheckTid2eid(p + "ffn.gate.tid2eid", tid2eid.data()));
      Own(std::move(tid2eid), &m.tid2eid);
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
  struct Pending {
    int64_t bytes;
    std::function<absl::Status(kernels::Arena&, kernels::Queue&)> place;
  };

  // Queues `count` elements of T at `host` (any alignment) for upload into *out.
  template <typename T>
  void Queue(const void* host, int64_t count, kernels::In<T>* out) {
    kernels::Backend* backend = &backend_;
    pending_.push_back({count * int64_t(sizeof(T)), [=](kernels::Arena& arena, kernels::Queue& q) {
                          ASSIGN_OR_RETURN_BACKEND(kernels::Out<T> dst, arena.Allocate<T>(count));
                          RETURN_IF_BACKEND_ERROR(backend->Upload(
                              q,
                              std::span<const uint8_t>(static_cast<const uint8_t*>(host),
                                                       size_t(dst.size_bytes())),
                              dst.as_writable_bytes()));
                          *out = dst;
                          return absl::OkStatus();
                        }});
  }

  const ModelConfig& c_;
  const WeightSource& src_;
  IndexRange experts_;
  kernels::Backend& backend_;
  bool upload_;
  ModelWeights* w_;
  std::map<std::string, TensorSpec> specs_;
  std::vector<Pending> pending_;
  std::vector<std::shared_ptr<void>> owned_;
};

}  // namespace

WeightSelection FullSelection(const ModelConfig& config, ExpertFormat experts) {
  return {ExpectedTensors(config, experts), IndexRange{0, config.n_routed_experts}};
}

absl::StatusOr<std::unique_ptr<ModelWeights>> LoadWeights(const ModelConfig& config,
                                                          const WeightSource& source,
                                                          const WeightSelection& selection,
                                                          kernels::Backend& backend,
                                                          kernels::Queue& queue, bool upload) {
  auto w = std::make_unique<ModelWeights>();
  Binder b(config, source, selection, backend, upload, w.get());
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
  RETURN_IF_ERROR(b.Finish(queue));
  return w;
}

}  // namespace flotilla
