// Internal JSON and file helpers shared by common/*.cc (not part of the public API).
#pragma once

#include <string>

#include "common/status.h"
#include "nlohmann/json.hpp"

namespace flotilla {

// Parses [begin, end) as JSON without throwing. `what` prefixes error messages (e.g.
// "model/config.json"). When an object holds the same key twice, the first such key is stored
// in *duplicate (if non-null) as a dotted path from the top ("rope_scaling.factor") and parsing
// still succeeds (the last value wins).
absl::StatusOr<nlohmann::json> ParseJsonWithDuplicateCheck(const char* begin, const char* end,
                                                           const std::string& what,
                                                           std::string* duplicate);

// A short, printable rendering of a JSON value for error messages (at most ~64 characters).
std::string JsonSnippet(const nlohmann::json& value);

// Reads a whole file into a string; errors name the path.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// Writes `bytes` to `path` via a temporary file and rename; errors name the path.
absl::Status WriteFileAtomically(const std::string& path, const std::string& bytes);

}  // namespace flotilla
