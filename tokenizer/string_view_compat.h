// Debian's Abseil has its own absl::string_view rather than an alias of std::string_view, so
// std::string_view values are converted where they meet Abseil (StrCat, hash-map lookups).
#pragma once

#include <string_view>

#include "absl/strings/string_view.h"

namespace flotilla {

inline absl::string_view AbslView(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}
inline std::string_view StdView(absl::string_view s) {
  return std::string_view(s.data(), s.size());
}

}  // namespace flotilla
