#include "common/flags.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace flotilla::cli {

absl::StatusOr<Flags> Flags::Parse(const std::vector<std::string>& args,
                                   const std::set<std::string>& with_value,
                                   const std::set<std::string>& booleans) {
  Flags f;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (booleans.count(a)) {
      f.values_[a] = "true";
    } else if (with_value.count(a)) {
      if (i + 1 >= args.size()) return absl::InvalidArgumentError(a + " needs a value");
      f.values_[a] = args[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown argument '", a, "'"));
    }
  }
  return f;
}

std::string Flags::Get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

absl::StatusOr<std::string> Flags::Required(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return absl::InvalidArgumentError(name + " is required");
  return it->second;
}

absl::StatusOr<int64_t> Flags::Int(const std::string& name, int64_t fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  int64_t v;
  if (!absl::SimpleAtoi(it->second, &v)) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": '", it->second, "' is not an integer"));
  }
  return v;
}

absl::StatusOr<double> Flags::Double(const std::string& name, double fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  double v;
  if (!absl::SimpleAtod(it->second, &v)) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": '", it->second, "' is not a number"));
  }
  return v;
}

absl::StatusOr<std::vector<int32_t>> ParseIdList(const std::string& flag, const std::string& s) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(s, ',')) {
    int32_t v;
    if (!absl::SimpleAtoi(part, &v)) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, ": '", part, "' is not a token id (expected e.g. 1,2,3)"));
    }
    ids.push_back(v);
  }
  return ids;
}

absl::StatusOr<std::vector<int32_t>> ReadIdFile(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(flag, ": cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  const std::string text = std::move(ss).str();
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(text, absl::ByAnyChar(", \t\r\n"), absl::SkipEmpty())) {
    int32_t v;
    if (!absl::SimpleAtoi(part, &v)) {
      return absl::InvalidArgumentError(absl::StrCat(flag, ": ", path, ": item ", ids.size(), " '",
                                                     part.substr(0, 40),
                                                     "' is not a token id (expected e.g. 1,2,3)"));
    }
    ids.push_back(v);
  }
  if (ids.empty()) return absl::InvalidArgumentError(absl::StrCat(flag, ": ", path, " holds no ids"));
  return ids;
}

int Fail(const std::string& command, const absl::Status& status) {
  std::fprintf(stderr, "flotilla %s: %s\n", command.c_str(), std::string(status.message()).c_str());
  return 1;
}

}  // namespace flotilla::cli
