// flotilla-worker: one worker rank. Under mpirun it loads exactly its shard, checks that every
// rank runs the same checkpoint and config, and (for tests and benchmarks) runs a prompt itself:
//   mpirun -np W flotilla-worker --model DIR --tp T --prompt-ids 1,2,3 --max-new-tokens N
//       [--greedy | --temperature T --top-p P --top-k K --seed S] [--chunk C]
//       [--experts-per-token K] [--dump-logits FILE.npy] [--timeout-s S]
// The first DP group runs the prompt; the others take part in every MoE exchange with no tokens.
// With --serve (after the coordinator, in one MPMD job) the workers run the coordinator's steps
// and host their control service on --control-address (an address, an interface name or a
// subnet: comm/listen_address.h; default 127.0.0.1) at a free port, or at
// --control-port-base + world rank.
// Output (world rank 0) has the format of `flotilla run`.
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/npy.h"
#include "common/flags.h"
#include "common/version.h"
#include "comm/mpi_comm.h"
#include "worker/model.h"
#include "worker/sampler.h"
#include "common/step_plan.h"
#include "worker/control_host.h"
#include "comm/control_endpoints.h"
#include "comm/listen_address.h"
#include "worker/worker_load.h"
#include "sharding/capacity.h"

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
  std::string control_address = "127.0.0.1";
  int64_t control_port_base = 0;  // 0: a free port; else base + world rank
  uint64_t kv_memory = 0;          // 0: the model's default
  int64_t kv_page = 64 << 10;
  int64_t step_tokens = 0, step_seqs = 0;  // 0: the model's defaults
  int64_t exchange_rows = 0;                // 0: the model's default
};

absl::StatusOr<Args> ParseArgs(const std::vector<std::string>& argv, bool serve) {
  ASSIGN_OR_RETURN(cli::Flags f,
                   cli::Flags::Parse(argv,
                                     {"--model", "--tp", "--prompt-ids", "--max-new-tokens",
                                      "--temperature", "--top-p", "--top-k", "--seed", "--chunk",
                                      "--experts-per-token", "--dump-logits", "--timeout-s",
                                      "--control-address", "--control-port-base",
                                      "--prompt-ids-file", "--kv-memory", "--kv-page",
                                      "--step-tokens", "--step-seqs", "--exchange-rows"},
                                     {"--greedy", "--ignore-eos"}));
  Args a;
  ASSIGN_OR_RETURN(a.model, f.Required("--model"));
  if (!serve) {
    if (f.Has("--prompt-ids") == f.Has("--prompt-ids-file")) {
      return absl::InvalidArgumentError(
          "give exactly one of --prompt-ids 1,2,3 or --prompt-ids-file FILE");
    }
    ASSIGN_OR_RETURN(a.prompt, f.Has("--prompt-ids")
                                   ? cli::ParseIdList("--prompt-ids", f.Get("--prompt-ids"))
                                   : cli::ReadIdFile("--prompt-ids-file", f.Get("--prompt-ids-file")));
  }
  ASSIGN_OR_RETURN(a.tp, f.Int("--tp", 1));
  if (f.Has("--kv-memory")) {
    ASSIGN_OR_RETURN(a.kv_memory, ParseByteSize(f.Get("--kv-memory")));
    if (a.kv_memory == 0) return absl::InvalidArgumentError("--kv-memory must be above 0");
  }
  ASSIGN_OR_RETURN(const uint64_t kv_page, ParseByteSize(f.Get("--kv-page", "64KiB")));
  if (kv_page > uint64_t(1) << 40) return absl::InvalidArgumentError("--kv-page is over 1 TiB");
  a.kv_page = int64_t(kv_page);
  ASSIGN_OR_RETURN(a.step_tokens, f.Int("--step-tokens", 0));
  ASSIGN_OR_RETURN(a.step_seqs, f.Int("--step-seqs", 0));
  if (a.step_tokens < 0 || a.step_seqs < 0) {
    return absl::InvalidArgumentError("--step-tokens and --step-seqs must be at least 1");
  }
  ASSIGN_OR_RETURN(a.exchange_rows, f.Int("--exchange-rows", 0));
  if (a.exchange_rows < 0) return absl::InvalidArgumentError("--exchange-rows must be at least 1");
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
  a.control_address = f.Get("--control-address", "127.0.0.1");
  ASSIGN_OR_RETURN(a.control_port_base, f.Int("--control-port-base", 0));
  if (a.control_port_base < 0 || a.control_port_base > 65535 - 4096) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--control-port-base must be 0 (a free port) or at most ", 65535 - 4096, ", got ",
        a.control_port_base));
  }
  if (a.tp < 1) return absl::InvalidArgumentError("--tp must be at least 1");
  if (a.max_new < 1) return absl::InvalidArgumentError("--max-new-tokens must be at least 1");
  if (a.chunk < 0) return absl::InvalidArgumentError("--chunk must be positive");
  if (!(a.sampling.temperature >= 0.0f)) {
    return absl::InvalidArgumentError("--temperature must be >= 0 (0 is greedy)");
  }
  if (a.sampling.temperature == 0.0f) a.sampling.greedy = true;
  return a;
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
  // --chunk 0: the whole prompt, in steps of at most the workspace's tokens per step.
  const size_t chunk = a.chunk > 0 ? size_t(a.chunk)
                                   : std::min(a.prompt.size(),
                                              size_t(model.workspace_layout().limits.tokens));
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

std::atomic<bool> g_drain_requested{false};  // set by SIGTERM / SIGINT when serving
void OnTerminate(int) { g_drain_requested.store(true); }

// Serving: world rank 0 is the coordinator; it broadcasts a step plan each step (or an idle
// heartbeat), the workers run it, and each DP group's first TP rank returns the tokens it
// sampled. Every wait is bounded by the communicator's deadline.
absl::Status Serve(Comm& world, LoadedWorker& w, WorkerControlHost& host) {
  Model& model = *w.model;
  const int64_t vocab = model.config().vocab_size;
  struct Seq {
    std::unique_ptr<SequenceState> state;
    Sampler sampler;
    bool logprobs = false;
    int top_logprobs = 0;
    int64_t experts_per_token = 0;  // 0: the model's
  };
  std::map<uint64_t, Seq> seqs;
  const bool leader = w.tp_rank == 0;
  for (int64_t step = 0;; ++step) {
    uint64_t size = 0;
    RETURN_IF_ERROR(world.Broadcast(&size, sizeof(size), 0, {"step plan size", step}));
    std::string bytes(size, '\0');
    RETURN_IF_ERROR(world.Broadcast(bytes.data(), size, 0, {"step plan", step}));
    ASSIGN_OR_RETURN(StepPlan plan, ParseStepPlan(bytes));
    if (plan.shutdown) {
      host.SetState(WorkerState::kStopping, "the coordinator ended the job");
      return absl::OkStatus();
    }
    for (uint64_t id : plan.release) seqs.erase(id);

    std::vector<Model::Chunk> chunks;
    std::vector<const StepSequence*> mine;
    for (const StepSequence& s : plan.seqs) {
      if (s.dp_group != w.dp_group) continue;
      auto it = seqs.find(s.seq_id);
      if (s.start_pos == 0 && it == seqs.end()) {
        SamplingParams sp;
        sp.greedy = s.sampling.greedy != 0;
        sp.temperature = s.sampling.temperature;
        sp.top_p = s.sampling.top_p;
        sp.top_k = s.sampling.top_k;
        sp.seed = s.sampling.seed;
        it = seqs.emplace(s.seq_id,
                          Seq{model.NewSequence(), Sampler(sp), s.sampling.logprobs != 0,
                              int(s.sampling.top_logprobs), int64_t(s.sampling.experts_per_token)})
                 .first;
      }
      if (it == seqs.end() || it->second.state->position() != s.start_pos) {
        return absl::InternalError(absl::StrCat(
            "step ", plan.step, ": sequence ", s.seq_id, " at position ",
            it == seqs.end() ? -1 : it->second.state->position(), ", the plan says ", s.start_pos));
      }
      chunks.push_back({it->second.state.get(), std::span<const int32_t>(s.tokens), false,
                        it->second.experts_per_token});
      mine.push_back(&s);
    }
    Model::Output out;
    int64_t tokens = 0;
    if (!plan.seqs.empty()) {  // (an empty plan is the idle heartbeat)
      RETURN_IF_ERROR(model.Forward(chunks, &out));
      for (const auto& ch : chunks) tokens += int64_t(ch.tokens.size());
    }
    host.OnStep(tokens, int64_t(seqs.size()), model.kv_pool().pages_used());
    if (g_drain_requested.exchange(false)) {
      std::fprintf(stderr, "worker (world rank %d): signal received; asking the coordinator to drain\n",
                   world.rank());
      (void)host.Drain();
    }
    std::vector<StepToken> sampled;
    if (leader && !plan.seqs.empty()) {
      std::vector<size_t> rows;  // index into `mine` of each sequence that samples
      for (size_t i = 0; i < mine.size(); ++i)
        if (mine[i]->sample) rows.push_back(i);
      sampled.resize(rows.size());
      // Each sequence has its own sampler, so they sample in parallel.
#pragma omp parallel for schedule(dynamic, 1)
      for (size_t r = 0; r < rows.size(); ++r) {
        const size_t i = rows[r];
        Seq& s = seqs.at(mine[i]->seq_id);
        const float* row = out.logits.data() + out.first_row[i] * vocab;
        StepToken t{mine[i]->seq_id, s.sampler.Sample(row, vocab)};
        if (s.logprobs) {
          TokenLogprobs lp = LogProbs(row, vocab, t.token, s.top_logprobs);
          t.has_logprob = true;
          t.logprob = lp.logprob;
          t.top = std::move(lp.top);
        }
        sampled[r] = std::move(t);
      }
    }
    // Results go to the coordinator (world rank 0) only: their size, with this worker's control
    // wishes (drain, shutdown) in the top byte, then the tokens.
    const std::string payload =
        leader && !plan.seqs.empty() ? SerializeStepTokens(sampled) : std::string();
    std::vector<size_t> send(world.size(), 0), recv(world.size(), 0);
    send[0] = payload.size();
    std::vector<uint64_t> counts(world.size(), 0), none(world.size(), 0);
    counts[0] = uint64_t(payload.size()) | (uint64_t(host.TakeWishes()) << kWishShift);
    std::vector<size_t> eight(world.size(), 8);
    RETURN_IF_ERROR(world.AllToAllV(counts.data(), eight, none.data(), eight,
                                    {"step result sizes", step}));
    RETURN_IF_ERROR(world.AllToAllV(payload.data(), send, nullptr, recv, {"step results", step}));
  }
}

constexpr char kUsage[] =
    "usage: mpirun -np W flotilla-worker --model DIR (--prompt-ids 1,2,3 | --prompt-ids-file F)\n"
    "           [--tp T] [--max-new-tokens N] [--greedy | --temperature T --top-p P --top-k K\n"
    "           --seed S] [--ignore-eos] [--chunk C] [--experts-per-token K]\n"
    "           [--dump-logits FILE.npy] [--timeout-s S] [--kv-memory SIZE] [--kv-page SIZE]\n"
    "       flotilla-worker --serve --model DIR [--tp T] [--timeout-s S] [--kv-memory SIZE]\n"
    "           [--kv-page SIZE] [--step-tokens N] [--step-seqs N] [--exchange-rows N]\n"
    "           [--control-address A] [--control-port-base P]   (started by launch/flotilla-serve)\n"
    "  One worker rank: loads exactly its shard and checks that every rank runs the same\n"
    "  checkpoint. Without --serve the first DP group runs the prompt and world rank 0 prints\n"
    "  what `flotilla run` prints. --timeout-s bounds every wait on another rank (default 60).\n"
    "  --control-address: where the WorkerControl service listens (default 127.0.0.1): an\n"
    "  address, an interface name (ib0) or a subnet (10.0.0.0/16: this host's address in it).\n"
    "  --control-port-base P: listen on P + world rank instead of a free port.\n"
    "  --step-tokens N, --step-seqs N: the most tokens and sequences one step runs (default\n"
    "    8192, 256); the step workspace is sized from them at start\n"
    "  --exchange-rows N: rows of its token slice a rank sends per expert-exchange round (default\n"
    "    128; a step's MoE runs in rounds, the exchange buffers are sized from N)\n"
    "  --kv-memory SIZE: the KV pool, reserved at start (default: a quarter of the memory the\n"
    "  host has available); --kv-page SIZE: its page size (default 64KiB).\n";

int Main(int argc, char** argv) {
  std::vector<std::string> argv_list(argv + 1, argv + argc);
  // Before MPI: a help or version request starts nothing.
  for (const std::string& a : argv_list) {
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (a == "--version") {
      std::fputs(VersionLine("flotilla-worker").c_str(), stdout);
      return 0;
    }
  }
  const bool serve = std::find(argv_list.begin(), argv_list.end(), "--serve") != argv_list.end();
  if (serve) argv_list.erase(std::find(argv_list.begin(), argv_list.end(), "--serve"));
  auto args = ParseArgs(argv_list, serve);
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
  // When serving, world rank 0 is the coordinator: the workers are the other ranks.
  std::unique_ptr<Comm> worker_group;
  Comm* workers = world.get();
  if (serve) {
    auto g = world->Split(1, rank, {"worker group split", -1});
    if (!g.ok()) return fail(g.status());
    worker_group = std::move(*g);
    workers = worker_group.get();
  }
  const int wrank = workers->rank();
  if (workers->size() % args->tp != 0) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("--tp ", args->tp, " does not divide the ", workers->size(), " workers")));
  }
  auto tp_comm = workers->Split(int(wrank / args->tp), int(wrank % args->tp), {"tp group split", -1});
  if (!tp_comm.ok()) return fail(tp_comm.status());

  if (serve) {
    // SIGTERM or SIGINT to a worker drains the whole job: the next step result asks the
    // coordinator to (Serve() passes the wish on).
    std::signal(SIGTERM, OnTerminate);
    std::signal(SIGINT, OnTerminate);
  }
  WorkerLoadOptions lo{args->model,    args->tp,          args->experts_per_token,
                       args->kv_memory, args->kv_page,     args->step_tokens,
                       args->step_seqs,  args->exchange_rows};
  const auto load_start = Clock::now();
  absl::StatusOr<LoadedWorker> loaded = LoadWorker(lo, *workers, tp_comm->get());
  if (loaded.ok()) {
    std::fprintf(stderr, "worker %d (dp %lld, tp %lld): loaded %.1f MiB of weights in %.2f s\n",
                 wrank, (long long)loaded->dp_group, (long long)loaded->tp_rank,
                 double(loaded->bytes_read) / (1 << 20), Seconds(load_start, Clock::now()));
  }
  absl::Status st = AgreeOnLoad(*world, loaded.status(), loaded.ok() ? loaded->fingerprint : 0);
  // Every rank got the same message, naming the failing rank: world rank 0 prints it (the
  // coordinator when serving), so it appears once; the others wait until it has, so that their
  // exit does not end the job before the message is out.
  if (!st.ok()) {
    if (rank == 0) fail(st);
    (void)world->Barrier({"load failure reported", -1});
    return 1;
  }
  if (st.ok()) {
    if (serve) {
      // Host the control service and tell the coordinator where it is.
      WorkerControlHost host(int32_t(rank), int32_t(loaded->dp_group), int32_t(loaded->tp_rank));
      host.SetLoad(loaded->bytes_read, loaded->planned_bytes, 0, true, "");
      const KvPool& pool = loaded->model->kv_pool();
      host.SetKvPool(pool.num_pages(),
                     uint64_t(pool.num_pages()) * uint64_t(pool.layout().page_bytes));
      // --control-address may name an interface or a subnet (one value for every node).
      absl::StatusOr<std::unique_ptr<WorkerControlServer>> control =
          absl::FailedPreconditionError("not started");
      absl::StatusOr<std::string> address = ResolveListenAddress(args->control_address);
      if (address.ok()) {
        WorkerControlServerOptions co;
        co.address = *address;
        if (args->control_port_base > 0) co.port = int(args->control_port_base) + rank;
        control = WorkerControlServer::Start(co, &host);
      } else {
        control = absl::Status(address.status().code(),
                               absl::StrCat("--control-address: ", address.status().message()));
      }
      // Every rank takes part in the exchange, even one whose service did not start.
      st = ExchangeControlEndpoints(*world, control.ok() ? (*control)->endpoint() : "").status();
      if (st.ok()) st = control.status();
      if (st.ok()) {
        host.SetState(WorkerState::kReady);
        st = Serve(*world, *loaded, host);
      }
      if (control.ok()) {
        (void)(*control)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
      }
    } else {
      st = Generate(*args, *world, *loaded->model);
    }
  }
  if (!st.ok()) {
    // ABORTED: another rank ended the job and printed why; repeating it says nothing new.
    if (absl::IsAborted(st)) return 1;
    // A failure inside a step leaves peers waiting: end the whole job with this message.
    if (loaded.ok() && !absl::IsFailedPrecondition(st)) world->Abort(st);
    return fail(st);
  }
  loaded = absl::CancelledError("done");
  tp_comm->reset();
  worker_group.reset();
  world.reset();
  st = MpiComm::FinalizeProcess();
  return st.ok() ? 0 : fail(st);
}

}  // namespace
}  // namespace flotilla

int main(int argc, char** argv) { return flotilla::Main(argc, argv); }
