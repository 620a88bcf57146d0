// The weights of one worker rank: exactly the byte runs its shard plan names, read from the
// memory-mapped checkpoint into memory the rank owns (design.md §1: a worker loads its shard).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/safetensors.h"
#include "sharding/shard_plan.h"

namespace flotilla {

class ShardedSource : public WeightSource {
 public:
  // Checks every planned tensor against the checkpoint (dtype and full shape; errors name the
  // tensor and its file) and copies the rank's runs. Tensors are served with their local shapes.
  static absl::StatusOr<std::unique_ptr<ShardedSource>> Read(const CheckpointDir& checkpoint,
                                                             const RankPlan& rank);

  absl::StatusOr<TensorView> Get(std::string_view name) const override;
  bool Has(std::string_view name) const override;
  std::vector<std::string> Names() const override;
  std::string Describe() const override { return describe_; }

  // Bytes copied out of the checkpoint (equals the plan's weight_bytes).
  uint64_t bytes_read() const { return bytes_read_; }

 private:
  struct Entry {
    TensorInfo info;  // local shape; offsets into `bytes`
    std::vector<uint8_t> bytes;
    const std::string* file = nullptr;
  };
  std::string describe_;
  std::map<std::string, Entry, std::less<>> tensors_;
  uint64_t bytes_read_ = 0;
};

}  // namespace flotilla
