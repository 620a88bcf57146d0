#include "coordinator/stall_watchdog.h"

#include <grpc/grpc.h>

#include "absl/strings/str_cat.h"

namespace flotilla {

void StallWatchdog::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, std::chrono::milliseconds(100));
    const int64_t now = NowMs();
    for (Watch* w : watches_) {
      if (w->fired) continue;
      const Wait wait = w->wait;
      const int64_t waited = now - w->since_ms;
      if (wait == Wait::kUpload && waited >= upload_idle_.count()) {
        w->reason = absl::StrCat("the client sent no prompt message for ", waited / 1000.0,
                                 " s (the upload idle limit is ", upload_idle_.count() / 1000.0,
                                 " s, --upload-idle-s); the prompt was dropped");
      } else if (wait == Wait::kWrite && waited >= write_stall_.count()) {
        w->reason = absl::StrCat("the client read no response for ", waited / 1000.0,
                                 " s (the write stall limit is ", write_stall_.count() / 1000.0,
                                 " s, --write-stall-s); the request was cancelled");
      } else {
        continue;
      }
      w->fired = true;
      grpc_call_cancel_with_status(w->ctx->c_call(), GRPC_STATUS_DEADLINE_EXCEEDED,
                                   w->reason.c_str(), nullptr);
    }
  }
}

}  // namespace flotilla
