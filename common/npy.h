// NumPy .npy writer/reader for float32 arrays (format version 1.0, little-endian '<f4', C order).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace flotilla {

absl::Status WriteNpyF32(const std::string& path, const std::vector<int64_t>& shape,
                         const float* data);

struct NpyF32 {
  std::vector<int64_t> shape;
  std::vector<float> data;
};
absl::StatusOr<NpyF32> ReadNpyF32(const std::string& path);

}  // namespace flotilla
