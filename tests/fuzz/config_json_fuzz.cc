// Arbitrary bytes as config.json: parsed or refused with a status; a config that parses and
// validates survives ToJson -> FromJson unchanged.
#include <cstdint>
#include <string>

#include "common/model_config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flotilla;
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto config = ModelConfig::FromJson(text, "fuzz/config.json");
  if (!config.ok()) return 0;
  if (!config->Validate().ok()) return 0;
  const std::string once = config->ToJson();
  auto again = ModelConfig::FromJson(once, "fuzz/config.json (round trip)");
  if (!again.ok()) fuzz::Violated("round trip parse", std::string(again.status().message()));
  if (again->ToJson() != once) fuzz::Violated("round trip", once);
  return 0;
}
