// Where the front door hands requests (the Scheduler implements it; tests use a fake).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "coordinator/request.h"

namespace flotilla {

class RequestSink {
 public:
  virtual ~RequestSink() = default;
  // OK: the request is queued and `sink` will get its events (Admitted possibly before this
  // returns). An error: nothing was queued and `sink` is never called.
  virtual absl::Status Submit(GenerateRequest request, EventSink sink) = 0;
  // Cancels a queued or running request; unknown ids are ignored. With `notify` the sink still
  // gets Finished(kCancelled); without (the client is gone) it may get nothing more.
  virtual void Cancel(uint64_t id, bool notify = true) = 0;
};

}  // namespace flotilla
