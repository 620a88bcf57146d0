// safetensors files (mmap, validated) and checkpoint directories (model.safetensors.index.json).
//
// Format: 8-byte little-endian header length N, N bytes of JSON header
// {"name": {"dtype": "...", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}},
// then the data section; offsets are relative to the data section.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace flotilla {

enum class DType { kBool, kU8, kI8, kI16, kI32, kI64, kF16, kBF16, kF32, kF64, kF8E4M3, kF8E8M0 };

// Official safetensors names: BOOL U8 I8 I16 I32 I64 F16 BF16 F32 F64 F8_E4M3 F8_E8M0.
absl::StatusOr<DType> ParseDType(std::string_view name);
std::string_view DTypeName(DType dtype);
size_t DTypeSize(DType dtype);
std::string ShapeString(const std::vector<int64_t>& shape);  // "[2048, 4096]"

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets inside the data section
  uint64_t end = 0;
  int64_t NumElements() const;
  uint64_t NumBytes() const { return end - begin; }
};

// A read-only, memory-mapped safetensors file. Open() validates: header length within the file,
// header is a JSON object, every dtype name known, shape x dtype size == byte range, every range
// inside the data section, no two ranges overlapping. Errors name the file and the tensor.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in data-offset order
  const TensorInfo* Find(std::string_view name) const;                  // nullptr if absent
  const uint8_t* Data(const TensorInfo& info) const { return data_ + info.begin; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  uint64_t file_size() const { return size_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  uint64_t size_ = 0;
  const uint8_t* data_ = nullptr;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> by_name_;
  std::map<std::string, std::string> metadata_;
};

// Writes one safetensors file. Tensors are laid out in the order added, 8-byte aligned header.
class SafetensorsWriter {
 public:
  // Copies nothing: `data` must stay valid until Write(). bytes must equal shape x dtype size.
  absl::Status Add(std::string name, DType dtype, std::vector<int64_t> shape, const void* data,
                   size_t bytes);
  void SetMetadata(std::string key, std::string value) { metadata_[key] = value; }
  absl::Status Write(const std::string& path) const;
  uint64_t total_bytes() const { return total_; }

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    const void* data;
    size_t bytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
  uint64_t total_ = 0;
};

// A tensor as the model reads it: where its bytes are and what they are.
struct TensorView {
  const TensorInfo* info = nullptr;
  const uint8_t* data = nullptr;
  const std::string* file = nullptr;  // path of the file holding it
  DType dtype() const { return info->dtype; }
  const std::vector<int64_t>& shape() const { return info->shape; }
  template <typename T>
  const T* as() const { return reinterpret_cast<const T*>(data); }
};

// Tensors by name (design.md §7a WeightSource). Implemented by checkpoint directories and, in
// tests, by in-memory sources.
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual absl::StatusOr<TensorView> Get(std::string_view name) const = 0;
  virtual bool Has(std::string_view name) const = 0;
  virtual std::vector<std::string> Names() const = 0;
  virtual std::string Describe() const = 0;  // e.g. the directory, for error messages

  // Get() plus a check of dtype and shape; the error names the tensor, its file, and what was
  // expected against what was found.
  absl::StatusOr<TensorView> GetChecked(std::string_view name, DType dtype,
                                        const std::vector<int64_t>& shape) const;
};

// A Hugging Face checkpoint directory: model.safetensors.index.json ("weight_map": name -> file)
// and its shards, or, without an index, every *.safetensors file in the directory. Open()
// validates every shard and that the index and the shards agree (a tensor listed in the index
// but absent from its file, or present in two files, is an error naming both).
class CheckpointDir : public WeightSource {
 public:
  static absl::StatusOr<std::unique_ptr<CheckpointDir>> Open(const std::string& dir);

  absl::StatusOr<TensorView> Get(std::string_view name) const override;
  bool Has(std::string_view name) const override;
  std::vector<std::string> Names() const override;  // sorted
  std::string Describe() const override { return dir_; }

  const std::string& dir() const { return dir_; }
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<size_t, const TensorInfo*>, std::less<>> index_;
};

// Index of the first element of a floating-point tensor that is NaN or infinite (F8_E4M3 has no
// infinity; F8_E8M0's 0xFF is NaN), or -1 when every value is finite or the dtype is an integer.
int64_t FirstNonFinite(const TensorView& view);

// The model name a checkpoint directory serves under: its last path component, ignoring trailing
// separators and "." ("/models/tiny/" -> "tiny"); the error names the path when there is none.
absl::StatusOr<std::string> ModelNameOfDir(const std::string& dir);

// Writes model.safetensors.index.json for shards already written: weight_map name -> file name,
// metadata.total_size = sum of tensor bytes.
absl::Status WriteSafetensorsIndex(const std::string& dir,
                                   const std::map<std::string, std::string>& weight_map,
                                   uint64_t total_size);

}  // namespace flotilla
