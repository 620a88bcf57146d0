// flotilla-worker: one worker rank. Under mpirun it loads exactly its shard, checks that every
// rank runs the same checkpoint and config, and (for tests and benchmarks) runs a prompt itself:
//   mpirun -np W flotilla-worker --model DIR --tp T --prompt-ids 1,2,3 --max-new-tokens N
//       [--greedy | --temperature T --top-p P --top-k K --seed S] [--chunk C]
//       [--experts-per-token K] [--dump-logits FILE.npy] [--timeout-s S]
// The first DP group runs the prompt; the others take part in every MoE exchange with no tokens.
// Output (world rank 0) has the format of `flotilla run`.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/npy.h"
#include "tools/flags.h"
#include "worker/comm/mpi_comm.h"
#include "worker/model.h"
#include "worker/sampler.h"
#include "worker/sharded_source.h"

namespace flotilla {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

struct Args {
  std::string model;
  int64_t tp = 1;
  std::vector<int32_t> prompt;
  int64_t max_new = 16;
  int64_t chunk = 0;
  int64_t experts_per_token = 0;
  SamplingParams sampling;
  std::string dump;
  bool ignore_eos = false;
  double timeout_s = 60;
};

absl::StatusOr<Args> ParseArgs(const std::vector<std::string>& argv) {
  ASSIGN_OR_RETURN(cli::Flags f,
                   cli::Flags::Parse(argv,
                                     {"--model", "--tp", "--prompt-ids", "--max-new-tokens",
                                      "--temperature", "--top-p", "--top-k", "--seed", "--chunk",
                                      "--experts-per-token", "--dump-logits", "--timeout-s"},
                                     {"--greedy", "--ignore-eos"}));
  Args a;
  ASSIGN_OR_RETURN(a.model, f.Required("--model"));
  ASSIGN_OR_RETURN(std::string ids, f.Required("--prompt-ids"));
  ASSIGN_OR_RETURN(a.prompt, cli::ParseIdList("--prompt-ids", ids));
  ASSIGN_OR_RETURN(a.tp, f.Int("--tp", 1));
  ASSIGN_OR_RETURN(a.max_new, f.Int("--max-new-tokens", 16));
  ASSIGN_OR_RETURN(a.chunk, f.Int("--chunk", 0));
  ASSIGN_OR_RETURN(a.experts_per_token, f.Int("--experts-per-token", 0));
  ASSIGN_OR_RETURN(double t, f.Double("--temperature", 1.0));
  ASSIGN_OR_RETURN(double p, f.Double("--top-p", 1.0));
  ASSIGN_OR_RETURN(a.sampling.top_k, f.Int("--top-k", 0));
  ASSIGN_OR_RETURN(int64_t seed, f.Int("--seed", 0));
  ASSIGN_OR_RETURN(a.timeout_s, f.Double("--timeout-s", 60));
  a.sampling.greedy = f.Has("--greedy") || !f.Has("--temperature");
  a.sampling.temperature = float(t);
  a.sampling.top_p = float(p);
  a.sampling.seed = uint64_t(seed);
  a.dump = f.Get("--dump-logits");
  a.ignore_eos = f.Has("--ignore-eos");
  if (a.tp < 1) return absl::InvalidArgumentError("--tp must be at least 1");
  if (a.max_new < 1) return absl::InvalidArgumentError("--max-new-tokens must be at least 1");
  if (a.chunk < 0) return absl::InvalidArgumentError("--chunk must be positive");
  if (!a.sampling.greedy && !(a.sampling.temperature > 0.0f)) {
    return absl::InvalidArgumentError("--temperature must be > 0");
  }
  return a;
}

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

// The state one rank reaches at load.
struct Loaded {
  ModelConfig config;
  std::unique_ptr<Model> model;
  uint64_t fingerprint = 0;
  uint64_t bytes_read = 0, planned_bytes = 0;
};

absl::StatusOr<Loaded> Load(const Args& a, Comm& world, Comm* tp_comm) {
  Loaded l;
  const std::string config_path = (std::filesystem::path(a.model) / "config.json").string();
  ASSIGN_OR_RETURN(l.config, ModelConfig::FromFile(config_path));
  RETURN_IF_ERROR(l.config.Validate());
  ASSIGN_OR_RETURN(std::unique_ptr<CheckpointDir> ckpt, CheckpointDir::Open(a.model));
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
  ASSIGN_OR_RETURN(l.model, Model::FromSource(l.config, std::shared_ptr<WeightSource>(std::move(src)),
                                              options, par, sel));
  return l;
}

// Every rank reports its load result; all ranks fail together, with the failing rank's message.
struct LoadReport {
  int32_t ok;
  int32_t pad;
  uint64_t fingerprint;
  char message[496];
};

absl::Status AgreeOnLoad(Comm& world, const absl::StatusOr<Loaded>& loaded) {
  LoadReport mine{};
  mine.ok = loaded.ok();
  mine.fingerprint = loaded.ok() ? loaded->fingerprint : 0;
  if (!loaded.ok()) {
    std::snprintf(mine.message, sizeof(mine.message), "%s",
                  std::string(loaded.status().message()).c_str());
  }
  std::vector<LoadReport> all(world.size());
  RETURN_IF_ERROR(world.AllGather(&mine, sizeof(mine), all.data(), {"load report", -1}));
  for (int r = 0; r < world.size(); ++r) {
    if (!all[r].ok) {
      return absl::FailedPreconditionError(
          absl::StrCat("rank ", r, " could not load: ", all[r].message));
    }
  }
  for (int r = 1; r < world.size(); ++r) {
    if (all[r].fingerprint != all[0].fingerprint) {
      return absl::FailedPreconditionError(absl::StrCat(
          "rank ", r, " loaded a different checkpoint or config than rank 0 (fingerprint ",
          absl::Hex(all[r].fingerprint), " vs ", absl::Hex(all[0].fingerprint),
          "); every rank must be started with the same --model"));
    }
  }
  return absl::OkStatus();
}

absl::Status Generate(const Args& a, Comm& world, Model& model) {
  const ModelConfig& c = model.config();
  const int64_t vocab = c.vocab_size;
  const bool leader = world.rank() == 0;
  const bool runs_prompt = world.rank() / a.tp == 0;  // DP group 0
  auto seq = model.NewSequence();
  Sampler sampler(a.sampling);
  Model::Output out;
  std::vector<int32_t> generated;
  std::vector<float> dump;

  auto step = [&](std::span<const int32_t> tokens) -> absl::Status {
    Model::Chunk ch{seq.get(), tokens, false};
    return model.Forward(runs_prompt ? std::span<const Model::Chunk>(&ch, 1)
                                     : std::span<const Model::Chunk>(),
                         &out);
  };
  const auto t0 = Clock::now();
  const size_t chunk = a.chunk > 0 ? size_t(a.chunk) : a.prompt.size();
  for (size_t s = 0; s < a.prompt.size(); s += chunk) {
    RETURN_IF_ERROR(step(std::span<const int32_t>(a.prompt).subspan(
        s, std::min(chunk, a.prompt.size() - s))));
  }
  const auto t1 = Clock::now();
  for (int64_t i = 0;; ++i) {
    int32_t msg[2] = {0, 0};  // token, stop
    if (leader) {
      msg[0] = sampler.Sample(out.logits.data(), vocab);
      if (!a.dump.empty()) dump.insert(dump.end(), out.logits.begin(), out.logits.begin() + vocab);
      msg[1] = (msg[0] == c.eos_token_id && !a.ignore_eos) || i + 1 == a.max_new;
    }
    RETURN_IF_ERROR(world.Broadcast(msg, sizeof(msg), 0, {"sampled token broadcast", i}));
    generated.push_back(msg[0]);
    if (msg[1]) break;
    RETURN_IF_ERROR(step(std::span<const int32_t>(&msg[0], 1)));
  }
  const auto t2 = Clock::now();
  if (!leader) return absl::OkStatus();
  std::printf("generated:");
  for (int32_t t : generated) std::printf(" %d", t);
  std::printf("\n");
  const double pre = Seconds(t0, t1), dec = Seconds(t1, t2);
  std::printf("prefill: %zu tokens in %.3f s (%.1f tokens/s)\n", a.prompt.size(), pre,
              double(a.prompt.size()) / pre);
  if (generated.size() > 1) {
    std::printf("decode: %zu tokens in %.3f s (%.2f tokens/s)\n", generated.size() - 1, dec,
                double(generated.size() - 1) / dec);
  }
  std::fflush(stdout);
  if (!a.dump.empty()) {
    RETURN_IF_ERROR(WriteNpyF32(a.dump, {int64_t(generated.size()), vocab}, dump.data()));
  }
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  auto args = ParseArgs(std::vector<std::string>(argv + 1, argv + argc));
  CommOptions options;
  if (args.ok()) options.timeout = absl::Seconds(args->timeout_s);
  auto world_or = MpiComm::World(options, &argc, &argv);
  if (!world_or.ok()) {
    std::fprintf(stderr, "flotilla-worker: %s\n", std::string(world_or.status().message()).c_str());
    return 1;
  }
  std::unique_ptr<MpiComm> world = std::move(*world_or);
  const int rank = world->rank();
  auto fail = [&](const absl::Status& st) {
    std::fprintf(stderr, "flotilla-worker rank %d: %s\n", rank, std::string(st.message()).c_str());
    std::fflush(stderr);
    return 1;
  };
  // Arguments are the same on every rank (one command line); a bad one fails every rank alike.
  if (!args.ok()) return fail(args.status());
  if (world->size() % args->tp != 0) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("--tp ", args->tp, " does not divide the ", world->size(), " workers")));
  }
  auto tp_comm = world->Split(int(rank / args->tp), int(rank % args->tp), {"tp group split", -1});
  if (!tp_comm.ok()) return fail(tp_comm.status());

  absl::StatusOr<Loaded> loaded = Load(*args, *world, tp_comm->get());
  if (loaded.ok() && loaded->bytes_read != loaded->planned_bytes) {
    loaded = absl::InternalError(absl::StrCat("read ", loaded->bytes_read, " bytes; the plan says ",
                                              loaded->planned_bytes));
  }
  absl::Status st = AgreeOnLoad(*world, loaded);
  if (st.ok()) {
    if (rank == 0) {
      std::fprintf(stderr, "loaded %s on %d ranks (tp %lld): rank 0 read %llu bytes\n",
                   args->model.c_str(), world->size(), (long long)args->tp,
                   (unsigned long long)loaded->bytes_read);
    }
    st = Generate(*args, *world, *loaded->model);
  }
  if (!st.ok()) {
    // A failure inside a step leaves peers waiting: end the whole job with this message.
    if (loaded.ok() && !absl::IsFailedPrecondition(st)) world->Abort(st);
    return fail(st);
  }
  loaded = absl::CancelledError("done");
  tp_comm->reset();
  world.reset();
  st = MpiComm::FinalizeProcess();
  return st.ok() ? 0 : fail(st);
}

}  // namespace
}  // namespace flotilla

int main(int argc, char** argv) { return flotilla::Main(argc, argv); }
