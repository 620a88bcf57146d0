#include "worker/sharded_source.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace flotilla {

absl::StatusOr<std::unique_ptr<ShardedSource>> ShardedSource::Read(const CheckpointDir& checkpoint,
                                                                   const RankPlan& rank) {
  auto src = std::unique_ptr<ShardedSource>(new ShardedSource());
  src->describe_ = absl::StrCat(checkpoint.dir(), " (rank ", rank.rank, " shard)");
  for (const TensorSlice& slice : rank.tensors) {
    ASSIGN_OR_RETURN(TensorView view, checkpoint.GetChecked(slice.name, slice.dtype, slice.shape));
    const ByteRun& run = slice.run;
    if (run.end() > view.info->NumBytes()) {
      return absl::InternalError(absl::StrCat("shard plan of rank ", rank.rank, " reads past ",
                                              slice.name, " (", ByteRunString(run), ")"));
    }
    Entry e;
    e.info.name = slice.name;
    e.info.dtype = slice.dtype;
    e.info.shape = slice.local_shape;
    e.info.begin = 0;
    e.info.end = run.bytes();
    e.bytes.resize(run.bytes());
    for (uint64_t i = 0; i < run.count; ++i) {
      std::memcpy(e.bytes.data() + i * run.length, view.data + run.offset + i * run.stride,
                  run.length);
    }
    e.file = view.file;
    src->bytes_read_ += run.bytes();
    src->tensors_.emplace(slice.name, std::move(e));
  }
  return src;
}

absl::StatusOr<TensorView> ShardedSource::Get(std::string_view name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat("tensor ", std::string(name), " is not in ", describe_));
  }
  TensorView v;
  v.info = &it->second.info;
  v.data = it->second.bytes.data();
  v.file = it->second.file;
  return v;
}

bool ShardedSource::Has(std::string_view name) const { return tensors_.count(name) > 0; }

std::vector<std::string> ShardedSource::Names() const {
  std::vector<std::string> names;
  for (const auto& [name, e] : tensors_) names.push_back(name);
  return names;
}

}  // namespace flotilla
