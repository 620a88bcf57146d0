// Arbitrary bytes as model.safetensors.index.json beside one valid shard: CheckpointDir::Open
// accepts or refuses with a status; an accepted index maps only to the shard's tensors.
#include <cstdint>
#include <filesystem>
#include <vector>

#include "common/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flotilla;
  static const std::string dir = [] {
    const std::string d = fuzz::ScratchDir() + "/ckpt";
    std::filesystem::create_directories(d);
    std::vector<float> a(6, 1.0f), b(2, 2.0f);
    SafetensorsWriter w;
    (void)w.Add("a.weight", DType::kF32, {2, 3}, a.data(), a.size() * sizeof(float));
    (void)w.Add("b.weight", DType::kF32, {2}, b.data(), b.size() * sizeof(float));
    (void)w.Write(d + "/model-00001-of-00001.safetensors");
    return d;
  }();
  fuzz::WriteFile(dir + "/model.safetensors.index.json", data, size);
  auto ckpt = CheckpointDir::Open(dir);
  if (!ckpt.ok()) return 0;
  for (const std::string& name : (*ckpt)->Names()) {
    if (name != "a.weight" && name != "b.weight") fuzz::Violated("unknown tensor", name);
    if (!(*ckpt)->Get(name).ok()) fuzz::Violated("Get", name);
  }
  return 0;
}
