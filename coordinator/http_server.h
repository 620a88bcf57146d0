// The OpenAI-compatible HTTP front door (docs/http-api.md): POST /v1/chat/completions,
// POST /v1/completions, GET /v1/models, GET /health, GET /metrics, on Boost.Beast, optionally
// over TLS. A thin adapter like the gRPC one: requests go through the same FrontDoor
// (validation, tokenization, admission, scheduler, cancellation); openai_api.h converts bodies.
//
// Threads: one per connection (at most HttpOptions::max_connections; more are answered 503),
// which alone writes its responses; a request's events reach it through a queue. While it
// waits it checks, every 50 ms, whether the client closed the connection; a client that did
// has its requests cancelled without notification, so their KV pages return. A watchdog thread
// closes a connection whose write has been blocked for HttpOptions::write_stall.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/status.h"
#include "coordinator/front_door.h"
#include "coordinator/metrics.h"
#include "coordinator/scheduler.h"
#include "tokenizer/tokenizer.h"

namespace flotilla {

struct HttpOptions {
  std::string address = "127.0.0.1";
  int port = 0;         // 0: pick a free port (see HttpServer::port())
  std::string api_key;  // non-empty: every endpoint but /health needs "Bearer <key>"
  std::string tls_cert_file, tls_key_file;  // both set: HTTPS (PEM files)
  size_t max_body_bytes = size_t{64} << 20;
  int max_connections = 512;
  int retry_after_s = 1;  // the Retry-After of 429 and 503 answers
  // A write blocked this long (the client reads nothing) closes the connection; its requests
  // are cancelled as for a client that went away (--write-stall-s).
  std::chrono::milliseconds write_stall{30000};
};

struct HttpCallbacks {
  std::function<SchedulerStats()> scheduler_stats;  // unset: empty stats
  std::function<bool()> draining;  // true: GET /health answers 503 "draining"; unset: never
};

class HttpServer {
 public:
  // All pointers must outlive the server. Errors: UNAVAILABLE when the address cannot be bound,
  // INVALID_ARGUMENT for unreadable TLS files.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const HttpOptions& options,
                                                           FrontDoor* front_door,
                                                           const Tokenizer* tokenizer,
                                                           ServingMetrics* metrics,
                                                           HttpCallbacks callbacks = {});
  ~HttpServer();  // Shutdown()

  int port() const;
  std::string endpoint() const;  // "address:port"

  // Idempotent: stops accepting, closes every connection (their requests are cancelled) and
  // joins the threads.
  absl::Status Shutdown();

  struct Impl;

 private:
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace flotilla
