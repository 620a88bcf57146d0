#include "comm/worker_control.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "comm/grpc_convert.h"
#include "flotilla/v1/worker_control.grpc.pb.h"

namespace flotilla {

namespace {

v1::WorkerState StateToProto(WorkerState s) {
  switch (s) {
    case WorkerState::kStarting:
      return v1::WORKER_STATE_STARTING;
    case WorkerState::kLoading:
      return v1::WORKER_STATE_LOADING;
    case WorkerState::kReady:
      return v1::WORKER_STATE_READY;
    case WorkerState::kDraining:
      return v1::WORKER_STATE_DRAINING;
    case WorkerState::kStopping:
      return v1::WORKER_STATE_STOPPING;
    case WorkerState::kFailed:
      return v1::WORKER_STATE_FAILED;
  }
  return v1::WORKER_STATE_UNSPECIFIED;
}

absl::StatusOr<WorkerState> StateFromProto(int s) {
  switch (s) {
    case v1::WORKER_STATE_STARTING:
      return WorkerState::kStarting;
    case v1::WORKER_STATE_LOADING:
      return WorkerState::kLoading;
    case v1::WORKER_STATE_READY:
      return WorkerState::kReady;
    case v1::WORKER_STATE_DRAINING:
      return WorkerState::kDraining;
    case v1::WORKER_STATE_STOPPING:
      return WorkerState::kStopping;
    case v1::WORKER_STATE_FAILED:
      return WorkerState::kFailed;
    default:
      return absl::InvalidArgumentError(absl::StrCat("WorkerHealth.state: unknown value ", s));
  }
}

class WorkerControlService final : public v1::WorkerControl::Service {
 public:
  explicit WorkerControlService(WorkerControlLogic* logic) : logic_(logic) {}

  grpc::Status Health(grpc::ServerContext*, const v1::WorkerHealthRequest*,
                      v1::WorkerHealth* out) override {
    WorkerHealthToProto(logic_->Health(), out);
    return grpc::Status::OK;
  }

  grpc::Status Watch(grpc::ServerContext* ctx, const v1::WorkerWatchRequest* request,
                     grpc::ServerWriter<v1::WorkerHealth>* writer) override {
    const auto interval = std::chrono::milliseconds(std::clamp(request->interval_ms(), 10, 10000));
    while (!ctx->IsCancelled()) {
      v1::WorkerHealth out;
      WorkerHealthToProto(logic_->Health(), &out);
      if (!writer->Write(out)) break;
      std::this_thread::sleep_for(interval);
    }
    return grpc::Status::OK;
  }

  grpc::Status LoadProgress(grpc::ServerContext*, const v1::WorkerLoadProgressRequest*,
                            v1::WorkerLoadProgress* out) override {
    WorkerLoadProgressToProto(logic_->LoadProgress(), out);
    return grpc::Status::OK;
  }

  grpc::Status Stats(grpc::ServerContext*, const v1::WorkerStatsRequest*,
                     v1::WorkerStats* out) override {
    WorkerStatsToProto(logic_->Stats(), out);
    return grpc::Status::OK;
  }

  grpc::Status Drain(grpc::ServerContext*, const v1::WorkerDrainRequest*,
                     v1::WorkerDrainResponse*) override {
    return ToGrpc(logic_->Drain());
  }

  grpc::Status Shutdown(grpc::ServerContext*, const v1::WorkerShutdownRequest* in,
                        v1::WorkerShutdownResponse*) override {
    return ToGrpc(logic_->Shutdown(in->reason()));
  }

 private:
  WorkerControlLogic* logic_;
};

}  // namespace

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

std::string Endpoint(const std::string& address, int port) {
  const bool ipv6 = address.find(':') != std::string::npos && address.front() != '[';
  return ipv6 ? absl::StrCat("[", address, "]:", port) : absl::StrCat(address, ":", port);
}

void WorkerHealthToProto(const WorkerHealth& in, v1::WorkerHealth* out) {
  out->set_state(StateToProto(in.state));
  out->set_world_rank(in.world_rank);
  out->set_message(in.message);
}

void WorkerLoadProgressToProto(const WorkerLoadProgress& in, v1::WorkerLoadProgress* out) {
  out->set_bytes_loaded(in.bytes_loaded);
  out->set_bytes_total(in.bytes_total);
  out->set_tensors_loaded(in.tensors_loaded);
  out->set_tensors_total(in.tensors_total);
  out->set_done(in.done);
  out->set_error(in.error);
}

void WorkerStatsToProto(const WorkerStats& in, v1::WorkerStats* out) {
  out->set_world_rank(in.world_rank);
  out->set_dp_group(in.dp_group);
  out->set_tp_rank(in.tp_rank);
  out->set_steps(in.steps);
  out->set_tokens_processed(in.tokens_processed);
  out->set_sequences(in.sequences);
  out->set_kv_pages_total(in.kv_pages_total);
  out->set_kv_pages_used(in.kv_pages_used);
  out->set_kv_pool_bytes(in.kv_pool_bytes);
  out->set_weight_bytes(in.weight_bytes);
  out->set_uptime_s(in.uptime_s);
  out->set_device(in.device);
  out->set_host(in.host);
  out->set_host_memory_bytes(in.host_memory_bytes);
}

const char* WorkerStateName(WorkerState state) {
  switch (state) {
    case WorkerState::kStarting:
      return "starting";
    case WorkerState::kLoading:
      return "loading";
    case WorkerState::kReady:
      return "ready";
    case WorkerState::kDraining:
      return "draining";
    case WorkerState::kStopping:
      return "stopping";
    case WorkerState::kFailed:
      return "failed";
  }
  return "?";
}

// ---- server ----

struct WorkerControlServer::Impl {
  std::unique_ptr<WorkerControlService> service;
  std::unique_ptr<grpc::Server> server;
  std::string address;
  int port = 0;
  std::mutex shutdown_mu;
  bool shut_down = false;
};

WorkerControlServer::WorkerControlServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

WorkerControlServer::~WorkerControlServer() {
  Shutdown(std::chrono::system_clock::now()).IgnoreError();
}

absl::StatusOr<std::unique_ptr<WorkerControlServer>> WorkerControlServer::Start(
    const WorkerControlServerOptions& options, WorkerControlLogic* logic) {
  auto impl = std::make_unique<Impl>();
  impl->service = std::make_unique<WorkerControlService>(logic);
  impl->address = options.address;
  grpc::ServerBuilder builder;
  const std::string requested = Endpoint(options.address, options.port);
  builder.AddListeningPort(requested, grpc::InsecureServerCredentials(), &impl->port);
  // gRPC sets SO_REUSEPORT by default: a second server on a busy port would silently share it.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(impl->service.get());
  impl->server = builder.BuildAndStart();
  if (impl->server == nullptr || impl->port == 0) {
    return absl::UnavailableError(absl::StrCat("worker control: cannot listen on ", requested));
  }
  return std::unique_ptr<WorkerControlServer>(new WorkerControlServer(std::move(impl)));
}

int WorkerControlServer::port() const { return impl_->port; }

std::string WorkerControlServer::endpoint() const { return Endpoint(impl_->address, impl_->port); }

absl::Status WorkerControlServer::Shutdown(std::chrono::system_clock::time_point deadline) {
  std::lock_guard<std::mutex> lock(impl_->shutdown_mu);
  if (impl_->shut_down) return absl::OkStatus();
  impl_->server->Shutdown(deadline);
  impl_->server->Wait();
  impl_->shut_down = true;
  return absl::OkStatus();
}

// ---- client ----

struct WorkerControlClient::Impl {
  std::unique_ptr<v1::WorkerControl::Stub> stub;
};

namespace {

void SetDeadline(grpc::ClientContext* ctx, std::chrono::milliseconds timeout) {
  ctx->set_deadline(std::chrono::system_clock::now() + timeout);
}

}  // namespace

WorkerControlClient::WorkerControlClient(const std::string& target)
    : target_(target), impl_(std::make_unique<Impl>()) {
  impl_->stub =
      v1::WorkerControl::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
}

WorkerControlClient::~WorkerControlClient() = default;

absl::StatusOr<WorkerHealth> WorkerControlClient::Health(std::chrono::milliseconds timeout) const {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, timeout);
  v1::WorkerHealth out;
  RETURN_IF_ERROR(FromGrpc(impl_->stub->Health(&ctx, v1::WorkerHealthRequest(), &out)));
  WorkerHealth h;
  ASSIGN_OR_RETURN(h.state, StateFromProto(out.state()));
  h.world_rank = out.world_rank();
  h.message = out.message();
  return h;
}

absl::StatusOr<WorkerLoadProgress> WorkerControlClient::LoadProgress(
    std::chrono::milliseconds timeout) const {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, timeout);
  v1::WorkerLoadProgress out;
  RETURN_IF_ERROR(FromGrpc(impl_->stub->LoadProgress(&ctx, v1::WorkerLoadProgressRequest(), &out)));
  WorkerLoadProgress p;
  p.bytes_loaded = out.bytes_loaded();
  p.bytes_total = out.bytes_total();
  p.tensors_loaded = out.tensors_loaded();
  p.tensors_total = out.tensors_total();
  p.done = out.done();
  p.error = out.error();
  return p;
}

absl::StatusOr<WorkerStats> WorkerControlClient::Stats(std::chrono::milliseconds timeout) const {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, timeout);
  v1::WorkerStats out;
  RETURN_IF_ERROR(FromGrpc(impl_->stub->Stats(&ctx, v1::WorkerStatsRequest(), &out)));
  WorkerStats s;
  s.world_rank = out.world_rank();
  s.dp_group = out.dp_group();
  s.tp_rank = out.tp_rank();
  s.steps = out.steps();
  s.tokens_processed = out.tokens_processed();
  s.sequences = out.sequences();
  s.kv_pages_total = out.kv_pages_total();
  s.kv_pages_used = out.kv_pages_used();
  s.kv_pool_bytes = out.kv_pool_bytes();
  s.weight_bytes = out.weight_bytes();
  s.uptime_s = out.uptime_s();
  s.device = out.device();
  s.host = out.host();
  s.host_memory_bytes = out.host_memory_bytes();
  return s;
}

absl::Status WorkerControlClient::Drain(std::chrono::milliseconds timeout) const {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, timeout);
  v1::WorkerDrainResponse out;
  return FromGrpc(impl_->stub->Drain(&ctx, v1::WorkerDrainRequest(), &out));
}

absl::Status WorkerControlClient::Shutdown(const std::string& reason,
                                           std::chrono::milliseconds timeout) const {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, timeout);
  v1::WorkerShutdownRequest in;
  in.set_reason(reason);
  v1::WorkerShutdownResponse out;
  return FromGrpc(impl_->stub->Shutdown(&ctx, in, &out));
}

WorkerReport WorkerControlClient::Report(int32_t world_rank,
                                         std::chrono::milliseconds timeout) const {
  WorkerReport r;
  r.world_rank = world_rank;
  r.address = target_;
  auto fail = [&](absl::string_view call, const absl::Status& s) {
    r.error = absl::StrCat(target_, " ", call, ": ", absl::StatusCodeToString(s.code()), ": ",
                           s.message());
  };
  auto health = Health(timeout);
  if (!health.ok()) {
    fail("Health", health.status());
    return r;
  }
  r.health = *health;
  auto load = LoadProgress(timeout);
  if (!load.ok()) {
    fail("LoadProgress", load.status());
    return r;
  }
  r.load = *load;
  auto stats = Stats(timeout);
  if (!stats.ok()) {
    fail("Stats", stats.status());
    return r;
  }
  r.stats = *stats;
  return r;
}

struct WorkerWatch::Impl {
  std::unique_ptr<v1::WorkerControl::Stub> stub;
  grpc::ClientContext ctx;
  std::thread reader;
};

// The stream has no deadline: it is meant to last as long as the job, and its whole point is
// that the caller times the gaps between reports. Stop() cancels it.
std::unique_ptr<WorkerWatch> WorkerWatch::Start(const std::string& target,
                                                std::chrono::milliseconds interval,
                                                std::function<void(const WorkerHealth&)> on_report,
                                                std::function<void(const absl::Status&)> on_end) {
  std::unique_ptr<WorkerWatch> w(new WorkerWatch());
  w->impl_ = std::make_unique<Impl>();
  w->impl_->stub =
      v1::WorkerControl::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  w->impl_->ctx.set_wait_for_ready(false);
  Impl* impl = w->impl_.get();
  impl->reader = std::thread([impl, target, interval, on_report = std::move(on_report),
                              on_end = std::move(on_end)] {
    v1::WorkerWatchRequest request;
    request.set_interval_ms(int32_t(interval.count()));
    auto stream = impl->stub->Watch(&impl->ctx, request);
    v1::WorkerHealth in;
    while (stream->Read(&in)) {
      WorkerHealth h;
      auto state = StateFromProto(in.state());
      h.state = state.ok() ? *state : WorkerState::kFailed;
      h.world_rank = in.world_rank();
      h.message = in.message();
      on_report(h);
    }
    const absl::Status end = FromGrpc(stream->Finish());
    on_end(end.ok() ? absl::UnavailableError(absl::StrCat(target, ": the watch stream ended"))
                    : absl::Status(end.code(), absl::StrCat(target, ": ", end.message())));
  });
  return w;
}

WorkerWatch::~WorkerWatch() { Stop(); }

void WorkerWatch::Stop() {
  if (impl_ == nullptr || !impl_->reader.joinable()) return;
  impl_->ctx.TryCancel();
  impl_->reader.join();
}

}  // namespace flotilla
