#include "common/json_util.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"

namespace flotilla {

absl::StatusOr<nlohmann::json> ParseJsonWithDuplicateCheck(const char* begin, const char* end,
                                                           const std::string& what,
                                                           std::string* duplicate) {
  // Per open object: the keys seen so far and the latest one (the path to nested keys).
  struct OpenObject {
    std::set<std::string> keys;
    std::string last_key;
  };
  std::vector<OpenObject> open_objects;
  std::string first_duplicate;
  auto callback = [&](int /*depth*/, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    switch (event) {
      case nlohmann::json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case nlohmann::json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case nlohmann::json::parse_event_t::key: {
        if (open_objects.empty() || !parsed.is_string()) break;
        OpenObject& obj = open_objects.back();
        obj.last_key = parsed.get<std::string>();
        if (!obj.keys.insert(obj.last_key).second && first_duplicate.empty()) {
          for (const OpenObject& o : open_objects) {
            absl::StrAppend(&first_duplicate, first_duplicate.empty() ? "" : ".", o.last_key);
          }
        }
        break;
      }
      default:
        break;
    }
    return true;
  };
  try {
    nlohmann::json value = nlohmann::json::parse(begin, end, callback);
    if (duplicate != nullptr) *duplicate = first_duplicate;
    return value;
  } catch (const nlohmann::json::exception& ex) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": not valid JSON: ", ex.what()));
  }
}

std::string JsonSnippet(const nlohmann::json& value) {
  std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  constexpr size_t kMax = 64;
  if (text.size() > kMax) text = text.substr(0, kMax - 3) + "...";
  return text;
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    const std::string why = std::strerror(errno);
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": ", why));
    return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open: ", why));
  }
  std::string text;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) text.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) return absl::DataLossError(absl::StrCat(path, ": read failed"));
  return text;
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) {
    return absl::PermissionDeniedError(
        absl::StrCat(tmp, ": cannot create: ", std::strerror(errno)));
  }
  bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  const std::string why = ok ? "" : std::strerror(errno);
  if (std::fclose(f) != 0) ok = false;
  if (!ok) {
    std::remove(tmp.c_str());
    return absl::DataLossError(absl::StrCat(tmp, ": write failed: ", why));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why_rename = std::strerror(errno);
    std::remove(tmp.c_str());
    return absl::PermissionDeniedError(
        absl::StrCat(path, ": cannot rename into place: ", why_rename));
  }
  return absl::OkStatus();
}

}  // namespace flotilla
