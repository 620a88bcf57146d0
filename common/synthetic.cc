#include "common/synthetic.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/dtype.h"
#include "common/model_tensors.h"
#include "common/safetensors.h"

namespace flotilla {
namespace {

namespace fs = std::filesystem;

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t HashName(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ull;
  return h;
}

// Counter-based uniform stream: element i of a tensor does not depend on thread or order.
class Stream {
 public:
  Stream(uint64_t seed, const std::string& name) : key_(SplitMix64(seed ^ HashName(name))) {}
  // Uniform in [-1, 1).
  float Uniform(uint64_t i) const {
    const uint64_t x = SplitMix64(key_ + i * 0xd1b54a32d192ed03ull);
    return float(double(x >> 11) * 0x1p-53 * 2.0 - 1.0);
  }
  uint64_t Bits(uint64_t i) const { return SplitMix64(key_ ^ (i * 0x9e3779b97f4a7c15ull)); }

 private:
  uint64_t key_;
};

// Uniform with standard deviation sigma.
float Draw(const Stream& s, uint64_t i, float sigma) { return s.Uniform(i) * sigma * 1.7320508f; }

struct Buffer {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

int64_t NumElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

bool EndsWith(const std::string& s, const char* suffix) { return absl::EndsWith(s, suffix); }

// FP8 block-quantised weight [out, in] and its scale (UE8M0, or f32 for FP8 experts).
void MakeFp8(const Stream& st, float sigma, int64_t out, int64_t in, Buffer& w, Buffer& scale) {
  const int64_t sb_rows = (out + 127) / 128, sb_cols = (in + 127) / 128;
  std::vector<float> real(out * in);
  for (int64_t i = 0; i < out * in; ++i) real[i] = Draw(st, i, sigma);
  w.bytes.resize(out * in);
  const bool f32_scale = scale.dtype == DType::kF32;
  scale.bytes.resize(sb_rows * sb_cols * (f32_scale ? 4 : 1));
  for (int64_t br = 0; br < sb_rows; ++br) {
    for (int64_t bc = 0; bc < sb_cols; ++bc) {
      float amax = 1e-4f;
      for (int64_t r = br * 128; r < std::min(out, br * 128 + 128); ++r)
        for (int64_t c = bc * 128; c < std::min(in, bc * 128 + 128); ++c)
          amax = std::max(amax, std::fabs(real[r * in + c]));
      float s;
      if (f32_scale) {
        s = amax / 448.0f;
        std::memcpy(&scale.bytes[(br * sb_cols + bc) * 4], &s, 4);
      } else {
        const e8m0 bits = CeilPow2ScaleBits(amax * (1.0f / 448.0f));
        scale.bytes[br * sb_cols + bc] = bits;
        s = E8m0ToF32(bits);
      }
      for (int64_t r = br * 128; r < std::min(out, br * 128 + 128); ++r)
        for (int64_t c = bc * 128; c < std::min(in, bc * 128 + 128); ++c)
          w.bytes[r * in + c] = F32ToFp8(real[r * in + c] / s);
    }
  }
}

// Packed FP4 expert weight [out, in/2] (int8) with UE8M0 scales [out, in/32].
void MakeFp4(const Stream& st, float sigma, int64_t out, int64_t in, Buffer& w, Buffer& scale) {
  w.bytes.assign(out * in / 2, 0);
  scale.bytes.resize(out * in / 32);
  float real[32];
  for (int64_t r = 0; r < out; ++r) {
    for (int64_t g = 0; g < in / 32; ++g) {
      float amax = 6.0f * 0x1p-126f;
      for (int64_t j = 0; j < 32; ++j) {
        real[j] = Draw(st, r * in + g * 32 + j, sigma);
        amax = std::max(amax, std::fabs(real[j]));
      }
      const e8m0 bits = CeilPow2ScaleBits(amax * (1.0f / 6.0f));
      scale.bytes[r * (in / 32) + g] = bits;
      const float s = E8m0ToF32(bits);
      for (int64_t j = 0; j < 32; ++j) {
        const uint8_t nib = F32ToFp4(real[j] / s);
        const int64_t k = g * 32 + j;
        w.bytes[r * (in / 2) + k / 2] |= uint8_t(k % 2 ? nib << 4 : nib);
      }
    }
  }
}

void FillBf16(Buffer& b, const Stream& st, float center, float sigma) {
  const int64_t n = NumElements(b.shape);
  b.bytes.resize(n * 2);
  auto* p = reinterpret_cast<bf16*>(b.bytes.data());
  for (int64_t i = 0; i < n; ++i) p[i] = F32ToBf16(center + Draw(st, i, sigma));
}

void FillF32(Buffer& b, const Stream& st, float center, float sigma) {
  const int64_t n = NumElements(b.shape);
  b.bytes.resize(n * 4);
  auto* p = reinterpret_cast<float*>(b.bytes.data());
  for (int64_t i = 0; i < n; ++i) p[i] = center + Draw(st, i, sigma);
}

// tid2eid: each token gets top_k distinct experts.
void FillTid2eid(Buffer& b, const Stream& st, int64_t num_experts) {
  const int64_t rows = b.shape[0], k = b.shape[1];
  b.bytes.resize(rows * k * 8);
  auto* p = reinterpret_cast<int64_t*>(b.bytes.data());
  std::vector<int64_t> perm(num_experts);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t e = 0; e < num_experts; ++e) perm[e] = e;
    for (int64_t j = 0; j < k; ++j) {  // partial Fisher–Yates
      const int64_t pick = j + int64_t(st.Bits(r * k + j) % uint64_t(num_experts - j));
      std::swap(perm[j], perm[pick]);
      p[r * k + j] = perm[j];
    }
  }
}

// Values chosen so activations stay in a realistic range through every layer.
void Generate(const ModelConfig& c, uint64_t seed, Buffer& b, Buffer* scale) {
  const Stream st(seed, b.name);
  const std::string& n = b.name;
  const int64_t d = c.hidden_size;
  if (scale != nullptr) {  // a quantised linear: weight + scale
    const int64_t out = b.shape[0];
    const int64_t in = b.dtype == DType::kI8 ? b.shape[1] * 2 : b.shape[1];
    const float sigma = 1.0f / std::sqrt(float(in));
    if (b.dtype == DType::kI8) {
      MakeFp4(st, sigma, out, in, b, *scale);
    } else {
      MakeFp8(st, sigma, out, in, b, *scale);
    }
    return;
  }
  if (b.dtype == DType::kI64) return FillTid2eid(b, st, c.n_routed_experts);
  if (n == "embed.weight") return FillBf16(b, st, 0.0f, 1.0f);
  if (n == "head.weight") return FillBf16(b, st, 0.0f, 2.0f / std::sqrt(float(d)));
  if (EndsWith(n, "norm.weight")) return FillBf16(b, st, 1.0f, 0.1f);
  if (EndsWith(n, "_fn")) return FillF32(b, st, 0.0f, 1.0f / std::sqrt(float(b.shape[1])));
  if (EndsWith(n, "_base")) return FillF32(b, st, 0.0f, 0.3f);
  if (EndsWith(n, "_scale")) return FillF32(b, st, 0.75f, 0.12f);
  if (EndsWith(n, "attn_sink")) return FillF32(b, st, 0.0f, 0.5f);
  if (EndsWith(n, "gate.bias")) return FillF32(b, st, 0.0f, 0.02f);
  if (EndsWith(n, ".ape")) return FillF32(b, st, 0.0f, 0.1f);
  if (b.dtype == DType::kBF16 && b.shape.size() == 2) {  // bf16 linears (gate, compressors, …)
    return FillBf16(b, st, 0.0f, 1.0f / std::sqrt(float(b.shape[1])));
  }
  FillF32(b, st, 0.0f, 0.1f);
}

absl::Status CopyFile(const std::string& from, const std::string& to) {
  std::error_code ec;
  fs::copy_file(from, to, fs::copy_options::overwrite_existing, ec);
  if (ec) return absl::NotFoundError(absl::StrCat("copying ", from, " to ", to, ": ", ec.message()));
  return absl::OkStatus();
}

absl::Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  f.close();
  if (!f) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> PresetConfig(const std::string& preset) {
  ModelConfig c;
  if (preset == "tiny") {
    c.hidden_size = 256;
    c.num_hidden_layers = 4;
    c.num_attention_heads = 4;
    c.head_dim = 128;
    c.qk_rope_head_dim = 64;
    c.q_lora_rank = 128;
    c.o_lora_rank = 128;
    c.o_groups = 4;  // tp 1, 2 and 4 all split heads, groups and indexer heads
    c.sliding_window = 32;
    c.compress_ratios = {0, 4, 8, 4, 0};
    c.index_n_heads = 4;
    c.index_head_dim = 128;
    c.index_topk = 4;
    c.n_routed_experts = 16;
    c.num_experts_per_tok = 6;
    c.moe_intermediate_size = 128;
    c.num_hash_layers = 2;
    c.quantization_config.present = true;
    c.expert_dtype = "fp4";
  } else if (preset == "small" || preset == "mini-1b") {
    c.hidden_size = 1024;
    c.num_hidden_layers = 24;
    c.num_attention_heads = 16;
    c.head_dim = 64;
    c.qk_rope_head_dim = 32;
    c.q_lora_rank = 384;
    c.o_lora_rank = 384;
    c.o_groups = 4;
    c.sliding_window = 64;
    c.compress_ratios = {0, 0};
    for (int i = 0; i < 10; ++i) {
      c.compress_ratios.push_back(4);
      c.compress_ratios.push_back(96);
    }
    c.compress_ratios.push_back(4);
    c.compress_ratios.push_back(0);
    c.index_n_heads = 8;
    c.index_head_dim = 64;
    c.index_topk = 128;
    c.n_routed_experts = 16;
    c.num_experts_per_tok = 2;
    c.moe_intermediate_size = 512;
    c.num_hash_layers = 2;
    c.quantization_config.present = preset == "small";
    c.expert_dtype = preset == "small" ? "fp4" : "";
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown preset '", preset, "'; expected tiny, small or mini-1b"));
  }
  RETURN_IF_ERROR(c.Validate());
  return c;
}

absl::Status WriteSyntheticCheckpoint(const ModelConfig& config, const SyntheticOptions& options,
                                      const std::string& dir) {
  RETURN_IF_ERROR(config.Validate());
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));

  const std::vector<TensorSpec> specs = ExpectedTensors(config, ExpertFormatOf(config));
  std::vector<Buffer> buffers(specs.size());
  std::vector<std::pair<size_t, size_t>> jobs;  // (weight, scale or npos)
  for (size_t i = 0; i < specs.size(); ++i) {
    buffers[i] = {specs[i].name, specs[i].dtype, specs[i].shape, {}};
    const bool has_scale = i + 1 < specs.size() && EndsWith(specs[i].name, ".weight") &&
                           specs[i + 1].name == specs[i].name.substr(0, specs[i].name.size() - 7) +
                                                    ".scale";
    jobs.push_back({i, has_scale ? i + 1 : SIZE_MAX});
    if (has_scale) {
      buffers[i + 1] = {specs[i + 1].name, specs[i + 1].dtype, specs[i + 1].shape, {}};
      ++i;
    }
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t j = 0; j < jobs.size(); ++j) {
    Buffer* scale = jobs[j].second == SIZE_MAX ? nullptr : &buffers[jobs[j].second];
    Generate(config, options.seed, buffers[jobs[j].first], scale);
  }

  // Shards: main tensors in order, a new shard past shard_bytes; MTP tensors in the last one.
  std::vector<int> shard_of(buffers.size());
  int shard = 0;
  uint64_t in_shard = 0;
  for (size_t i = 0; i < buffers.size(); ++i) {
    if (absl::StartsWith(buffers[i].name, "mtp.")) continue;
    if (in_shard > 0 && in_shard + buffers[i].bytes.size() > options.shard_bytes) {
      ++shard;
      in_shard = 0;
    }
    shard_of[i] = shard;
    in_shard += buffers[i].bytes.size();
  }
  for (size_t i = 0; i < buffers.size(); ++i) {
    if (absl::StartsWith(buffers[i].name, "mtp.")) shard_of[i] = shard;
  }
  const int num_shards = shard + 1;
  std::vector<SafetensorsWriter> writers(num_shards);
  std::map<std::string, std::string> weight_map;
  uint64_t total = 0;
  auto file_name = [&](int s) {
    return absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, num_shards);
  };
  for (size_t i = 0; i < buffers.size(); ++i) {
    const Buffer& b = buffers[i];
    RETURN_IF_ERROR(writers[shard_of[i]].Add(b.name, b.dtype, b.shape, b.bytes.data(),
                                             b.bytes.size()));
    weight_map[b.name] = file_name(shard_of[i]);
    total += b.bytes.size();
  }
  for (int s = 0; s < num_shards; ++s) {
    writers[s].SetMetadata("format", "pt");
    RETURN_IF_ERROR(writers[s].Write((fs::path(dir) / file_name(s)).string()));
  }
  RETURN_IF_ERROR(WriteSafetensorsIndex(dir, weight_map, total));
  RETURN_IF_ERROR(WriteText((fs::path(dir) / "config.json").string(), config.ToJson()));
  RETURN_IF_ERROR(WriteText(
      (fs::path(dir) / "generation_config.json").string(),
      absl::StrFormat("{\n  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n  \"do_sample\": "
                      "true,\n  \"temperature\": 1.0,\n  \"top_p\": 1.0\n}\n",
                      config.bos_token_id, config.eos_token_id)));
  if (!options.tokenizer_dir.empty()) {
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
      RETURN_IF_ERROR(CopyFile((fs::path(options.tokenizer_dir) / f).string(),
                               (fs::path(dir) / f).string()));
    }
  }
  return absl::OkStatus();
}

}  // namespace flotilla
