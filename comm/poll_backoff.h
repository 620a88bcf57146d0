// Helpers for transports that wait by polling (MPI_Test*, cudaStreamQuery).
#pragma once

#include <algorithm>
#include <chrono>
#include <thread>

#include "absl/time/time.h"

namespace flotilla {

// now + timeout on the steady clock; infinite or huge timeouts saturate at ~100 years.
inline std::chrono::steady_clock::time_point SteadyDeadline(absl::Duration timeout) {
  const absl::Duration bounded =
      std::clamp(timeout, absl::ZeroDuration(), absl::Hours(24 * 365 * 100));
  return std::chrono::steady_clock::now() +
         std::chrono::duration_cast<std::chrono::steady_clock::duration>(
             absl::ToChronoNanoseconds(bounded));
}

// Polling pace: spin briefly for latency, then yield, then sleep, so that a long wait (a worker
// idle between steps, a peer that never comes) does not burn a core that other ranks may share.
class PollBackoff {
 public:
  PollBackoff() : start_(std::chrono::steady_clock::now()) {}

  void Pause() {
    // A few polls back to back, then yield at once: sched_yield costs ~1 us when the core is
    // ours, and when ranks share cores (tests, oversubscribed runs) spinning starves the peer we
    // wait for (measured: 3x slower all-to-all with 4 ranks on 2 cores).
    // Past 5 ms the wait is not an exchange in flight but a peer computing or an idle worker
    // waiting for its next step: yielding then costs a core (issue 13: 21% per idle worker).
    if (++polls_ < kSpinPolls) return;
    const auto waited = std::chrono::steady_clock::now() - start_;
    // Each sleep is a wakeup that costs 15-20 us of CPU, so the longer the wait has been, the
    // longer the sleep, and the latency it adds stays a small fraction of the wait: an idle
    // worker between once-a-second heartbeats wakes about 900 times a second, not 2,800.
    if (waited < std::chrono::milliseconds(5)) {
      std::this_thread::yield();
    } else if (waited < std::chrono::milliseconds(20)) {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    } else if (waited < std::chrono::milliseconds(200)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }

 private:
  static constexpr int kSpinPolls = 64;
  std::chrono::steady_clock::time_point start_;
  int polls_ = 0;
};

}  // namespace flotilla
