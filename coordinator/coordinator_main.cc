// flotilla-coordinator: MPI rank 0 of the serving job (design.md §1). Never links CUDA.
// gRPC front door for clients, tokenizer and chat encoding, admission and continuous batching;
// each step it broadcasts a plan to the workers over MPI and streams their tokens back.
// Flags: kUsage below (`flotilla-coordinator --help`, docs/serving-api.md).
// SIGTERM (or the Drain RPC): stop admitting, finish what is in flight, shut the workers down,
// exit 0.
#include <malloc.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "coordinator/engine.h"
#include "coordinator/front_door.h"
#include "coordinator/grpc_server.h"
#include "coordinator/host_memory.h"
#include "coordinator/kv_pages.h"
#include "coordinator/liveness.h"
#include "coordinator/http_server.h"
#include "coordinator/metrics.h"
#include "coordinator/scheduler.h"
#include "tokenizer/tokenizer.h"
#include "comm/worker_control.h"
#include "sharding/capacity.h"
#include "common/flags.h"
#include "common/safetensors.h"
#include "common/version.h"
#include "comm/control_endpoints.h"
#include "comm/load_report.h"
#include "comm/mpi_comm.h"

namespace flotilla {
namespace {

constexpr char kUsage[] =
    "usage: flotilla-coordinator --model DIR [--tp T] [--address A] [--port P] [--port-file F]\n"
    "           [--kv-pool SIZE] [--kv-page SIZE] [--step-token-budget N] [--max-queued N]\n"
    "           [--max-running N] [--timeout-s S] [--liveness-s S] [--http-port H]\n"
    "           [--http-port-file F] [--api-key K] [--tls-cert PEM --tls-key PEM]\n"
    "           [--insecure-public] [--prompt-memory SIZE] [--prompt-memory-wait-s S]\n"
    "           [--upload-idle-s S] [--write-stall-s S]\n"
    "  MPI rank 0 of a serving job: start it with launch/flotilla-serve, which passes the flags\n"
    "  after its `--` here.\n"
    "  --tp T                  tensor-parallel ranks per DP group (default 1)\n"
    "  --address A, --port P   where gRPC listens (default 127.0.0.1:50051; port 0: any free)\n"
    "  --port-file F           write the port there once serving\n"
    "  --kv-pool SIZE          KV pool of each worker rank (each holds its DP group's KV),\n"
    "                          e.g. 2GiB (default 1GiB); launch/flotilla-serve passes it on\n"
    "  --kv-page SIZE          KV page size, the workers' too (default 64KiB)\n"
    "  --step-token-budget N   prompt and decode tokens per step (default 2048)\n"
    "  --max-queued N          requests waiting for KV before RESOURCE_EXHAUSTED (default 256)\n"
    "  --max-running N         sequences per DP group (default 64)\n"
    "  --timeout-s S           bound on every wait for a worker over MPI (default 60)\n"
    "  --liveness-s S          a worker silent this long turns health NOT_SERVING and admission\n"
    "                          refuses with UNAVAILABLE naming it, until it answers (default 5)\n"
    "  --http-port H           OpenAI-compatible HTTP API on --address (docs/http-api.md;\n"
    "                          default 8000; 0: any free; -1: none)\n"
    "  --http-port-file F      write the HTTP port there once serving\n"
    "  --api-key K             required as a Bearer token on HTTP and as gRPC metadata\n"
    "                          (or FLOTILLA_API_KEY)\n"
    "  --tls-cert PEM, --tls-key PEM   TLS for both front doors\n"
    "  --insecure-public       allow an address beyond loopback without an API key\n"
    "  --prompt-memory SIZE    budget for prompts being received and tokenized, over all\n"
    "                          requests of both front doors (default 1GiB); a request that\n"
    "                          cannot get its share within --prompt-memory-wait-s (default 2)\n"
    "                          is refused with RESOURCE_EXHAUSTED (HTTP 429)\n"
    "  --upload-idle-s S       a Generate stream that sends no prompt message for S seconds\n"
    "                          ends with DEADLINE_EXCEEDED (default 30)\n"
    "  --write-stall-s S       a client (gRPC or HTTP) that reads no response for S seconds\n"
    "                          is cut off and its requests cancelled (default 30)\n"
    "  SIGTERM or SIGINT (or the Drain RPC): stop admitting, finish in-flight requests, stop\n"
    "  every rank, exit 0.\n";

Engine* g_engine = nullptr;
void OnTerminate(int) {
  if (g_engine != nullptr) g_engine->RequestDrain();
}

struct Options {
  std::string model;
  int64_t tp = 1;
  ServingOptions serving;
  std::string port_file;
  SchedulerOptions scheduler;
  double timeout_s = 60;
  LivenessOptions liveness;
  HttpOptions http;
  bool http_enabled = true;
  std::string http_port_file;
  int64_t prompt_memory_bytes = int64_t{1} << 30;
  std::chrono::milliseconds prompt_memory_wait{2000};
};

bool IsLoopback(const std::string& address) {
  return address == "127.0.0.1" || address == "::1" || address == "localhost" ||
         address.rfind("127.", 0) == 0;
}

absl::StatusOr<Options> ParseOptions(const std::vector<std::string>& argv) {
  ASSIGN_OR_RETURN(cli::Flags f,
                   cli::Flags::Parse(argv,
                                     {"--model", "--tp", "--address", "--port", "--port-file",
                                      "--kv-pool", "--kv-page", "--step-token-budget",
                                      "--max-queued", "--max-running", "--timeout-s",
                                      "--liveness-s", "--http-port", "--http-port-file",
                                      "--api-key", "--tls-cert", "--tls-key", "--prompt-memory",
                                      "--prompt-memory-wait-s", "--upload-idle-s",
                                      "--write-stall-s"},
                                     {"--insecure-public"}));
  Options o;
  ASSIGN_OR_RETURN(o.model, f.Required("--model"));
  ASSIGN_OR_RETURN(o.tp, f.Int("--tp", 1));
  o.serving.address = f.Get("--address", "127.0.0.1");
  ASSIGN_OR_RETURN(int64_t port, f.Int("--port", 50051));
  o.serving.port = int(port);
  o.port_file = f.Get("--port-file");
  ASSIGN_OR_RETURN(o.scheduler.kv_pool_bytes_per_group, ParseByteSize(f.Get("--kv-pool", "1GiB")));
  ASSIGN_OR_RETURN(const uint64_t kv_page, ParseByteSize(f.Get("--kv-page", "64KiB")));
  if (kv_page > uint64_t(1) << 40) return absl::InvalidArgumentError("--kv-page is over 1 TiB");
  o.scheduler.kv_page_bytes = int64_t(kv_page);
  ASSIGN_OR_RETURN(o.scheduler.step_token_budget, f.Int("--step-token-budget", 2048));
  ASSIGN_OR_RETURN(o.scheduler.max_queued, f.Int("--max-queued", 256));
  ASSIGN_OR_RETURN(o.scheduler.max_running_per_group, f.Int("--max-running", 64));
  ASSIGN_OR_RETURN(o.timeout_s, f.Double("--timeout-s", 60));
  ASSIGN_OR_RETURN(const double liveness_s, f.Double("--liveness-s", 5));
  if (!(liveness_s >= 0.5 && liveness_s <= 600)) {
    return absl::InvalidArgumentError("--liveness-s must be in [0.5, 600]");
  }
  o.liveness.deadline = std::chrono::milliseconds(int64_t(liveness_s * 1000));
  o.liveness.interval = std::min(std::chrono::milliseconds(250), o.liveness.deadline / 5);
  ASSIGN_OR_RETURN(const uint64_t prompt_memory, ParseByteSize(f.Get("--prompt-memory", "1GiB")));
  if (prompt_memory < (uint64_t{16} << 20) || prompt_memory > (uint64_t{1} << 40)) {
    return absl::InvalidArgumentError(
        "--prompt-memory must be between 16MiB (one 4 MiB chunk and its tokenization) and 1TiB");
  }
  o.prompt_memory_bytes = static_cast<int64_t>(prompt_memory);
  auto seconds = [&](const char* flag, double fallback, double lo,
                     double hi) -> absl::StatusOr<std::chrono::milliseconds> {
    ASSIGN_OR_RETURN(const double v, f.Double(flag, fallback));
    if (!(v >= lo && v <= hi)) {
      return absl::InvalidArgumentError(absl::StrCat(flag, " must be in [", lo, ", ", hi, "]"));
    }
    return std::chrono::milliseconds(int64_t(v * 1000));
  };
  ASSIGN_OR_RETURN(o.prompt_memory_wait, seconds("--prompt-memory-wait-s", 2, 0, 600));
  ASSIGN_OR_RETURN(o.serving.upload_idle, seconds("--upload-idle-s", 30, 0.5, 86400));
  ASSIGN_OR_RETURN(o.serving.write_stall, seconds("--write-stall-s", 30, 0.5, 86400));
  o.http.write_stall = o.serving.write_stall;
  RETURN_IF_ERROR(ModelNameOfDir(o.model).status());
  if (o.tp < 1) return absl::InvalidArgumentError("--tp must be at least 1");
  if (port < 0 || port > 65535) return absl::InvalidArgumentError("--port must be 0..65535");
  ASSIGN_OR_RETURN(int64_t http_port, f.Int("--http-port", 8000));
  if (http_port < -1 || http_port > 65535) {
    return absl::InvalidArgumentError("--http-port must be 0..65535, or -1 for no HTTP");
  }
  o.http_enabled = http_port >= 0;
  o.http.port = int(http_port);
  o.http.address = o.serving.address;
  o.http_port_file = f.Get("--http-port-file");
  // The one place the environment is read.
  const char* env_key = std::getenv("FLOTILLA_API_KEY");
  o.http.api_key = f.Get("--api-key", env_key != nullptr ? env_key : "");
  o.serving.api_key = o.http.api_key;
  o.http.tls_cert_file = o.serving.tls_cert_file = f.Get("--tls-cert");
  o.http.tls_key_file = o.serving.tls_key_file = f.Get("--tls-key");
  if (o.http.tls_cert_file.empty() != o.http.tls_key_file.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!IsLoopback(o.serving.address) && o.http.api_key.empty() && !f.Has("--insecure-public")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--address ", o.serving.address,
        " is beyond loopback and no API key is set: give --api-key (or FLOTILLA_API_KEY), or "
        "--insecure-public to serve without one"));
  }
  return o;
}

int Main(int argc, char** argv) {
  // Before MPI: a help or version request starts nothing.
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (a == "--version") {
      std::fputs(VersionLine("flotilla-coordinator").c_str(), stdout);
      return 0;
    }
  }
  // Prompts come and go in buffers of megabytes on many gRPC and HTTP threads. With glibc's
  // defaults each thread's arena keeps what it once held, spread out so that malloc_trim cannot
  // return it, and the coordinator's RSS creeps up under churn (e2e_soak). Buffers of 1 MiB and
  // more are mapped and unmapped on their own, and a few arenas serve all threads.
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
  mallopt(M_ARENA_MAX, 4);
  auto opts = ParseOptions(std::vector<std::string>(argv + 1, argv + argc));
  CommOptions comm_options;
  if (opts.ok()) comm_options.timeout = absl::Seconds(opts->timeout_s);
  auto world_or = MpiComm::World(comm_options, &argc, &argv);
  if (!world_or.ok()) {
    std::fprintf(stderr, "flotilla-coordinator: %s\n",
                 std::string(world_or.status().message()).c_str());
    return 1;
  }
  std::unique_ptr<MpiComm> world = std::move(*world_or);
  auto fail = [](const absl::Status& st) {
    std::fprintf(stderr, "flotilla-coordinator: %s\n", std::string(st.message()).c_str());
    std::fflush(stderr);
    return 1;
  };
  if (!opts.ok()) return fail(opts.status());
  if (world->rank() != 0) {
    return fail(absl::FailedPreconditionError("the coordinator must be MPI rank 0 (start it "
                                              "first in the mpirun line; see launch/flotilla-serve)"));
  }
  // The workers split off their own group; the coordinator takes part alone.
  auto own = world->Split(0, 0, {"worker group split", -1});
  if (!own.ok()) return fail(own.status());
  const int64_t workers = world->size() - 1;

  // What the coordinator needs, checked before the workers' load reports are in.
  absl::Status setup;
  ModelConfig config;
  std::unique_ptr<Tokenizer> tokenizer;
  {
    auto c = ModelConfig::FromFile((std::filesystem::path(opts->model) / "config.json").string());
    auto t = Tokenizer::FromModelDir(opts->model);
    if (!c.ok()) setup = c.status();
    else if (!t.ok()) setup = t.status();
    else if (workers < 1 || workers % opts->tp != 0) {
      setup = absl::InvalidArgumentError(absl::StrCat("--tp ", opts->tp, " does not divide the ",
                                                      workers, " workers"));
    } else {
      config = *c;
      tokenizer = std::move(*t);
      opts->scheduler.num_dp_groups = workers / opts->tp;
      setup = opts->scheduler.Validate(config);
    }
  }
  absl::Status st = AgreeOnLoad(*world, setup, 0, /*participates_only=*/setup.ok());
  if (!st.ok()) {
    fail(st);
    (void)world->Barrier({"load failure reported", -1});  // the workers exit after the message
    return 1;
  }

  // Where each worker's control service listens (world rank order; ours is empty).
  auto endpoints = ExchangeControlEndpoints(*world, "");
  if (!endpoints.ok()) return fail(endpoints.status());
  std::vector<std::unique_ptr<WorkerControlClient>> control;
  for (int64_t r = 0; r < workers; ++r) {
    control.push_back(std::make_unique<WorkerControlClient>((*endpoints)[r + 1]));
  }
  {  // The KV pool must fit the memory of the hosts the workers run on.
    std::vector<WorkerStats> stats;
    for (int64_t r = 0; r < workers; ++r) {
      WorkerReport report = control[r]->Report(int32_t(r + 1), std::chrono::milliseconds(10000));
      if (report.error.empty()) stats.push_back(report.stats);
    }
    st = CheckKvPoolFitsHosts(opts->scheduler.kv_pool_bytes_per_group, stats);
    // Admission counts the pages the workers hold: their pools must be the ones it assumes.
    if (st.ok()) {
      const KvPageGeometry g = *KvPageGeometry::Make(config, opts->scheduler.kv_page_bytes);
      st = CheckWorkerKvPools(g.PagesInPool(opts->scheduler.kv_pool_bytes_per_group),
                              g.page_bytes, stats);
    }
    if (!st.ok()) {
      world->Abort(st);  // the workers wait for their first step
      return fail(st);
    }
  }

  Scheduler scheduler(config, opts->scheduler, tokenizer.get());
  FrontDoorOptions fdo;
  fdo.model_name = *ModelNameOfDir(opts->model);  // checked in ParseOptions
  fdo.prompt_memory_bytes = opts->prompt_memory_bytes;
  fdo.prompt_memory_wait = opts->prompt_memory_wait;
  FrontDoor front_door(config, tokenizer.get(), &scheduler, fdo);
  std::unique_ptr<LivenessMonitor> liveness;
  ServingMetrics metrics;
  EngineOptions engine_options;
  engine_options.before_shutdown = [&] { liveness->Stop(); };  // the workers' exits are no deaths
  engine_options.suspects = [&] { return liveness ? liveness->Suspects() : std::string(); };
  engine_options.on_step = [&metrics](const StepPlan& plan, double seconds) {
    // A one-token entry past position 0 is a decode; everything else is prompt.
    int64_t prefill = 0, decode = 0;
    for (const StepSequence& s : plan.seqs) {
      if (s.tokens.size() == 1 && s.start_pos > 0) {
        ++decode;
      } else {
        prefill += static_cast<int64_t>(s.tokens.size());
      }
    }
    metrics.ObserveStep(seconds, prefill, decode);
  };
  Engine engine(*world, scheduler, engine_options);
  g_engine = &engine;
  std::signal(SIGTERM, OnTerminate);
  std::signal(SIGINT, OnTerminate);

  ServingCallbacks callbacks;
  callbacks.model_info = [&] {
    ModelInfo info = front_door.ModelSummary();
    info.layout.num_workers = workers;
    info.layout.tp = opts->tp;
    info.layout.dp = workers / opts->tp;
    info.layout.ep = workers;
    return info;
  };
  // Each worker answers for itself through its control service; one that does not is reported
  // with the error.
  callbacks.cluster_status = [&] {
    ClusterStatus s;
    s.scheduler = scheduler.Stats();
    for (int64_t r = 0; r < workers; ++r) {
      s.workers.push_back(control[r]->Report(int32_t(r + 1), std::chrono::milliseconds(2000)));
    }
    return s;
  };
  callbacks.drain = [&] {
    scheduler.Drain();  // before the reply: nothing is admitted once Drain has returned
    engine.RequestDrain();
    return absl::OkStatus();
  };
  callbacks.on_generate_done = [&](const char* outcome) {
    metrics.CountRequest("grpc_generate", outcome);
  };
  auto server = ServingServer::Start(opts->serving, &front_door, callbacks);
  if (!server.ok()) {
    // The workers are waiting for their first step: end them with this message.
    world->Abort(server.status());
    return fail(server.status());
  }
  {
    std::vector<WorkerEndpoint> watched;
    for (int64_t r = 0; r < workers; ++r) watched.push_back({int32_t(r + 1), control[r]->target()});
    ServingServer* serving = server->get();
    liveness = std::make_unique<LivenessMonitor>(
        watched, opts->liveness,
        [&scheduler, serving](const absl::Status& st) {
          scheduler.SetUnavailable(st);
          serving->SetServing(st.ok());
        },
        [&scheduler](const absl::Status& st) { scheduler.FailAll(st); });
  }
  std::fprintf(stderr, "flotilla-coordinator: serving %s on %s (%lld workers, tp %lld)\n",
               opts->model.c_str(), (*server)->endpoint().c_str(), (long long)workers,
               (long long)opts->tp);
  if (!opts->port_file.empty()) {
    std::ofstream(opts->port_file) << (*server)->port() << "\n";
  }
  std::unique_ptr<HttpServer> http;
  if (opts->http_enabled) {
    HttpCallbacks http_callbacks;
    http_callbacks.scheduler_stats = [&] { return scheduler.Stats(); };
    http_callbacks.draining = [&] { return engine.draining(); };
    auto started = HttpServer::Start(opts->http, &front_door, tokenizer.get(), &metrics,
                                     http_callbacks);
    if (!started.ok()) {
      world->Abort(started.status());
      return fail(started.status());
    }
    http = std::move(started).value();
    std::fprintf(stderr, "flotilla-coordinator: HTTP (OpenAI API) on %s%s\n",
                 http->endpoint().c_str(), opts->http.tls_cert_file.empty() ? "" : " (TLS)");
    if (!opts->http_port_file.empty()) {
      std::ofstream(opts->http_port_file) << http->port() << "\n";
    }
  }
  // When the front doors fall idle after work, what the heap holds goes back to the system:
  // the buffers of requests (gRPC's among them) are freed after their prompt memory was.
  std::atomic<bool> trimmer_stop{false};
  std::thread trimmer([&] {
    int64_t trimmed_at = -1;
    while (!trimmer_stop.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      const PromptMemoryStats m = front_door.PromptMemoryUse();
      if (m.reserved_bytes == 0 && front_door.num_active() == 0 &&
          m.total_reserved_bytes != trimmed_at) {
        malloc_trim(0);
        trimmed_at = m.total_reserved_bytes;
      }
    }
  });
  st = engine.Run();
  trimmer_stop = true;
  trimmer.join();
  liveness->Stop();
  if (http != nullptr) (void)http->Shutdown();
  (void)(*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  g_engine = nullptr;
  if (!st.ok()) return fail(st);  // mpirun ends the job
  std::fprintf(stderr, "flotilla-coordinator: drained after %lld steps; shutting down\n",
               (long long)engine.steps());
  server->reset();
  own->reset();
  world.reset();
  st = MpiComm::FinalizeProcess();
  return st.ok() ? 0 : fail(st);
}

}  // namespace
}  // namespace flotilla

int main(int argc, char** argv) { return flotilla::Main(argc, argv); }
