// The coordinator's step loop (design.md §3): each step it takes the scheduler's plan,
// broadcasts it to every worker over MPI, collects the tokens the DP groups sampled and hands
// them back to the scheduler. While idle it sends a heartbeat plan once a second, so no wait
// runs into the communicator's deadline. Runs on one thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>

#include "absl/time/time.h"
#include "coordinator/scheduler.h"
#include "comm/comm.h"

namespace flotilla {

struct EngineOptions {
  // Idle plan interval. Liveness comes from the workers' Watch streams (coordinator/liveness.h),
  // so the heartbeat only keeps the workers' waits bounded; each one costs every rank a wait.
  absl::Duration heartbeat = absl::Seconds(1);
  absl::Duration idle_poll = absl::Milliseconds(2);    // how often an idle loop looks for work
  std::function<void()> before_shutdown;  // called before the workers are told to exit
  // Called on the engine thread after each step with sequences: the plan and the step's wall
  // time in seconds (broadcast to tokens back). Unset: nothing.
  std::function<void(const StepPlan&, double)> on_step;
  // The ranks the liveness watch finds gone or late (LivenessMonitor::Suspects), named in the
  // error of a failed step: a collective's timeout cannot tell a dead rank from the ranks that
  // waited on it. Unset or "": nothing added.
  std::function<std::string()> suspects;
};

class Engine {
 public:
  // `world`: rank 0 is this coordinator, ranks 1.. the workers.
  Engine(Comm& world, Scheduler& scheduler, const EngineOptions& options = {});

  // Runs steps until a drain was requested and the scheduler is idle, then tells the workers to
  // shut down. An error (a worker gone, a deadline) fails every request with UNAVAILABLE and is
  // returned.
  absl::Status Run();

  // Async-signal-safe: stop admitting, finish what is in flight, then leave Run().
  void RequestDrain() { drain_.store(true); }
  bool draining() const { return drain_.load(); }
  int64_t steps() const { return step_; }

 private:
  absl::Status Step(const StepPlan& plan, std::vector<StepToken>* tokens);

  Comm& world_;
  Scheduler& scheduler_;
  EngineOptions options_;
  std::atomic<bool> drain_{false};
  int64_t step_ = 0;
};

}  // namespace flotilla
