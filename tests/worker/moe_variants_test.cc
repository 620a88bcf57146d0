// The MoE in each expert precision a checkpoint may carry — FP4 experts (V4-Flash), FP8 experts
// (the Base checkpoint's format) and BF16 (an unquantised checkpoint) — on the tiny shape: the
// grouped expert passes over the permuted list give every row what it gets alone, so logits are
// bitwise the same whether a step's assignments run in one pass or in many windows that cut the
// experts' groups (the pass size is the step's token limit), and whether a prompt runs whole or
// chunked. Each precision reaches its own grouped GEMM (GroupedGemmFp8Fp4 / GroupedGemmFp8 /
// GroupedGemmBf16).
#include <cmath>
#include <cstring>
#include <filesystem>

#include "common/synthetic.h"
#include "gtest/gtest.h"
#include "worker/model.h"

namespace flotilla {
namespace {

namespace fs = std::filesystem;

std::vector<int32_t> Prompt(int64_t n, int32_t salt) {
  std::vector<int32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = int32_t((i * 7919 + salt * 104729 + 11) % 129280);
  return ids;
}

// Logits of every position of `tokens`, fed in chunks of `chunk`.
std::vector<float> Logits(const Model& m, const std::vector<int32_t>& tokens, int64_t chunk) {
  auto seq = m.NewSequence();
  std::vector<float> all;
  Model::Output out;
  for (size_t s = 0; s < tokens.size(); s += size_t(chunk)) {
    const size_t n = std::min(tokens.size() - s, size_t(chunk));
    const Model::Chunk ch{seq.get(), std::span<const int32_t>(tokens.data() + s, n), true};
    const absl::Status st = m.Forward(std::span<const Model::Chunk>(&ch, 1), &out);
    EXPECT_TRUE(st.ok()) << st;
    all.insert(all.end(), out.logits.begin(), out.logits.end());
  }
  return all;
}

class MoeVariants : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    const std::string variant = GetParam();
    dir_ = (fs::temp_directory_path() /
            ("flotilla_moe_variants_" + variant + "_" + std::to_string(::getpid())))
               .string();
    auto config = PresetConfig("tiny");
    ASSERT_TRUE(config.ok()) << config.status();
    if (variant == "bf16") {
      config->quantization_config.present = false;
      config->expert_dtype = "";
    } else {
      config->expert_dtype = variant;
    }
    SyntheticOptions opt;
    opt.seed = 11;
    ASSERT_TRUE(WriteSyntheticCheckpoint(*config, opt, dir_).ok());
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<Model> Load(int64_t tokens_per_step) {
    ModelOptions o;
    o.kv_memory_bytes = 64ull << 20;
    o.tokens_per_step = tokens_per_step;
    o.sequences_per_step = 4;
    o.max_context = 1024;
    auto m = Model::Load(dir_, o);
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? std::move(*m) : nullptr;
  }
  std::string dir_;
};

TEST_P(MoeVariants, ExpertPassesAndChunksGiveTheSameBits) {
  const std::vector<int32_t> tokens = Prompt(40, 3);
  // One pass: 40 rows x K 6 = 240 assignments, under the 256 rows of one pass.
  std::unique_ptr<Model> one = Load(256);
  // Windows of 40 rows over the same 240 assignments (six passes), each cutting groups.
  std::unique_ptr<Model> many = Load(40);
  ASSERT_NE(one, nullptr);
  ASSERT_NE(many, nullptr);
  ASSERT_EQ(one->workspace_layout().expert_rows, 256);
  ASSERT_EQ(many->workspace_layout().expert_rows, 40);
  const std::vector<float> whole = Logits(*one, tokens, 40);
  ASSERT_EQ(whole.size(), size_t(40 * one->config().vocab_size));
  for (float v : whole) ASSERT_TRUE(std::isfinite(v));
  const std::vector<float> passes = Logits(*many, tokens, 40);
  ASSERT_EQ(passes.size(), whole.size());
  EXPECT_EQ(std::memcmp(whole.data(), passes.data(), whole.size() * sizeof(float)), 0);
  const std::vector<float> chunked = Logits(*many, tokens, 7);
  ASSERT_EQ(chunked.size(), whole.size());
  EXPECT_EQ(std::memcmp(whole.data(), chunked.data(), whole.size() * sizeof(float)), 0);
}

INSTANTIATE_TEST_SUITE_P(ExpertPrecisions, MoeVariants, ::testing::Values("fp4", "fp8", "bf16"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace flotilla
