#include "worker/worker_load.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/model_tensors.h"
#include "worker/sharded_source.h"

namespace flotilla {
namespace {

uint64_t Fnv1a(uint64_t h, const std::string& s) {
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ull;
  return h;
}

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Identifies the config, the index, every shard's size and a sample of its contents (the first
// bytes of up to 32 tensors spread over the file): ranks given different checkpoints or configs
// disagree on it.
uint64_t Fingerprint(const CheckpointDir& ckpt) {
  namespace fs = std::filesystem;
  uint64_t h = 0xcbf29ce484222325ull;
  h = Fnv1a(h, ReadAll((fs::path(ckpt.dir()) / "config.json").string()));
  h = Fnv1a(h, ReadAll((fs::path(ckpt.dir()) / "model.safetensors.index.json").string()));
  for (const auto& f : ckpt.files()) {
    h = Fnv1a(h, fs::path(f->path()).filename().string());
    h = Fnv1a(h, std::to_string(f->file_size()));
    const auto& ts = f->tensors();
    const size_t step = std::max<size_t>(1, ts.size() / 32);
    for (size_t i = 0; i < ts.size(); i += step) {
      const auto* p = reinterpret_cast<const char*>(f->Data(ts[i]));
      h = Fnv1a(h, std::string(p, std::min<uint64_t>(64, ts[i].NumBytes())));
    }
  }
  return h;
}

}  // namespace

absl::StatusOr<LoadedWorker> LoadWorker(const WorkerLoadOptions& a, Comm& world, Comm* tp_comm) {
  LoadedWorker l;
  const std::string config_path = (std::filesystem::path(a.model_dir) / "config.json").string();
  ASSIGN_OR_RETURN(l.config, ModelConfig::FromFile(config_path));
  RETURN_IF_ERROR(l.config.Validate());
  ASSIGN_OR_RETURN(std::unique_ptr<CheckpointDir> ckpt, CheckpointDir::Open(a.model_dir));
  RETURN_IF_ERROR(CheckInventory(l.config, *ckpt));
  l.fingerprint = Fingerprint(*ckpt);
  Layout layout;
  layout.num_workers = world.size();
  layout.tp = a.tp;
  ASSIGN_OR_RETURN(ShardPlan plan,
                   ShardPlan::Make(l.config, layout, DetectExpertFormat(l.config, *ckpt)));
  const RankPlan rp = plan.Rank(world.rank());
  ASSIGN_OR_RETURN(std::unique_ptr<ShardedSource> src, ShardedSource::Read(*ckpt, rp));
  l.bytes_read = src->bytes_read();
  l.planned_bytes = rp.weight_bytes;
  l.dp_group = rp.dp_group;
  l.tp_rank = rp.tp_rank;
  if (l.bytes_read != l.planned_bytes) {
    return absl::InternalError(absl::StrCat("read ", l.bytes_read, " bytes; the plan says ",
                                            l.planned_bytes));
  }

  Parallel par;
  par.tp = tp_comm;
  par.ep = &world;
  par.tp_size = a.tp;
  par.tp_rank = rp.tp_rank;
  par.heads = rp.heads;
  par.o_groups = rp.o_groups;
  par.index_heads = rp.index_heads;
  par.vocab = rp.vocab;
  par.placement = plan.placement();
  WeightSelection sel;
  sel.experts = rp.experts;
  for (const TensorSlice& s : rp.tensors) sel.tensors.push_back({s.name, s.dtype, s.local_shape});
  ModelOptions options;
  options.experts_per_token = a.experts_per_token;
  options.kv_memory_bytes = a.kv_memory_bytes;
  options.kv_page_bytes = a.kv_page_bytes;
  if (a.tokens_per_step > 0) options.tokens_per_step = a.tokens_per_step;
  if (a.sequences_per_step > 0) options.sequences_per_step = a.sequences_per_step;
  if (a.exchange_rows > 0) options.exchange_rows = a.exchange_rows;
  options.sequences_per_step = std::min(options.sequences_per_step, options.tokens_per_step);
  ASSIGN_OR_RETURN(l.model, Model::FromSource(l.config, std::shared_ptr<WeightSource>(std::move(src)),
                                              options, par, sel));
  return l;
}

}  // namespace flotilla
