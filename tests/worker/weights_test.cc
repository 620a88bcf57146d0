// The loader and misaligned tensors: safetensors packs tensors without padding, so a tensor can
// start at an address that does not suit its element type. Such a tensor is copied into aligned
// storage when it is bound, with its values unchanged; an aligned one is used in place.
#include "worker/weights.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <map>

#include "common/model_tensors.h"
#include "common/synthetic.h"
#include "gtest/gtest.h"
#include "worker/model.h"

namespace flotilla {
namespace {

namespace fs = std::filesystem;

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
TEST(AlignedCopies, MisalignedTensorsOfASafetensorsFileReadTheirValues) {
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

  AlignedCopies copies;
  const float* fp = copies.Aligned<float>(data("f"), bytes("f"));
  const bf16* bp = copies.Aligned<bf16>(data("b"), bytes("b"));
  const float* gp = copies.Aligned<float>(data("g"), bytes("g"));
  const float* hp = copies.Aligned<float>(data("h"), bytes("h"));
  EXPECT_TRUE(AlignedFor<float>(fp));
  EXPECT_TRUE(AlignedFor<bf16>(bp));
  EXPECT_TRUE(AlignedFor<float>(gp));
  for (int i = 0; i < 5; ++i) EXPECT_EQ(std::memcmp(&fp[i], &f[i], 4), 0) << "f[" << i << "]";
  for (int i = 0; i < 3; ++i) EXPECT_EQ(std::memcmp(&bp[i], &b[i], 2), 0) << "b[" << i << "]";
  for (int i = 0; i < 4; ++i) EXPECT_EQ(gp[i], g[i]) << "g[" << i << "]";
  EXPECT_EQ(Bf16ToF32(bp[0]), 1.0f);
  EXPECT_EQ(Bf16ToF32(bp[1]), -3.0f);
  // The aligned tensor is read in place, not copied; the three others are.
  EXPECT_EQ(reinterpret_cast<const uint8_t*>(hp), data("h"));
  EXPECT_EQ(hp[1], -4.0f);
  EXPECT_EQ(copies.num_copies(), 3);
  EXPECT_EQ(copies.bytes(), sizeof(f) + sizeof(b) + sizeof(g));
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

TEST(AlignedCopies, AModelLoadedFromMisalignedTensorsComputesTheSameLogits) {
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
  auto weights = LoadWeights(*config, *odd, all);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const ModelWeights& mw = **weights;
  EXPECT_GT(mw.copies.num_copies(), 0);
  // Every multi-byte weight the kernels read is aligned and holds the checkpoint's values.
  auto same = [&](const std::string& name, const void* bound) {
    auto v = base->Get(name);
    ASSERT_TRUE(v.ok());
    EXPECT_EQ(std::memcmp(bound, v->data, v->info->NumBytes()), 0) << name;
  };
  EXPECT_TRUE(AlignedFor<float>(mw.hc_head.fn));
  same("hc_head_fn", mw.hc_head.fn);
  EXPECT_TRUE(AlignedFor<bf16>(mw.embed));
  same("embed.weight", mw.embed);
  for (const BlockWeights& b : mw.layers) {
    const std::string p = LayerPrefix(*config, b.layer_id);
    EXPECT_TRUE(AlignedFor<float>(b.hc_attn.fn) && AlignedFor<float>(b.hc_attn.base) &&
                AlignedFor<float>(b.hc_attn.scale) && AlignedFor<float>(b.hc_ffn.fn) &&
                AlignedFor<float>(b.attn.sink) && AlignedFor<bf16>(b.attn_norm))
        << p;
    same(p + "hc_attn_fn", b.hc_attn.fn);
    same(p + "hc_ffn_scale", b.hc_ffn.scale);
    same(p + "attn.attn_sink", b.attn.sink);
    if (b.attn.compressor) {
      EXPECT_TRUE(AlignedFor<float>(b.attn.compressor->ape)) << p;
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

}  // namespace
}  // namespace flotilla
