// The step-plan wire format (coordinator -> workers) and the step-token format (back) from
// arbitrary bytes: parsed or refused with a status; what parses serializes back to a form that
// parses to the same thing.
#include <cstdint>
#include <string>

#include "common/step_plan.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flotilla;
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  if (auto plan = ParseStepPlan(bytes); plan.ok()) {
    const std::string once = SerializeStepPlan(*plan);
    auto again = ParseStepPlan(once);
    if (!again.ok()) fuzz::Violated("plan round trip parse", std::string(again.status().message()));
    if (SerializeStepPlan(*again) != once) fuzz::Violated("plan round trip", "");
  }
  if (auto tokens = ParseStepTokens(bytes); tokens.ok()) {
    const std::string once = SerializeStepTokens(*tokens);
    auto again = ParseStepTokens(once);
    if (!again.ok() || SerializeStepTokens(*again) != once) fuzz::Violated("tokens round trip", "");
  }
  return 0;
}
