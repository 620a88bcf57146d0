// The watchdog of the gRPC front door's Generate streams (grpc_server.h): ends the calls of
// clients that stall while a handler thread is blocked on them.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>

namespace flotilla {

// Ends the calls of clients that stall: each stream says what it is blocked on and since when;
// past the limit for that wait, its call is cancelled with DEADLINE_EXCEEDED (the blocked Read
// or Write then returns false on the stream's own thread).
class StallWatchdog {
 public:
  enum class Wait { kNone, kUpload, kWrite };

  struct Watch {
    grpc::ServerContext* ctx = nullptr;
    std::atomic<Wait> wait{Wait::kNone};
    std::atomic<int64_t> since_ms{0};
    std::atomic<bool> fired{false};
    std::string reason;  // set before `fired`
  };

  StallWatchdog(std::chrono::milliseconds upload_idle, std::chrono::milliseconds write_stall)
      : upload_idle_(upload_idle), write_stall_(write_stall), thread_([this] { Loop(); }) {}
  ~StallWatchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  static int64_t NowMs() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  static void Begin(Watch* w, Wait wait) {
    w->since_ms = NowMs();
    w->wait = wait;
  }
  static void End(Watch* w) { w->wait = Wait::kNone; }

  void Add(Watch* w) {
    std::lock_guard<std::mutex> lock(mu_);
    watches_.insert(w);
  }
  // After this returns the watchdog no longer touches `w` or its call.
  void Remove(Watch* w) {
    std::lock_guard<std::mutex> lock(mu_);
    watches_.erase(w);
  }

 private:
  void Loop();

  const std::chrono::milliseconds upload_idle_, write_stall_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::unordered_set<Watch*> watches_;
  std::thread thread_;  // last: starts once the rest is built
};

}  // namespace flotilla
