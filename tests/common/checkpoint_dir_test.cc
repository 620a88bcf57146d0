// CheckpointDir (index + shards, or bare shards), WeightSource::GetChecked, WriteSafetensorsIndex.
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "common/model_tensors.h"
#include "common/safetensors.h"
#include "common/synthetic.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/common/test_util.h"

namespace flotilla {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::ReadBytes;
using testing::ScopedTempDir;
using testing::WriteBytes;

// Writes a shard of F32 tensors; tensor i of the shard holds the value `seed + i` everywhere.
void WriteShard(const std::string& path,
                const std::vector<std::pair<std::string, std::vector<int64_t>>>& tensors,
                float seed = 0) {
  std::vector<std::vector<float>> storage;
  SafetensorsWriter w;
  for (size_t i = 0; i < tensors.size(); ++i) {
    int64_t n = 1;
    for (int64_t d : tensors[i].second) n *= d;
    storage.emplace_back(size_t(n), seed + float(i));
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    ASSERT_TRUE(w.Add(tensors[i].first, DType::kF32, tensors[i].second, storage[i].data(),
                      storage[i].size() * sizeof(float))
                    .ok());
  }
  ASSERT_TRUE(w.Write(path).ok());
}

// Two shards and an index, the way HF writes sharded checkpoints.
void WriteShardedCheckpoint(const ScopedTempDir& dir) {
  WriteShard(dir.File("model-00001-of-00002.safetensors"),
             {{"embed.weight", {4, 2}}, {"layers.0.attn_norm.weight", {2}}}, 10);
  WriteShard(dir.File("model-00002-of-00002.safetensors"),
             {{"head.weight", {4, 2}}, {"norm.weight", {2}}}, 20);
  ASSERT_TRUE(
      WriteSafetensorsIndex(dir.path(),
                            {{"embed.weight", "model-00001-of-00002.safetensors"},
                             {"layers.0.attn_norm.weight", "model-00001-of-00002.safetensors"},
                             {"head.weight", "model-00002-of-00002.safetensors"},
                             {"norm.weight", "model-00002-of-00002.safetensors"}},
                            80)
          .ok());
}

TEST(CheckpointDir, OpensIndexedShards) {
  ScopedTempDir dir;
  WriteShardedCheckpoint(dir);
  absl::StatusOr<std::unique_ptr<CheckpointDir>> ckpt = CheckpointDir::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->files().size(), 2u);
  EXPECT_EQ((*ckpt)->Describe(), dir.path());
  EXPECT_THAT((*ckpt)->Names(), ElementsAre("embed.weight", "head.weight",
                                            "layers.0.attn_norm.weight", "norm.weight"));
  EXPECT_TRUE((*ckpt)->Has("norm.weight"));
  EXPECT_FALSE((*ckpt)->Has("norm"));

  absl::StatusOr<TensorView> head = (*ckpt)->GetChecked("head.weight", DType::kF32, {4, 2});
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(*head->file, dir.File("model-00002-of-00002.safetensors"));
  for (int i = 0; i < 8; ++i) EXPECT_EQ(head->as<float>()[i], 20.0f);
  absl::StatusOr<TensorView> norm = (*ckpt)->Get("layers.0.attn_norm.weight");
  ASSERT_TRUE(norm.ok());
  EXPECT_EQ(norm->as<float>()[1], 11.0f);
  EXPECT_EQ(norm->shape(), std::vector<int64_t>{2});
  EXPECT_EQ(norm->dtype(), DType::kF32);
}

TEST(CheckpointDir, GetCheckedNamesTensorFileAndExpectation) {
  ScopedTempDir dir;
  WriteShardedCheckpoint(dir);
  absl::StatusOr<std::unique_ptr<CheckpointDir>> ckpt = CheckpointDir::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();

  absl::Status missing = (*ckpt)->GetChecked("layers.7.ffn.gate.bias", DType::kF32, {256}).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.message()), HasSubstr("'layers.7.ffn.gate.bias'"));
  EXPECT_THAT(std::string(missing.message()), HasSubstr(dir.path()));

  absl::Status dtype = (*ckpt)->GetChecked("embed.weight", DType::kBF16, {4, 2}).status();
  EXPECT_FALSE(dtype.ok());
  EXPECT_THAT(std::string(dtype.message()), HasSubstr("'embed.weight'"));
  EXPECT_THAT(std::string(dtype.message()), HasSubstr("model-00001-of-00002.safetensors"));
  EXPECT_THAT(std::string(dtype.message()), HasSubstr("dtype F32; expected BF16"));

  absl::Status shape = (*ckpt)->GetChecked("embed.weight", DType::kF32, {2, 4}).status();
  EXPECT_FALSE(shape.ok());
  EXPECT_THAT(std::string(shape.message()), HasSubstr("'embed.weight'"));
  EXPECT_THAT(std::string(shape.message()), HasSubstr("model-00001-of-00002.safetensors"));
  EXPECT_THAT(std::string(shape.message()), HasSubstr("shape [4, 2]; expected [2, 4]"));
}

// An in-memory WeightSource (a view without a file): GetChecked names the source instead.
class MemorySource : public WeightSource {
 public:
  MemorySource() {
    info_.name = "x";
    info_.dtype = DType::kI64;
    info_.shape = {3};
    info_.end = 24;
  }
  absl::StatusOr<TensorView> Get(std::string_view name) const override {
    if (name != "x") return absl::NotFoundError("memory: no " + std::string(name));
    return TensorView{&info_, reinterpret_cast<const uint8_t*>(data_), nullptr};
  }
  bool Has(std::string_view name) const override { return name == "x"; }
  std::vector<std::string> Names() const override { return {"x"}; }
  std::string Describe() const override { return "memory-source"; }

 private:
  TensorInfo info_;
  int64_t data_[3] = {1, 2, 3};
};

TEST(WeightSource, GetCheckedOnSourceWithoutFiles) {
  MemorySource src;
  absl::StatusOr<TensorView> ok = src.GetChecked("x", DType::kI64, {3});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->as<int64_t>()[2], 3);
  absl::Status bad = src.GetChecked("x", DType::kI32, {3}).status();
  EXPECT_THAT(std::string(bad.message()), HasSubstr("memory-source"));
  EXPECT_THAT(std::string(bad.message()), HasSubstr("dtype I64; expected I32"));
  EXPECT_EQ(src.GetChecked("y", DType::kI64, {3}).status().code(), absl::StatusCode::kNotFound);
}

TEST(CheckpointDir, OpensAllShardsWithoutIndex) {
  ScopedTempDir dir;
  WriteShard(dir.File("b.safetensors"), {{"b", {1}}});
  WriteShard(dir.File("a.safetensors"), {{"a", {1}}, {"c", {3}}});
  WriteBytes(dir.File("config.json"), "{}");
  WriteBytes(dir.File("notes.safetensors.txt"), "not a shard");
  absl::StatusOr<std::unique_ptr<CheckpointDir>> ckpt = CheckpointDir::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_THAT((*ckpt)->Names(), ElementsAre("a", "b", "c"));
  ASSERT_EQ((*ckpt)->files().size(), 2u);
  EXPECT_EQ((*ckpt)->files()[0]->path(), dir.File("a.safetensors"));  // sorted by name
}

TEST(CheckpointDir, DirectoryErrors) {
  ScopedTempDir dir;
  absl::Status empty = CheckpointDir::Open(dir.path()).status();
  EXPECT_EQ(empty.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(empty.message()), HasSubstr(dir.path()));
  EXPECT_THAT(std::string(empty.message()), HasSubstr("safetensors"));

  absl::Status absent = CheckpointDir::Open(dir.File("nowhere")).status();
  EXPECT_EQ(absent.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(absent.message()), HasSubstr("nowhere"));

  WriteBytes(dir.File("plain"), "x");
  EXPECT_FALSE(CheckpointDir::Open(dir.File("plain")).ok());
}

TEST(CheckpointDir, TensorInTwoFilesIsAnError) {
  ScopedTempDir dir;
  WriteShard(dir.File("a.safetensors"), {{"w", {2}}, {"u", {1}}});
  WriteShard(dir.File("b.safetensors"), {{"v", {1}}, {"w", {2}}});
  absl::Status st = CheckpointDir::Open(dir.path()).status();
  EXPECT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.message()), HasSubstr("'w'"));
  EXPECT_THAT(std::string(st.message()), HasSubstr(dir.File("a.safetensors")));
  EXPECT_THAT(std::string(st.message()), HasSubstr(dir.File("b.safetensors")));

  // The same with an index that maps it to one of them.
  ASSERT_TRUE(
      WriteSafetensorsIndex(
          dir.path(), {{"w", "a.safetensors"}, {"u", "a.safetensors"}, {"v", "b.safetensors"}}, 0)
          .ok());
  st = CheckpointDir::Open(dir.path()).status();
  EXPECT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.message()), HasSubstr("'w'"));
  EXPECT_THAT(std::string(st.message()), HasSubstr(dir.File("a.safetensors")));
  EXPECT_THAT(std::string(st.message()), HasSubstr(dir.File("b.safetensors")));
}

TEST(CheckpointDir, IndexConsistencyErrors) {
  struct Case {
    const char* label;
    std::string index;  // contents of model.safetensors.index.json
    std::vector<std::string> must_mention;
  };
  const std::vector<Case> cases = {
      {"tensor missing in its shard",
       R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"}})",
       {"'b'", "s1.safetensors", "does not contain it", "s2.safetensors"}},
      {"tensor missing everywhere",
       R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors", "zz": "s2.safetensors"}})",
       {"'zz'", "s2.safetensors", "nor does any other shard"}},
      {"index names a missing file",
       R"({"weight_map": {"a": "s1.safetensors", "b": "s3.safetensors"}})",
       {"'b'", "s3.safetensors", "does not exist"}},
      {"shard tensor not in the index",
       R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})",
       {"'c'", "s2.safetensors", "does not list"}},
      {"not JSON", "{weight_map:", {"model.safetensors.index.json", "not valid JSON"}},
      {"not an object", "[]", {"model.safetensors.index.json", "expected an object"}},
      {"no weight_map", R"({"metadata": {}})", {"model.safetensors.index.json", "weight_map"}},
      {"weight_map not an object", R"({"weight_map": ["a"]})", {"weight_map", "array"}},
      {"file not a string", R"({"weight_map": {"a": 1}})", {"weight_map['a']", "1"}},
      {"absolute file", R"({"weight_map": {"a": "/etc/passwd"}})", {"weight_map['a']"}},
      {"file outside", R"({"weight_map": {"a": "../s1.safetensors"}})", {"weight_map['a']"}},
      {"duplicate key",
       R"({"weight_map": {"a": "s1.safetensors", "a": "s1.safetensors"}})",
       {"'weight_map.a'", "twice"}},
  };
  for (const Case& c : cases) {
    ScopedTempDir dir;
    WriteShard(dir.File("s1.safetensors"), {{"a", {1}}});
    WriteShard(dir.File("s2.safetensors"), {{"b", {1}}, {"c", {1}}});
    WriteBytes(dir.File("model.safetensors.index.json"), c.index);
    absl::Status st = CheckpointDir::Open(dir.path()).status();
    EXPECT_FALSE(st.ok()) << c.label;
    for (const std::string& s : c.must_mention) {
      EXPECT_THAT(std::string(st.message()), HasSubstr(s)) << c.label;
    }
  }
}

TEST(CheckpointDir, CorruptShardIsNamed) {
  ScopedTempDir dir;
  WriteShard(dir.File("good.safetensors"), {{"a", {1}}});
  WriteBytes(dir.File("broken.safetensors"), std::string("\xff\xff\xff\xff", 4));
  absl::Status st = CheckpointDir::Open(dir.path()).status();
  EXPECT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.message()), HasSubstr(dir.File("broken.safetensors")));
}

TEST(WriteSafetensorsIndex, WritesHfLayout) {
  ScopedTempDir dir;
  ASSERT_TRUE(
      WriteSafetensorsIndex(dir.path(), {{"b", "s2.safetensors"}, {"a", "s1.safetensors"}}, 1234)
          .ok());
  const std::string text = ReadBytes(dir.File("model.safetensors.index.json"));
  const nlohmann::json j = nlohmann::json::parse(text);
  EXPECT_EQ(j["metadata"]["total_size"].get<uint64_t>(), 1234u);
  EXPECT_EQ(j["weight_map"]["a"], "s1.safetensors");
  EXPECT_EQ(j["weight_map"]["b"], "s2.safetensors");
  EXPECT_THAT(text, HasSubstr("\n  \"weight_map\": {\n    \"a\": \"s1.safetensors\""));

  absl::Status bad = WriteSafetensorsIndex(dir.path(), {{"a", "../x.safetensors"}}, 0);
  EXPECT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.message()), HasSubstr("'a'"));
  EXPECT_FALSE(WriteSafetensorsIndex(dir.File("missing-dir"), {{"a", "x"}}, 0).ok());
}

// Issue 13, item 9: a trailing slash in --model gave an empty model name (and no name check).
TEST(ModelNameOfDir, LastComponentWhateverTheSlashes) {
  EXPECT_EQ(ModelNameOfDir("/models/tiny").value(), "tiny");
  EXPECT_EQ(ModelNameOfDir("/models/tiny/").value(), "tiny");
  EXPECT_EQ(ModelNameOfDir("/models/tiny//").value(), "tiny");
  EXPECT_EQ(ModelNameOfDir("models/tiny/./").value(), "tiny");
  EXPECT_EQ(ModelNameOfDir("tiny").value(), "tiny");
  const std::string cwd_name = std::filesystem::current_path().filename().string();
  EXPECT_EQ(ModelNameOfDir(".").value(), cwd_name);
  EXPECT_EQ(ModelNameOfDir("./").value(), cwd_name);
  const auto root = ModelNameOfDir("/");
  EXPECT_EQ(root.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(root.status().message()), HasSubstr("--model /: cannot name the model"));
}

// Issue 13, item 9: a config with fewer layers than the shards was served silently; the loaders
// now run the inventory check `flotilla inspect` prints.
TEST(CheckInventory, FewerLayersInTheConfigThanInTheShards) {
  ScopedTempDir dir;
  ModelConfig c = PresetConfig("tiny").value();
  SyntheticOptions opt;
  ASSERT_TRUE(WriteSyntheticCheckpoint(c, opt, dir.path()).ok());
  auto ckpt = CheckpointDir::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_TRUE(CheckInventory(c, **ckpt).ok()) << CheckInventory(c, **ckpt);

  // The same shards under a config with the last main layer dropped (MTP layer kept).
  ModelConfig fewer = c;
  ASSERT_EQ(c.num_hidden_layers, 4);
  fewer.num_hidden_layers = 3;
  fewer.compress_ratios.erase(fewer.compress_ratios.begin() + 3);
  ASSERT_TRUE(fewer.Validate().ok()) << fewer.Validate();
  const absl::Status st = CheckInventory(fewer, **ckpt);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  const std::string msg(st.message());
  EXPECT_THAT(msg, HasSubstr(dir.path() + ": the checkpoint does not match its config: "));
  EXPECT_THAT(msg, HasSubstr("tensors the config does not explain (layers.3."));
  EXPECT_THAT(msg, HasSubstr("num_hidden_layers (3) match the shards?"));

  // A config with more layers than the shards: the missing tensors are named.
  ModelConfig more = c;
  more.num_hidden_layers = 5;
  more.compress_ratios.insert(more.compress_ratios.begin() + 4, 4);
  ASSERT_TRUE(more.Validate().ok()) << more.Validate();
  EXPECT_THAT(std::string(CheckInventory(more, **ckpt).message()), HasSubstr("missing tensors ("));
}

}  // namespace
}  // namespace flotilla
