// Conversions shared by the gRPC adapters (grpc_server.cc, worker_control.cc). Internal: only
// adapter code includes generated proto types.
#pragma once

#include <grpcpp/grpcpp.h>

#include <string>

#include "absl/status/status.h"
#include "comm/worker_control.h"
#include "flotilla/v1/worker_control.pb.h"

namespace flotilla {

// absl and gRPC share the canonical code numbers.
grpc::Status ToGrpc(const absl::Status& s);
absl::Status FromGrpc(const grpc::Status& s);
// "address:port", brackets around an IPv6 address.
std::string Endpoint(const std::string& address, int port);

void WorkerHealthToProto(const WorkerHealth& in, v1::WorkerHealth* out);
void WorkerLoadProgressToProto(const WorkerLoadProgress& in, v1::WorkerLoadProgress* out);
void WorkerStatsToProto(const WorkerStats& in, v1::WorkerStats* out);

}  // namespace flotilla
