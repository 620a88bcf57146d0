// The gRPC adapter of the client API (flotilla.v1.Flotilla, proto/flotilla/v1/flotilla.proto):
// converts protos to the front door's plain structs and back, and nothing more. Also serves the
// standard health service (grpc.health.v1.Health: SERVING until Drain or Shutdown) and server
// reflection. This header has no gRPC types.
//
// Threads: each Generate stream runs on a gRPC handler thread, which alone writes to the stream;
// the request's events (from the engine thread) reach it through a per-stream queue. A client
// that goes away (cancelled call, failed write) has its request cancelled without notification.
// A watchdog thread ends the streams of stalled clients: one that stops sending its prompt
// (ServingOptions::upload_idle) or stops reading its responses (write_stall). The sync API's
// blocked Read or Write returns once the call is cancelled from another thread, so the
// watchdog cancels the call with a DEADLINE_EXCEEDED status naming the flag.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "coordinator/front_door.h"
#include "coordinator/scheduler.h"
#include "comm/worker_control.h"

namespace flotilla {

struct ServingOptions {
  std::string address = "127.0.0.1";
  int port = 0;  // 0: pick a free port (see ServingServer::port())
  // Largest gRPC message either way; the front door's chunk limit (4 MiB) sits below it.
  int max_message_bytes = 16 << 20;
  // Non-empty: every flotilla.v1 call must carry the metadata "authorization: Bearer <key>"
  // (UNAUTHENTICATED otherwise). The health service and reflection stay open.
  std::string api_key;
  std::string tls_cert_file, tls_key_file;  // both set: TLS (PEM files)
  // A Generate stream whose client sends no prompt message for this long while its prompt is
  // incomplete ends with DEADLINE_EXCEEDED (--upload-idle-s).
  std::chrono::milliseconds upload_idle{30000};
  // A Generate stream whose client reads nothing for this long, while a response waits to be
  // written, ends with DEADLINE_EXCEEDED and its request is cancelled (--write-stall-s).
  std::chrono::milliseconds write_stall{30000};
};

// What GetClusterStatus reports; active_requests is filled in by the server.
struct ClusterStatus {
  SchedulerStats scheduler;
  bool draining = false;
  std::vector<WorkerReport> workers;
};

// Supplied by the host (the coordinator main). Called on gRPC handler threads, concurrently.
struct ServingCallbacks {
  std::function<ModelInfo()> model_info;          // unset: FrontDoor::ModelSummary()
  std::function<ClusterStatus()> cluster_status;  // unset: empty stats, no workers
  std::function<absl::Status()> drain;            // unset: Drain answers UNIMPLEMENTED
  // After each Generate stream: "ok", "cancelled", "client_error", "unauthorized", "rejected"
  // (RESOURCE_EXHAUSTED, UNAVAILABLE) or "server_error". Unset: nothing.
  std::function<void(const char* outcome)> on_generate_done;
};

class ServingServer {
 public:
  // `front_door` must outlive the server. Errors: UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<ServingServer>> Start(const ServingOptions& options,
                                                              FrontDoor* front_door,
                                                              ServingCallbacks callbacks = {});
  ~ServingServer();  // Shutdown(now)

  int port() const;
  std::string endpoint() const;  // "address:port", for clients

  // Health ("" and flotilla.v1.Flotilla) reports NOT_SERVING while `serving` is false (and
  // after Drain or Shutdown, whatever this says).
  void SetServing(bool serving);

  // Idempotent. Health turns NOT_SERVING; calls in progress get until `deadline`, then are
  // cancelled (their requests cancelled without notification).
  absl::Status Shutdown(std::chrono::system_clock::time_point deadline);

 private:
  struct Impl;
  explicit ServingServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace flotilla
