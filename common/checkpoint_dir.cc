// CheckpointDir: a Hugging Face checkpoint directory (index + shards, or bare *.safetensors).
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "common/safetensors.h"
#include "nlohmann/json.hpp"

namespace flotilla {
namespace {

namespace fs = std::filesystem;

constexpr char kIndexName[] = "model.safetensors.index.json";

std::string Quoted(std::string_view s) {
  std::string q(1, '\'');
  q.append(s);
  q.push_back('\'');
  return q;
}

// A shard name from the index must name a file inside the directory.
bool IsPlainRelativePath(const std::string& name) {
  if (name.empty()) return false;
  const fs::path p(name);
  if (p.is_absolute()) return false;
  for (const fs::path& part : p) {
    if (part == "..") return false;
  }
  return true;
}

// weight_map of the index: tensor name -> shard file name.
absl::StatusOr<std::map<std::string, std::string>> ReadIndex(const std::string& index_path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(index_path));
  std::string duplicate;
  ASSIGN_OR_RETURN(
      nlohmann::json root,
      ParseJsonWithDuplicateCheck(text.data(), text.data() + text.size(), index_path, &duplicate));
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": top level is a ", root.type_name(), "; expected an object"));
  }
  if (!duplicate.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": key ", Quoted(duplicate), " appears twice"));
  }
  auto it = root.find("weight_map");
  if (it == root.end()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": no \"weight_map\" field"));
  }
  if (!it->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": weight_map is a ", it->type_name(), "; expected an object"));
  }
  std::map<std::string, std::string> weight_map;
  for (const auto& [name, file] : it->items()) {
    if (!file.is_string() || !IsPlainRelativePath(file.get<std::string>())) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": weight_map[", Quoted(name), "] is ", JsonSnippet(file),
                       "; expected the file name of a shard in the directory"));
    }
    weight_map[name] = file.get<std::string>();
  }
  return weight_map;
}

}  // namespace

int64_t FirstNonFinite(const TensorView& view) {
  const int64_t n = view.info->NumElements();
  auto scan = [&](auto type_tag, auto bad) -> int64_t {
    using T = decltype(type_tag);
    for (int64_t i = 0; i < n; ++i) {
      T v;
      std::memcpy(&v, view.data + i * int64_t(sizeof(T)), sizeof(T));
      if (bad(v)) return i;
    }
    return -1;
  };
  switch (view.dtype()) {
    case DType::kF32:
      return scan(uint32_t{}, [](uint32_t v) { return (v & 0x7f800000u) == 0x7f800000u; });
    case DType::kF64:
      return scan(uint64_t{}, [](uint64_t v) {
        return (v & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
      });
    case DType::kBF16:
      return scan(uint16_t{}, [](uint16_t v) { return (v & 0x7f80u) == 0x7f80u; });
    case DType::kF16:
      return scan(uint16_t{}, [](uint16_t v) { return (v & 0x7c00u) == 0x7c00u; });
    case DType::kF8E4M3:
      return scan(uint8_t{}, [](uint8_t v) { return (v & 0x7fu) == 0x7fu; });
    case DType::kF8E8M0:
      return scan(uint8_t{}, [](uint8_t v) { return v == 0xffu; });
    default:
      return -1;
  }
}

absl::StatusOr<std::string> ModelNameOfDir(const std::string& dir) {
  std::filesystem::path p = std::filesystem::path(dir).lexically_normal();
  while (!p.empty() && !p.has_filename() && p.has_relative_path()) p = p.parent_path();
  if (p.filename() == "." || p.filename() == "..") {
    p = std::filesystem::absolute(p).lexically_normal();
    while (!p.empty() && !p.has_filename() && p.has_relative_path()) p = p.parent_path();
  }
  const std::string name = p.filename().string();
  if (name.empty() || name == "." || name == "..") {
    return absl::InvalidArgumentError(
        absl::StrCat("--model ", dir, ": cannot name the model after this path (give its directory)"));
  }
  return name;
}

absl::StatusOr<std::unique_ptr<CheckpointDir>> CheckpointDir::Open(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat(dir, ": not a directory (checkpoint expected)"));
  }
  std::unique_ptr<CheckpointDir> ckpt(new CheckpointDir());
  ckpt->dir_ = dir;
  const std::string index_path = (fs::path(dir) / kIndexName).string();
  const bool has_index = fs::exists(index_path, ec);

  std::map<std::string, std::string> weight_map;
  std::vector<std::string> shard_names;
  if (has_index) {
    ASSIGN_OR_RETURN(weight_map, ReadIndex(index_path));
    std::set<std::string> unique;
    for (const auto& [name, file] : weight_map) {
      if (!unique.insert(file).second) continue;
      const std::string shard_path = (fs::path(dir) / file).string();
      if (!fs::is_regular_file(shard_path, ec)) {
        return absl::NotFoundError(absl::StrCat(index_path, ": tensor ", Quoted(name),
                                                " is mapped to shard ", Quoted(file), ", but ",
                                                shard_path, " does not exist"));
      }
    }
    shard_names.assign(unique.begin(), unique.end());
  } else {
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      const fs::path& p = it->path();
      if (p.extension() == ".safetensors" && it->is_regular_file(ec)) {
        shard_names.push_back(p.filename().string());
      }
    }
    if (ec) {
      return absl::PermissionDeniedError(
          absl::StrCat(dir, ": cannot list the directory: ", ec.message()));
    }
    if (shard_names.empty()) {
      return absl::NotFoundError(absl::StrCat(dir, ": no ", kIndexName,
                                              " and no *.safetensors files (checkpoint expected)"));
    }
    std::sort(shard_names.begin(), shard_names.end());
  }

  std::map<std::string, size_t> file_idx_of_shard;
  for (const std::string& shard : shard_names) {
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                     SafetensorsFile::Open((fs::path(dir) / shard).string()));
    file_idx_of_shard[shard] = ckpt->files_.size();
    ckpt->files_.push_back(std::move(file));
  }

  for (size_t file_idx = 0; file_idx < ckpt->files_.size(); ++file_idx) {
    const SafetensorsFile& file = *ckpt->files_[file_idx];
    for (const TensorInfo& info : file.tensors()) {
      auto [it, inserted] = ckpt->index_.try_emplace(info.name, file_idx, &info);
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat(
            dir, ": tensor ", Quoted(info.name),
            " is in two files: ", ckpt->files_[it->second.first]->path(), " and ", file.path()));
      }
    }
  }

  if (has_index) {
    for (const auto& [name, shard] : weight_map) {
      const SafetensorsFile& file = *ckpt->files_[file_idx_of_shard.at(shard)];
      if (file.Find(name) == nullptr) {
        auto found = ckpt->index_.find(name);
        const std::string elsewhere =
            found == ckpt->index_.end()
                ? std::string(" (nor does any other shard)")
                : absl::StrCat(" (it is in ", ckpt->files_[found->second.first]->path(), ")");
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": lists tensor ", Quoted(name),
                                                       " in ", Quoted(shard), ", but ", file.path(),
                                                       " does not contain it", elsewhere));
      }
    }
    for (const auto& [name, where] : ckpt->index_) {
      if (weight_map.count(name) == 0) {
        return absl::InvalidArgumentError(absl::StrCat(ckpt->files_[where.first]->path(),
                                                       ": holds tensor ", Quoted(name), ", which ",
                                                       index_path, " does not list"));
      }
    }
  }
  return ckpt;
}

absl::StatusOr<TensorView> CheckpointDir::Get(std::string_view name) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(absl::StrCat(dir_, ": no tensor ", Quoted(name), " in the ",
                                            index_.size(), " tensors of ", files_.size(),
                                            " safetensors file(s)"));
  }
  const SafetensorsFile& file = *files_[it->second.first];
  const TensorInfo* info = it->second.second;
  return TensorView{info, file.Data(*info), &file.path()};
}

bool CheckpointDir::Has(std::string_view name) const { return index_.find(name) != index_.end(); }

std::vector<std::string> CheckpointDir::Names() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& [name, where] : index_) names.push_back(name);
  return names;
}

absl::Status WriteSafetensorsIndex(const std::string& dir,
                                   const std::map<std::string, std::string>& weight_map,
                                   uint64_t total_size) {
  nlohmann::json root = {{"metadata", {{"total_size", total_size}}},
                         {"weight_map", nlohmann::json::object()}};
  for (const auto& [name, file] : weight_map) {
    if (!IsPlainRelativePath(file)) {
      return absl::InvalidArgumentError(
          absl::StrCat(dir, "/", kIndexName, ": tensor ", Quoted(name), " mapped to invalid file ",
                       Quoted(file), "; expected a file name inside the directory"));
    }
    root["weight_map"][name] = file;
  }
  const std::string text =
      root.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  return WriteFileAtomically((fs::path(dir) / kIndexName).string(), text);
}

}  // namespace flotilla
