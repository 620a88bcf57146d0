// The loader's placement of tensors in backend memory. Safetensors packs tensors without
// padding, so a tensor can start at an address that does not suit its element type: such a
// tensor is uploaded into the weights' own arena with its values unchanged; an aligned one is
// imported in place (zero copy). With ModelOptions::upload_weights every tensor is uploaded (the
// path of a backend that cannot read host memory), and the model computes the same logits.
#include "worker/weights.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <map>

#include "common/model_tensors.h"
#include "common/synthetic.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "worker/model.h"

namespace flotilla {
namespace {

namespace fs = std::filesystem;

// The host address behind a span of CPU-backend memory (these tests check where the loader put
// a weight: in place in the mapped file, or an aligned copy).
template <typename T>
T* CpuAddress(const kernels::DeviceSpan<T>& span) {
  return kernels::BackendAccess::Address(span);
}

template <typename T>
bool AlignedFor(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % alignof(T) == 0;
}

// A file laid out by hand: one byte of U8 first puts the next tensors at odd offsets.
//   pad  U8   [1]  bytes [0, 1)
//   f    F32  [5]  bytes [1, 21)   misaligned
//   b    BF16 [3]  bytes [21, 27)  misaligned
//   g    F32  [4]  bytes [27, 43)  misaligned
//   pad2 U8   [1]  bytes [43, 44)
//   h    F32  [2]  bytes [44, 52)  aligned (the data section starts 8-byte aligned)
TEST(WeightPlacement, MisalignedTensorsOfASafetensorsFileCannotBeViewedInPlace) {
  const std::string path = (fs::temp_directory_path() /
                            ("flotilla_weights_test_" + std::to_string(getpid()) + ".safetensors"));
  const uint8_t pad = 0x5a;
  const float f[5] = {1.5f, -2.25f, 3.0e-5f, 65504.0f, -0.0f};
  const uint16_t b[3] = {0x3f80, 0xc040, 0x0001};  // bf16 1.0, -3.0, smallest subnormal
  const float g[4] = {7.0f, 8.5f, -9.75f, 1.0e30f};
  const float h[2] = {0.125f, -4.0f};
  SafetensorsWriter w;
  ASSERT_TRUE(w.Add("pad", DType::kU8, {1}, &pad, 1).ok());
  ASSERT_TRUE(w.Add("f", DType::kF32, {5}, f, sizeof(f)).ok());
  ASSERT_TRUE(w.Add("b", DType::kBF16, {3}, b, sizeof(b)).ok());
  ASSERT_TRUE(w.Add("g", DType::kF32, {4}, g, sizeof(g)).ok());
  ASSERT_TRUE(w.Add("pad2", DType::kU8, {1}, &pad, 1).ok());
  ASSERT_TRUE(w.Add("h", DType::kF32, {2}, h, sizeof(h)).ok());
  ASSERT_TRUE(w.Write(path).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  auto data = [&](const char* name) { return (*file)->Data(*(*file)->Find(name)); };
  auto bytes = [&](const char* name) { return (*file)->Find(name)->NumBytes(); };
  // The premise: the mapped tensors really are misaligned (and h is not).
  ASSERT_FALSE(AlignedFor<float>(data("f")));
  ASSERT_FALSE(AlignedFor<uint16_t>(data("b")));
  ASSERT_FALSE(AlignedFor<float>(data("g")));
  ASSERT_TRUE(AlignedFor<float>(data("h")));

  // An imported misaligned tensor is no span of its element type (the loader uploads it
  // instead); the aligned one is, at its mapped address, holding the file's values.
  kernels::CpuBackend backend;
  auto import = [&](const char* name) {
    auto arena = backend.ImportHost(name, data(name), int64_t(bytes(name)));
    EXPECT_TRUE(arena.ok()) << arena.status().message();
    return std::move(arena.value());
  };
  auto fa = import("f"), ba = import("b"), ga = import("g"), ha = import("h");
  auto fs = fa->Whole<const float>();
  ASSERT_FALSE(fs.ok());
  EXPECT_NE(fs.status().message().find("aligned to 4"), std::string::npos) << fs.status().message();
  EXPECT_FALSE(ba->Whole<const bf16>().ok());
  EXPECT_FALSE(ga->Whole<const float>().ok());
  EXPECT_TRUE(fa->Whole<const uint8_t>().ok());  // as bytes it is fine
  auto hs = ha->Whole<const float>();
  ASSERT_TRUE(hs.ok()) << hs.status().message();
  ASSERT_EQ(hs.value().size(), 2);
  const float* hp = CpuAddress(hs.value());
  EXPECT_EQ(reinterpret_cast<const uint8_t*>(hp), data("h"));
  EXPECT_EQ(hp[0], 0.125f);
  EXPECT_EQ(hp[1], -4.0f);
  fa.reset();
  ba.reset();
  ga.reset();
  ha.reset();
  file->reset();
  fs::remove(path);
}

// Serves every tensor of `base` from memory at an address one byte past an 8-byte boundary, as
// an unpadded file may place it.
class MisalignedSource : public WeightSource {
 public:
  explicit MisalignedSource(std::shared_ptr<WeightSource> base) : base_(std::move(base)) {
    for (const std::string& name : base_->Names()) {
      auto v = base_->Get(name);
      const uint64_t n = v->info->NumBytes();
      auto& buf = bytes_[name];
      buf.reset(new uint64_t[(n + 15) / 8]);
      std::memcpy(reinterpret_cast<uint8_t*>(buf.get()) + 1, v->data, n);
    }
  }
  absl::StatusOr<TensorView> Get(std::string_view name) const override {
    ASSIGN_OR_RETURN(TensorView v, base_->Get(name));
    v.data = reinterpret_cast<const uint8_t*>(bytes_.find(std::string(name))->second.get()) + 1;
    return v;
  }
  bool Has(std::string_view name) const override { return base_->Has(name); }
  std::vector<std::string> Names() const override { return base_->Names(); }
  std::string Describe() const override { return base_->Describe(); }

 private:
  std::shared_ptr<WeightSource> base_;
  std::map<std::string, std::unique_ptr<uint64_t[]>> bytes_;
};

TEST(WeightPlacement, AModelLoadedFromMisalignedTensorsComputesTheSameLogits) {
  const std::string dir =
      (fs::temp_directory_path() / ("flotilla_weights_test_tiny_" + std::to_string(getpid())))
          .string();
  auto config = PresetConfig("tiny");
  ASSERT_TRUE(config.ok()) << config.status();
  SyntheticOptions opt;
  opt.seed = 11;
  ASSERT_TRUE(WriteSyntheticCheckpoint(*config, opt, dir).ok());
  auto ckpt = CheckpointDir::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::shared_ptr<WeightSource> base(std::move(*ckpt));
  auto odd = std::make_shared<MisalignedSource>(base);

  const WeightSelection all = FullSelection(*config, DetectExpertFormat(*config, *base));
  kernels::CpuBackend backend;
  auto queue = backend.NewQueue();
  auto weights = LoadWeights(*config, *odd, all, backend, *queue, /*upload=*/false);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const ModelWeights& mw = **weights;
  EXPECT_GT(mw.num_realigned, 0);
  EXPECT_GT(mw.uploaded_bytes, 0);
  // Every multi-byte weight the kernels read is aligned and holds the checkpoint's values.
  auto same = [&](const std::string& name, auto span) {
    const void* bound = CpuAddress(span);
    auto v = base->Get(name);
    ASSERT_TRUE(v.ok());
    EXPECT_EQ(std::memcmp(bound, v->data, v->info->NumBytes()), 0) << name;
  };
  EXPECT_TRUE(AlignedFor<float>(CpuAddress(mw.hc_head.fn)));
  same("hc_head_fn", mw.hc_head.fn);
  EXPECT_TRUE(AlignedFor<bf16>(CpuAddress(mw.embed)));
  same("embed.weight", mw.embed);
  for (const BlockWeights& b : mw.layers) {
    const std::string p = LayerPrefix(*config, b.layer_id);
    EXPECT_TRUE(
        AlignedFor<float>(CpuAddress(b.hc_attn.fn)) && AlignedFor<float>(CpuAddress(b.hc_attn.base)) &&
        AlignedFor<float>(CpuAddress(b.hc_attn.scale)) && AlignedFor<float>(CpuAddress(b.hc_ffn.fn)) &&
        AlignedFor<float>(CpuAddress(b.attn.sink)) && AlignedFor<bf16>(CpuAddress(b.attn_norm)))
        << p;
    same(p + "hc_attn_fn", b.hc_attn.fn);
    same(p + "hc_ffn_scale", b.hc_ffn.scale);
    same(p + "attn.attn_sink", b.attn.sink);
    if (b.attn.compressor) {
      EXPECT_TRUE(AlignedFor<float>(CpuAddress(b.attn.compressor->ape))) << p;
      same(p + "attn.compressor.ape", b.attn.compressor->ape);
    }
  }

  // The whole forward pass agrees bitwise with the model read in place.
  std::vector<int32_t> tokens(24);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t((i * 7919 + 13) % 129280);
  auto logits = [&](std::shared_ptr<WeightSource> src) {
    auto m = Model::FromSource(*config, src, ModelOptions{});
    EXPECT_TRUE(m.ok()) << m.status();
    auto seq = (*m)->NewSequence();
    Model::Chunk ch{seq.get(), tokens, true};
    Model::Output out;
    EXPECT_TRUE((*m)->Forward(std::span<const Model::Chunk>(&ch, 1), &out).ok());
    return out.logits;
  };
  const auto want = logits(base);
  const auto got = logits(odd);
  ASSERT_EQ(want.size(), got.size());
  EXPECT_EQ(std::memcmp(want.data(), got.data(), want.size() * 4), 0);
  fs::remove_all(dir);
}

// The upload path (a backend that cannot read host memory; here the CPU backend told to upload):
// every tensor lies in the weights' own arena, not in the mapped checkpoint, with the file's
// values, and prefill, decode and the MTP draft give bitwise the logits of the imported weights.
TEST(WeightPlacement, UploadedWeightsComputeTheLogitsOfImportedOnes) {
  const std::string dir =
      (fs::temp_directory_path() / ("flotilla_weights_test_upload_" + std::to_string(getpid())))
          .string();
  auto config = PresetConfig("tiny");
  ASSERT_TRUE(config.ok()) << config.status();
  SyntheticOptions opt;
  opt.seed = 23;
  ASSERT_TRUE(WriteSyntheticCheckpoint(*config, opt, dir).ok());
  auto ckpt = CheckpointDir::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::shared_ptr<WeightSource> source(std::move(*ckpt));

  const WeightSelection all = FullSelection(*config, DetectExpertFormat(*config, *source));
  kernels::CpuBackend backend;
  auto queue = backend.NewQueue();
  auto imported = LoadWeights(*config, *source, all, backend, *queue, /*upload=*/false);
  auto uploaded = LoadWeights(*config, *source, all, backend, *queue, /*upload=*/true);
  ASSERT_TRUE(imported.ok()) << imported.status();
  ASSERT_TRUE(uploaded.ok()) << uploaded.status();
  EXPECT_GT((*imported)->imported.size(), 0u);
  EXPECT_TRUE((*uploaded)->imported.empty());
  const ModelWeights& up = **uploaded;
  // Uploaded: every selected tensor's bytes except wo_a's, which the loader replaces by its bf16
  // dequantisation, plus each attention's RoPE frequencies (rope/2 f32).
  uint64_t want_bytes = 0;
  for (const TensorSpec& t : all.tensors) {
    if (t.name.find("attn.wo_a.") != std::string::npos) continue;
    auto v = source->Get(t.name);
    ASSERT_TRUE(v.ok());
    want_bytes += v->info->NumBytes();
  }
  std::vector<const BlockWeights*> blocks;
  for (const BlockWeights& b : up.layers) blocks.push_back(&b);
  for (const MtpWeights& m : up.mtp) blocks.push_back(&m.block);
  for (const BlockWeights* b : blocks) {
    EXPECT_EQ(b->attn.wo_a.size(), config->o_groups * config->o_lora_rank *
                                       (config->num_attention_heads / config->o_groups) *
                                       config->head_dim);
    want_bytes += uint64_t(b->attn.wo_a.size()) * 2 + uint64_t(config->qk_rope_head_dim / 2) * 4;
  }
  EXPECT_EQ(uint64_t(up.uploaded_bytes), want_bytes);
  auto placed = [&](const std::string& name, auto span) {
    EXPECT_EQ(span.arena(), up.owned.get()) << name;
    auto v = source->Get(name);
    ASSERT_TRUE(v.ok());
    ASSERT_EQ(uint64_t(span.size_bytes()), v->info->NumBytes()) << name;
    EXPECT_NE(static_cast<const void*>(CpuAddress(span)), static_cast<const void*>(v->data)) << name;
    EXPECT_EQ(std::memcmp(CpuAddress(span), v->data, v->info->NumBytes()), 0) << name;
  };
  placed("embed.weight", up.embed);
  placed("head.weight", up.head);
  placed("hc_head_fn", up.hc_head.fn);
  for (const BlockWeights& b : up.layers) {
    const std::string p = LayerPrefix(*config, b.layer_id);
    placed(p + "attn_norm.weight", b.attn_norm);
    placed(p + "attn.attn_sink", b.attn.sink);
    placed(p + "ffn.gate.weight", b.moe.gate);
  }
  // The converted tensors are equal in both.
  for (size_t l = 0; l < up.layers.size(); ++l) {
    const AttentionWeights& a = up.layers[l].attn;
    const AttentionWeights& b = (*imported)->layers[l].attn;
    ASSERT_EQ(a.wo_a.size(), b.wo_a.size());
    EXPECT_EQ(std::memcmp(CpuAddress(a.wo_a), CpuAddress(b.wo_a), size_t(a.wo_a.size_bytes())), 0);
    ASSERT_EQ(a.freqs.size(), b.freqs.size());
    EXPECT_EQ(std::memcmp(CpuAddress(a.freqs), CpuAddress(b.freqs), size_t(a.freqs.size_bytes())), 0);
  }

  std::vector<int32_t> prompt(19);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int32_t((i * 104729 + 7) % 129280);
  auto run = [&](bool upload) {
    ModelOptions o;
    o.upload_weights = upload;
    o.kv_memory_bytes = 64 << 20;
    auto m = Model::FromSource(*config, source, o);
    EXPECT_TRUE(m.ok()) << m.status();
    std::vector<float> all_logits;
    auto seq = (*m)->NewSequence();
    Model::Chunk prefill{seq.get(), prompt, true};
    Model::Output out;
    EXPECT_TRUE((*m)->Forward(std::span<const Model::Chunk>(&prefill, 1), &out).ok());
    all_logits = out.logits;
    const int32_t next[1] = {4242};
    Model::Chunk decode{seq.get(), next};
    EXPECT_TRUE((*m)->Forward(std::span<const Model::Chunk>(&decode, 1), &out).ok());
    all_logits.insert(all_logits.end(), out.logits.begin(), out.logits.end());
    if (config->num_nextn_predict_layers > 0) {
      SequenceState* seqs[1] = {seq.get()};
      const int32_t chosen[1] = {77};
      std::vector<float> draft;
      EXPECT_TRUE((*m)->DraftMtp(seqs, chosen, &draft).ok());
      all_logits.insert(all_logits.end(), draft.begin(), draft.end());
    }
    return all_logits;
  };
  const auto want = run(false);
  const auto got = run(true);
  ASSERT_EQ(want.size(), got.size());
  ASSERT_GT(want.size(), 0u);
  EXPECT_EQ(std::memcmp(want.data(), got.data(), want.size() * 4), 0);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace flotilla
