// Minimal command-line flags for the tools: --name VALUE and boolean --name.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/status.h"

namespace flotilla::cli {

class Flags {
 public:
  // `with_value`: flags that take a value; `booleans`: flags that do not. Anything else, or a
  // value flag at the end of the line, is an error naming the flag.
  static absl::StatusOr<Flags> Parse(const std::vector<std::string>& args,
                                     const std::set<std::string>& with_value,
                                     const std::set<std::string>& booleans);
  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  std::string Get(const std::string& name, const std::string& fallback = "") const;
  absl::StatusOr<std::string> Required(const std::string& name) const;
  absl::StatusOr<int64_t> Int(const std::string& name, int64_t fallback) const;
  absl::StatusOr<double> Double(const std::string& name, double fallback) const;

 private:
  std::map<std::string, std::string> values_;
};

// "1,2,3" -> {1, 2, 3}; the error names the flag and the bad item.
absl::StatusOr<std::vector<int32_t>> ParseIdList(const std::string& flag, const std::string& s);

// The ids in file `path`, separated by commas and/or white space; the error names the flag, the
// file and the bad item (for prompts too long for a command line).
absl::StatusOr<std::vector<int32_t>> ReadIdFile(const std::string& flag, const std::string& path);

// Prints "flotilla CMD: message" to stderr and returns the exit code 1.
int Fail(const std::string& command, const absl::Status& status);

}  // namespace flotilla::cli
