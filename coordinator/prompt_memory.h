// The front doors' memory for prompts, bounded by configuration rather than by clients: every
// prompt being received, held or tokenized reserves bytes from one budget (--prompt-memory)
// before the work that needs them. What a request cannot reserve it waits for, briefly, while
// its client stays connected; then it is refused with RESOURCE_EXHAUSTED naming the budget.
// While a request waits it reads nothing more from its client (transport flow control holds
// the sender back).
//
// Also counts the uploads in progress (a header came, the prompt is not complete) and their
// bytes, for the status RPC.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>

#include "common/status.h"

namespace flotilla {

struct PromptMemoryStats {
  int64_t budget_bytes = 0;
  int64_t reserved_bytes = 0;  // held by prompts now
  int64_t peak_reserved_bytes = 0;
  int64_t uploads = 0;       // prompts being received
  int64_t upload_bytes = 0;  // bytes those have sent so far
  int64_t refused = 0;       // requests refused for want of budget
  int64_t total_reserved_bytes = 0;  // ever reserved (grows with every request)
};

class PromptMemory {
 public:
  // Once requests have released this many bytes, the one that ends hands free heap pages back
  // to the system (malloc_trim), at most every kTrimInterval unless nothing is left reserved.
  static constexpr int64_t kTrimAfterBytes = int64_t{8} << 20;
  static constexpr std::chrono::milliseconds kTrimInterval{250};

  PromptMemory(int64_t budget_bytes, std::chrono::milliseconds max_wait)
      : budget_(budget_bytes), max_wait_(max_wait) {}
  PromptMemory(const PromptMemory&) = delete;
  PromptMemory& operator=(const PromptMemory&) = delete;

  // One request's share; released (and counted out of the uploads) when it goes away.
  class Lease {
   public:
    Lease() = default;
    explicit Lease(PromptMemory* owner) : owner_(owner) {}
    Lease(Lease&& other) noexcept { *this = std::move(other); }
    Lease& operator=(Lease&& other) noexcept;
    ~Lease() { Reset(); }

    // Grows or shrinks the share to `bytes`. Growing may wait (see the class comment) while
    // `cancelled` (may be empty) says false; `what` names the request in the error. Errors:
    // RESOURCE_EXHAUSTED naming the budget, CANCELLED when the client went away while waiting.
    absl::Status Resize(int64_t bytes, const std::function<bool()>& cancelled,
                        const std::string& what);
    int64_t bytes() const { return bytes_; }

    // This request is an upload in progress with `bytes` received so far / no longer one.
    void SetUploadBytes(int64_t bytes);
    void EndUpload();

    void Reset();  // releases everything

   private:
    PromptMemory* owner_ = nullptr;
    int64_t bytes_ = 0;
    bool uploading_ = false;
    int64_t upload_bytes_ = 0;
  };

  Lease NewLease() { return Lease(this); }
  PromptMemoryStats Stats() const;
  int64_t budget_bytes() const { return budget_; }

 private:
  absl::Status Grow(int64_t delta, int64_t total, const std::function<bool()>& cancelled,
                    const std::string& what);
  void Shrink(int64_t delta, bool request_ends);

  const int64_t budget_;
  const std::chrono::milliseconds max_wait_;
  mutable std::mutex mu_;
  std::condition_variable freed_;
  PromptMemoryStats stats_;
  int64_t released_since_trim_ = 0;
  std::chrono::steady_clock::time_point last_trim_;
};

}  // namespace flotilla
