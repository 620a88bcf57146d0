// safetensors reader (mmap + validation) and writer. Checkpoint directories: checkpoint_dir.cc.
#include "common/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/json_util.h"
#include "nlohmann/json.hpp"

namespace flotilla {
namespace {

// Same bound as the reference Rust implementation: a header beyond this is corrupt, not big.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DTypeEntry {
  DType dtype;
  std::string_view name;
  size_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {DType::kBool, "BOOL", 1}, {DType::kU8, "U8", 1},          {DType::kI8, "I8", 1},
    {DType::kI16, "I16", 2},   {DType::kI32, "I32", 4},        {DType::kI64, "I64", 8},
    {DType::kF16, "F16", 2},   {DType::kBF16, "BF16", 2},      {DType::kF32, "F32", 4},
    {DType::kF64, "F64", 8},   {DType::kF8E4M3, "F8_E4M3", 1}, {DType::kF8E8M0, "F8_E8M0", 1},
};

std::string KnownDTypeNames() {
  std::string out;
  for (const DTypeEntry& e : kDTypes)
    absl::StrAppend(&out, out.empty() ? "" : " ", std::string(e.name));
  return out;
}

// shape x element size in bytes, or false on overflow.
bool ShapeBytes(const std::vector<int64_t>& shape, size_t elem_size, uint64_t* bytes) {
  uint64_t n = elem_size;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, uint64_t(d), &n)) return false;
  }
  *bytes = n;
  return true;
}

std::string Quoted(std::string_view s) {
  std::string q(1, '\'');
  q.append(s);
  q.push_back('\'');
  return q;
}

// Debian's Abseil has its own string_view type: StrCat takes std::string, not std::string_view.
std::string DTypeStr(DType dtype) { return std::string(DTypeName(dtype)); }

// Parses one tensor entry of the header into `info` (name already set).
absl::Status ParseTensorEntry(const std::string& path, const nlohmann::json& entry,
                              TensorInfo* info) {
  const std::string where = absl::StrCat(path, ": tensor ", Quoted(info->name));
  if (!entry.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": header entry is a ", entry.type_name(), "; expected an object"));
  }
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(field)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": header entry has no \"", field, "\" field"));
    }
  }
  const nlohmann::json& dtype = entry["dtype"];
  if (!dtype.is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": dtype is a ", dtype.type_name(), "; expected a string"));
  }
  absl::StatusOr<DType> parsed = ParseDType(dtype.get_ref<const std::string&>());
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", parsed.status().message()));
  }
  info->dtype = *parsed;

  const nlohmann::json& shape = entry["shape"];
  if (!shape.is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": shape is a ", shape.type_name(), "; expected an array of integers"));
  }
  for (size_t i = 0; i < shape.size(); ++i) {
    const nlohmann::json& d = shape[i];
    if (!d.is_number_unsigned() ||
        d.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": shape[", i, "] is ", JsonSnippet(d),
                                                     "; expected a non-negative integer"));
    }
    info->shape.push_back(int64_t(d.get<uint64_t>()));
  }

  const nlohmann::json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": data_offsets is ", JsonSnippet(offsets),
                     "; expected [begin, end] with non-negative integers"));
  }
  info->begin = offsets[0].get<uint64_t>();
  info->end = offsets[1].get<uint64_t>();
  if (info->begin > info->end) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": data_offsets [", info->begin, ", ", info->end, "] has begin > end"));
  }
  uint64_t expected = 0;
  if (!ShapeBytes(info->shape, DTypeSize(info->dtype), &expected)) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": shape ", ShapeString(info->shape),
                                                   " x ", DTypeStr(info->dtype),
                                                   " overflows 64 bits"));
  }
  if (expected != info->NumBytes()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": shape ", ShapeString(info->shape), " x ", DTypeStr(info->dtype),
                     " (", DTypeSize(info->dtype), " B) needs ", expected, " bytes; data_offsets [",
                     info->begin, ", ", info->end, "] hold ", info->NumBytes()));
  }
  return absl::OkStatus();
}

absl::Status ParseMetadata(const std::string& path, const nlohmann::json& meta,
                           std::map<std::string, std::string>* out) {
  if (!meta.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": __metadata__ is a ", meta.type_name(),
                                                   "; expected an object of strings"));
  }
  for (const auto& [key, value] : meta.items()) {
    if (!value.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": __metadata__[", Quoted(key), "] is ",
                                                     JsonSnippet(value), "; expected a string"));
    }
    (*out)[key] = value.get<std::string>();
  }
  return absl::OkStatus();
}

std::string ErrnoText() { return std::strerror(errno); }

}  // namespace

absl::StatusOr<DType> ParseDType(std::string_view name) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.name == name) return e.dtype;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype ", Quoted(name), "; expected one of ", KnownDTypeNames()));
}

std::string_view DTypeName(DType dtype) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.dtype == dtype) return e.name;
  }
  return "?";
}

size_t DTypeSize(DType dtype) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.dtype == dtype) return e.size;
  }
  return 0;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

int64_t TensorInfo::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---- SafetensorsFile ----

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) munmap(map_, size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;

  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const std::string why = ErrnoText();
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": ", why));
    return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open: ", why));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const std::string why = ErrnoText();
    ::close(fd);
    return absl::InternalError(absl::StrCat(path, ": fstat: ", why));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  file->size_ = uint64_t(st.st_size);
  if (file->size_ < 8) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": file is ", file->size_,
                     " bytes; expected at least 8 (the header length) for a safetensors file"));
  }
  void* map = mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
  const std::string mmap_why = map == MAP_FAILED ? ErrnoText() : "";
  ::close(fd);
  if (map == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat(path, ": mmap of ", file->size_, " bytes failed: ", mmap_why));
  }
  file->map_ = map;
  const uint8_t* bytes = static_cast<const uint8_t*>(map);

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len < 2 || header_len > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header length is ", header_len, "; expected 2..", kMaxHeaderBytes,
                     " (the first 8 bytes are not a safetensors header length)"));
  }
  if (header_len > file->size_ - 8) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header length is ", header_len,
                                                   " bytes but only ", file->size_ - 8,
                                                   " bytes follow it (truncated file?)"));
  }
  const char* header_begin = reinterpret_cast<const char*>(bytes + 8);
  file->data_ = bytes + 8 + header_len;
  const uint64_t data_size = file->size_ - 8 - header_len;

  std::string duplicate;
  absl::StatusOr<nlohmann::json> header = ParseJsonWithDuplicateCheck(
      header_begin, header_begin + header_len, path + ": header", &duplicate);
  if (!header.ok()) return header.status();
  if (!header->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header is a JSON ", header->type_name(), "; expected an object"));
  }
  if (!duplicate.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header key ", Quoted(duplicate), " appears twice"));
  }

  for (const auto& [name, entry] : header->items()) {
    if (name == "__metadata__") {
      RETURN_IF_ERROR(ParseMetadata(path, entry, &file->metadata_));
      continue;
    }
    TensorInfo info;
    info.name = name;
    RETURN_IF_ERROR(ParseTensorEntry(path, entry, &info));
    if (info.end > data_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor ", Quoted(name), ": data_offsets [", info.begin, ", ", info.end,
          "] reach beyond the data section of ", data_size, " bytes (truncated file?)"));
    }
    file->tensors_.push_back(std::move(info));
  }

  std::sort(file->tensors_.begin(), file->tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  // Sorted by begin: a non-empty range overlaps an earlier one iff it starts before the largest
  // end seen so far.
  const TensorInfo* furthest = nullptr;
  for (const TensorInfo& t : file->tensors_) {
    if (t.begin == t.end) continue;
    if (furthest != nullptr && t.begin < furthest->end) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensors ", Quoted(furthest->name), " [", furthest->begin, ", ", furthest->end,
          ") and ", Quoted(t.name), " [", t.begin, ", ", t.end, ") overlap in the data section"));
    }
    if (furthest == nullptr || t.end > furthest->end) furthest = &t;
  }
  for (size_t i = 0; i < file->tensors_.size(); ++i) {
    file->by_name_.emplace(file->tensors_[i].name, i);
  }
  return file;
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

// ---- SafetensorsWriter ----

absl::Status SafetensorsWriter::Add(std::string name, DType dtype, std::vector<int64_t> shape,
                                    const void* data, size_t bytes) {
  if (name.empty() || name == "__metadata__") {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors writer: invalid tensor name ", Quoted(name)));
  }
  for (const Entry& e : entries_) {
    if (e.name == name) {
      return absl::AlreadyExistsError(
          absl::StrCat("safetensors writer: tensor ", Quoted(name), " added twice"));
    }
  }
  uint64_t expected = 0;
  if (!ShapeBytes(shape, DTypeSize(dtype), &expected)) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors writer: tensor ", Quoted(name),
                                                   ": invalid shape ", ShapeString(shape)));
  }
  if (expected != bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors writer: tensor ", Quoted(name), ": shape ", ShapeString(shape),
                     " x ", DTypeStr(dtype), " is ", expected, " bytes; got ", bytes));
  }
  if (bytes > 0 && data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors writer: tensor ", Quoted(name), ": null data"));
  }
  entries_.push_back(Entry{std::move(name), dtype, std::move(shape), data, bytes});
  total_ += bytes;
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Write(const std::string& path) const {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata_) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const Entry& e : entries_) {
    header[e.name] = {{"dtype", std::string(DTypeName(e.dtype))},
                      {"shape", e.shape},
                      {"data_offsets", {offset, offset + e.bytes}}};
    offset += e.bytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& ex) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": cannot encode the header (a name is not UTF-8?): ", ex.what()));
  }
  // Pad with spaces (valid JSON whitespace) so the data section starts 8-byte aligned.
  text.append((8 - text.size() % 8) % 8, ' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(text.size()) >> (8 * i));

  // Write to a temporary name and rename, so a crash never leaves a truncated file behind.
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) {
    return absl::PermissionDeniedError(absl::StrCat(tmp, ": cannot create: ", ErrnoText()));
  }
  bool ok =
      std::fwrite(len, 1, 8, f) == 8 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
  for (const Entry& e : entries_) {
    if (!ok) break;
    if (e.bytes > 0) ok = std::fwrite(e.data, 1, e.bytes, f) == e.bytes;
  }
  const std::string why = ok ? "" : ErrnoText();
  if (std::fclose(f) != 0 && ok) {
    ok = false;
  }
  if (!ok) {
    std::remove(tmp.c_str());
    return absl::DataLossError(absl::StrCat(tmp, ": write failed: ", why));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string rename_why = ErrnoText();
    std::remove(tmp.c_str());
    return absl::PermissionDeniedError(
        absl::StrCat(path, ": cannot rename ", tmp, " into place: ", rename_why));
  }
  return absl::OkStatus();
}

// ---- WeightSource ----

absl::StatusOr<TensorView> WeightSource::GetChecked(std::string_view name, DType dtype,
                                                    const std::vector<int64_t>& shape) const {
  ASSIGN_OR_RETURN(TensorView view, Get(name));
  const std::string& where = view.file != nullptr ? *view.file : Describe();
  if (view.dtype() != dtype) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": tensor ", Quoted(name), " has dtype ",
                                                   DTypeStr(view.dtype()), "; expected ",
                                                   DTypeStr(dtype)));
  }
  if (view.shape() != shape) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": tensor ", Quoted(name), " has shape ",
                                                   ShapeString(view.shape()), "; expected ",
                                                   ShapeString(shape)));
  }
  return view;
}

}  // namespace flotilla
