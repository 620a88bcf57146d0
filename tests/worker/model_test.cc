// Whole-model properties on the synthetic tiny checkpoint: chunked prefill, decode, batching and
// thread count give bitwise identical logits; MTP drafts likewise; the 4-expert variant routes
// hash layers by the first 4 tid2eid columns; bad input gets clear errors.
#include <omp.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "common/synthetic.h"
#include "gtest/gtest.h"
#include "worker/model.h"
#include "worker/sampler.h"

namespace flotilla {
namespace {

namespace fs = std::filesystem;

class TinyModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string((fs::temp_directory_path() / "flotilla_model_test_tiny").string());
    auto config = PresetConfig("tiny");
    ASSERT_TRUE(config.ok()) << config.status();
    SyntheticOptions opt;
    opt.seed = 7;
    ASSERT_TRUE(WriteSyntheticCheckpoint(*config, opt, *dir_).ok());
    auto m = Model::Load(*dir_, ModelOptions{});
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = m->release();
  }
  static void TearDownTestSuite() {
    delete model_;
    fs::remove_all(*dir_);
    delete dir_;
  }

  static std::vector<int32_t> Prompt(int64_t n, int32_t salt) {
    std::vector<int32_t> ids(n);
    for (int64_t i = 0; i < n; ++i) ids[i] = int32_t((i * 7919 + salt * 104729 + 11) % 129280);
    return ids;
  }

  // Feeds `tokens` in chunks of `chunk` and returns the logits after each of the positions in
  // `probe` (absolute positions whose logits are compared), plus the final logits.
  static std::vector<std::vector<float>> RunChunked(const Model& m,
                                                    const std::vector<int32_t>& tokens,
                                                    int64_t chunk) {
    auto seq = m.NewSequence();
    std::vector<std::vector<float>> all;
    Model::Output out;
    for (size_t s = 0; s < tokens.size(); s += chunk) {
      const size_t n = std::min(tokens.size() - s, size_t(chunk));
      Model::Chunk ch{seq.get(), std::span<const int32_t>(tokens.data() + s, n), true};
      EXPECT_TRUE(m.Forward(std::span<const Model::Chunk>(&ch, 1), &out).ok());
      const int64_t v = m.config().vocab_size;
      for (size_t i = 0; i < n; ++i)
        all.emplace_back(out.logits.begin() + i * v, out.logits.begin() + (i + 1) * v);
    }
    return all;
  }

  static bool BitwiseEqual(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
  }

  static std::string* dir_;
  static Model* model_;
};
std::string* TinyModel::dir_ = nullptr;
Model* TinyModel::model_ = nullptr;

TEST_F(TinyModel, LogitsAreFiniteAndInformative) {
  const auto logits = RunChunked(*model_, Prompt(64, 1), 64);
  ASSERT_EQ(logits.size(), 64u);
  std::set<int32_t> argmaxes;
  for (const auto& row : logits) {
    double sum = 0, sq = 0;
    for (float v : row) {
      ASSERT_TRUE(std::isfinite(v));
      sum += v;
      sq += double(v) * v;
    }
    const double mean = sum / row.size(), var = sq / row.size() - mean * mean;
    EXPECT_GT(var, 0.05) << "logits nearly constant";
    EXPECT_LT(var, 1e4);
    argmaxes.insert(Argmax(row.data(), int64_t(row.size())));
  }
  EXPECT_GT(argmaxes.size(), 8u) << "the argmax barely depends on the context";
}

TEST_F(TinyModel, ChunkedPrefillAndDecodeAreBitwiseEqual) {
  // 100 tokens: past the 32-token window, 25 CSA entries (top-k 4), 12 HCA entries.
  const auto tokens = Prompt(100, 2);
  const auto full = RunChunked(*model_, tokens, 100);
  for (int64_t chunk : {1, 3, 7, 37, 64}) {
    const auto chunked = RunChunked(*model_, tokens, chunk);
    ASSERT_EQ(chunked.size(), full.size());
    for (size_t p = 0; p < full.size(); ++p) {
      ASSERT_TRUE(BitwiseEqual(full[p], chunked[p])) << "chunk " << chunk << " position " << p;
    }
  }
}

TEST_F(TinyModel, BatchInvariance) {
  const auto a = Prompt(64, 3), b = Prompt(23, 4), c = Prompt(5, 5);
  const auto alone = RunChunked(*model_, a, 64);
  auto sa = model_->NewSequence(), sb = model_->NewSequence(), sc = model_->NewSequence();
  // B and C start earlier; A joins a batch whose other sequences are mid-decode.
  Model::Output out;
  {
    Model::Chunk chunks[] = {{sb.get(), std::span<const int32_t>(b.data(), 10), false},
                             {sc.get(), std::span<const int32_t>(c), false}};
    ASSERT_TRUE(model_->Forward(chunks, &out).ok());
  }
  Model::Chunk chunks[] = {{sb.get(), std::span<const int32_t>(b.data() + 10, 13), false},
                           {sa.get(), std::span<const int32_t>(a), true},
                           {sc.get(), std::span<const int32_t>(c.data(), 1), false}};
  ASSERT_TRUE(model_->Forward(chunks, &out).ok());
  const int64_t v = model_->config().vocab_size;
  for (size_t p = 0; p < a.size(); ++p) {
    std::vector<float> row(out.logits.begin() + (out.first_row[1] + p) * v,
                           out.logits.begin() + (out.first_row[1] + p + 1) * v);
    ASSERT_TRUE(BitwiseEqual(row, alone[p])) << "position " << p;
  }
}

TEST_F(TinyModel, DeterministicAcrossRunsAndThreadCounts) {
  const auto tokens = Prompt(48, 6);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto one = RunChunked(*model_, tokens, 48);
  omp_set_num_threads(std::max(2, saved));
  const auto two = RunChunked(*model_, tokens, 48);
  const auto again = RunChunked(*model_, tokens, 48);
  omp_set_num_threads(saved);
  for (size_t p = 0; p < one.size(); ++p) {
    ASSERT_TRUE(BitwiseEqual(one[p], two[p])) << "position " << p;
    ASSERT_TRUE(BitwiseEqual(two[p], again[p])) << "position " << p;
  }
}

TEST_F(TinyModel, MtpDraftsAreChunkInvariantAndSpeculationLeavesNoTrace) {
  const auto tokens = Prompt(40, 7);
  const int32_t x = 1234, y = 4321, z = 999;
  auto draft = [&](SequenceState* s, int32_t next) {
    std::vector<float> logits;
    EXPECT_TRUE(model_->DraftMtp(std::span<SequenceState* const>(&s, 1),
                                 std::span<const int32_t>(&next, 1), &logits)
                    .ok());
    return logits;
  };
  auto feed = [&](SequenceState* s, std::span<const int32_t> t, int64_t chunk) {
    Model::Output out;
    for (size_t i = 0; i < t.size(); i += chunk) {
      Model::Chunk ch{s, t.subspan(i, std::min<size_t>(chunk, t.size() - i)), false};
      EXPECT_TRUE(model_->Forward(std::span<const Model::Chunk>(&ch, 1), &out).ok());
    }
  };
  auto s1 = model_->NewSequence(), s2 = model_->NewSequence();
  feed(s1.get(), tokens, 40);
  feed(s2.get(), tokens, 7);
  const auto d1 = draft(s1.get(), x), d2 = draft(s2.get(), x);
  ASSERT_TRUE(BitwiseEqual(d1, d2));
  for (float v : d1) ASSERT_TRUE(std::isfinite(v));
  // s1 drafted x but continues with y; a fresh sequence that never drafted must agree.
  auto s3 = model_->NewSequence();
  feed(s3.get(), tokens, 40);
  feed(s1.get(), std::span<const int32_t>(&y, 1), 1);
  feed(s3.get(), std::span<const int32_t>(&y, 1), 1);
  ASSERT_TRUE(BitwiseEqual(draft(s1.get(), z), draft(s3.get(), z)));
}

// A weight source that serves one tensor from memory and the rest from the checkpoint.
class OverrideSource : public WeightSource {
 public:
  OverrideSource(std::shared_ptr<WeightSource> base, std::string name, std::vector<uint8_t> bytes)
      : base_(std::move(base)), name_(std::move(name)), bytes_(std::move(bytes)) {}
  absl::StatusOr<TensorView> Get(std::string_view name) const override {
    ASSIGN_OR_RETURN(TensorView v, base_->Get(name));
    if (name == name_) v.data = bytes_.data();
    return v;
  }
  bool Has(std::string_view name) const override { return base_->Has(name); }
  std::vector<std::string> Names() const override { return base_->Names(); }
  std::string Describe() const override { return base_->Describe(); }

 private:
  std::shared_ptr<WeightSource> base_;
  std::string name_;
  std::vector<uint8_t> bytes_;
};

TEST_F(TinyModel, FourExpertVariantRoutesHashLayersByTheFirstFourColumns) {
  auto config = ModelConfig::FromFile(*dir_ + "/config.json");
  ASSERT_TRUE(config.ok());
  auto ckpt = CheckpointDir::Open(*dir_);
  ASSERT_TRUE(ckpt.ok());
  std::shared_ptr<WeightSource> base(std::move(*ckpt));
  const std::string name = "layers.0.ffn.gate.tid2eid";
  auto view = base->Get(name);
  ASSERT_TRUE(view.ok());
  const int64_t rows = config->vocab_size, cols = config->num_experts_per_tok;
  const auto* t = view->as<int64_t>();
  const auto tokens = Prompt(24, 8);

  // Rewrites every row's columns [from, cols) with other distinct experts.
  auto permuted = [&](int64_t from) {
    std::vector<int64_t> table(t, t + rows * cols);
    for (int64_t r = 0; r < rows; ++r) {
      std::set<int64_t> used(table.begin() + r * cols, table.begin() + r * cols + cols);
      int64_t next = 0;
      for (int64_t j = from; j < cols; ++j) {
        while (used.count(next)) ++next;
        table[r * cols + j] = next;
        used.insert(next);
      }
    }
    std::vector<uint8_t> bytes(table.size() * 8);
    std::memcpy(bytes.data(), table.data(), bytes.size());
    return bytes;
  };
  auto logits_with = [&](std::shared_ptr<WeightSource> src, int64_t k) {
    ModelOptions o;
    o.experts_per_token = k;
    auto m = Model::FromSource(*config, src, o);
    EXPECT_TRUE(m.ok()) << m.status();
    return RunChunked(**m, tokens, 24).back();
  };
  const auto k4 = logits_with(base, 4);
  const auto k6 = logits_with(base, 6);
  EXPECT_FALSE(BitwiseEqual(k4, k6));
  // Columns 4 and 5 are cut off: changing them changes nothing at K = 4, something at K = 6.
  auto tail = std::make_shared<OverrideSource>(base, name, permuted(4));
  EXPECT_TRUE(BitwiseEqual(logits_with(tail, 4), k4));
  EXPECT_FALSE(BitwiseEqual(logits_with(tail, 6), k6));
  // Column 0 is used at K = 4.
  auto head = std::make_shared<OverrideSource>(base, name, permuted(0));
  EXPECT_FALSE(BitwiseEqual(logits_with(head, 4), k4));
}

// Requests with different experts per token share a batch; each gets bitwise the logits of a
// model loaded with its K (hash layers: the first K tid2eid columns), prefill and decode.
TEST_F(TinyModel, MixedExpertsPerTokenInOneBatch) {
  const std::vector<int64_t> ks = {2, 4, 0};  // 0: the model's own (the checkpoint's 6)
  const std::vector<std::vector<int32_t>> prompts = {Prompt(9, 1), Prompt(5, 2), Prompt(12, 3)};
  const std::vector<int32_t> next = {17, 4242, 99};
  const int64_t v = model_->config().vocab_size;

  // One model, one batch per step.
  std::vector<std::unique_ptr<SequenceState>> seqs;
  for (size_t i = 0; i < ks.size(); ++i) seqs.push_back(model_->NewSequence());
  std::vector<std::vector<float>> mixed(ks.size());
  for (int step = 0; step < 2; ++step) {
    std::vector<Model::Chunk> chunks;
    for (size_t i = 0; i < ks.size(); ++i) {
      Model::Chunk ch{
          seqs[i].get(),
          step == 0 ? std::span<const int32_t>(prompts[i]) : std::span<const int32_t>(&next[i], 1),
          true};
      ch.experts_per_token = ks[i];
      chunks.push_back(ch);
    }
    Model::Output out;
    ASSERT_TRUE(model_->Forward(chunks, &out).ok());
    for (size_t i = 0; i < ks.size(); ++i) {
      const int64_t rows = int64_t(chunks[i].tokens.size());
      mixed[i].insert(mixed[i].end(), out.logits.begin() + out.first_row[i] * v,
                      out.logits.begin() + (out.first_row[i] + rows) * v);
    }
  }

  // Each alone on a model loaded with its K.
  for (size_t i = 0; i < ks.size(); ++i) {
    ModelOptions o;
    o.experts_per_token = ks[i];
    auto m = Model::Load(*dir_, o);
    ASSERT_TRUE(m.ok()) << m.status();
    auto seq = (*m)->NewSequence();
    std::vector<float> alone;
    for (int step = 0; step < 2; ++step) {
      Model::Chunk ch{
          seq.get(),
          step == 0 ? std::span<const int32_t>(prompts[i]) : std::span<const int32_t>(&next[i], 1),
          true};
      Model::Output out;
      ASSERT_TRUE((*m)->Forward(std::span<const Model::Chunk>(&ch, 1), &out).ok());
      alone.insert(alone.end(), out.logits.begin(), out.logits.end());
    }
    EXPECT_TRUE(BitwiseEqual(mixed[i], alone)) << "K = " << ks[i];
  }
  // And K changes the result (the comparison above can fail).
  EXPECT_NE(std::vector<float>(mixed[0].begin(), mixed[0].begin() + v),
            std::vector<float>(mixed[2].begin(), mixed[2].begin() + v));

  auto seq = model_->NewSequence();
  Model::Chunk bad{seq.get(), std::span<const int32_t>(prompts[0]), false};
  bad.experts_per_token = 7;
  Model::Output out;
  const absl::Status st = model_->Forward(std::span<const Model::Chunk>(&bad, 1), &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(st.message()).find("experts_per_token 7 (must be 1..6"), std::string::npos)
      << st;
}

TEST_F(TinyModel, RejectsBadInput) {
  auto seq = model_->NewSequence();
  Model::Output out;
  const std::vector<int32_t> bad = {5, 129280};
  Model::Chunk ch{seq.get(), std::span<const int32_t>(bad), false};
  absl::Status st = model_->Forward(std::span<const Model::Chunk>(&ch, 1), &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("token 1 has id 129280"), std::string_view::npos) << st;
  EXPECT_EQ(seq->position(), 0);

  ModelOptions o;
  o.experts_per_token = 7;  // hash layers have only 6 tid2eid columns
  EXPECT_FALSE(Model::Load(*dir_, o).ok());
}

TEST(ModelLoad, MissingTensorIsNamed) {
  const std::string dir = (fs::temp_directory_path() / "flotilla_model_test_broken").string();
  auto config = PresetConfig("tiny");
  ASSERT_TRUE(config.ok());
  ASSERT_TRUE(WriteSyntheticCheckpoint(*config, SyntheticOptions{}, dir).ok());
  // Drop the shard that holds the MTP block: the index now names a missing file.
  std::string last;
  for (auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors" && e.path().string() > last) last = e.path();
  fs::remove(last);
  auto m = Model::Load(dir, ModelOptions{});
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find(fs::path(last).filename().string()), std::string_view::npos)
      << m.status();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace flotilla
