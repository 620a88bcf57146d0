// The JSON reader of chat requests (Python's rules: exact big integers, repeated keys) on
// arbitrary bytes: parsed or refused; what parses prints (PythonJson) to text that parses to
// the same printed form.
#include <cstdint>
#include <string>

#include "tests/fuzz/fuzz_util.h"
#include "tokenizer/python_json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flotilla;
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto value = ParseJsonKeepingNumbers(text);
  if (!value.has_value()) return 0;
  const std::string once = PythonJson(*value);
  auto again = ParseJsonKeepingNumbers(once);
  if (!again.has_value()) fuzz::Violated("PythonJson output does not parse", once);
  if (PythonJson(*again) != once) fuzz::Violated("PythonJson round trip", once);
  return 0;
}
