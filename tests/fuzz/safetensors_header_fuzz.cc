// Arbitrary bytes as a safetensors file: Open() validates or refuses with a status, never
// crashes; what it accepts lies inside the file and every tensor can be found and scanned.
#include <cstdint>

#include "common/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flotilla;
  const std::string path = fuzz::ScratchDir() + "/input.safetensors";
  fuzz::WriteFile(path, data, size);
  auto file = SafetensorsFile::Open(path);
  if (!file.ok()) return 0;
  for (const TensorInfo& t : (*file)->tensors()) {
    if (t.end > (*file)->file_size() || t.begin > t.end) fuzz::Violated("range", t.name);
    if ((*file)->Find(t.name) != &t) fuzz::Violated("Find", t.name);
    TensorView view{&t, (*file)->Data(t), &(*file)->path()};
    (void)FirstNonFinite(view);
  }
  return 0;
}
