// JSON written the way Python's json.dumps(value, ensure_ascii=False) writes it (separators
// ", " and ": ", keys in their order, non-ASCII raw, Python float repr, NaN/Infinity), which the
// DeepSeek-V4 prompt format embeds byte for byte.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "nlohmann/json.hpp"

namespace flotilla {

// Parses JSON keeping key order and Python's dict semantics for repeated keys (first position,
// last value). Integers beyond 64 bits are kept exactly: such a number is stored as a binary
// node holding its decimal digits, which AppendPythonJson prints verbatim. Returns nullopt for
// invalid JSON (including NaN/Infinity literals and non-finite numbers).
std::optional<nlohmann::ordered_json> ParseJsonKeepingNumbers(std::string_view text);

void AppendPythonJson(const nlohmann::ordered_json& value, std::string* out);
inline std::string PythonJson(const nlohmann::ordered_json& value) {
  std::string out;
  AppendPythonJson(value, &out);
  return out;
}
void AppendPythonJsonString(std::string_view s, std::string* out);
// repr(float) in Python 3: shortest round-trip digits, exponent form below 1e-4 or from 1e16.
void AppendPythonFloat(double d, std::string* out);

// Python's truth value of a JSON value: null, false, 0, "", [] and {} are false.
bool PythonTruthy(const nlohmann::ordered_json& value);

}  // namespace flotilla
