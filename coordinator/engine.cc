#include "coordinator/engine.h"

#include <chrono>
#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"

namespace flotilla {

Engine::Engine(Comm& world, Scheduler& scheduler, const EngineOptions& options)
    : world_(world), scheduler_(scheduler), options_(options) {}

absl::Status Engine::Step(const StepPlan& plan, std::vector<StepToken>* tokens) {
  const std::string bytes = SerializeStepPlan(plan);
  uint64_t size = bytes.size();
  RETURN_IF_ERROR(world_.Broadcast(&size, sizeof(size), 0, {"step plan size", plan.step}));
  RETURN_IF_ERROR(world_.Broadcast(const_cast<char*>(bytes.data()), size, 0,
                                   {"step plan", plan.step}));
  tokens->clear();
  if (plan.shutdown) return absl::OkStatus();
  const int n = world_.size();
  std::vector<uint64_t> zeros(n, 0), counts(n, 0);
  std::vector<size_t> eight(n, sizeof(uint64_t));
  RETURN_IF_ERROR(world_.AllToAllV(zeros.data(), eight, counts.data(), eight,
                                   {"step result sizes", plan.step}));
  std::vector<size_t> send(n, 0), recv(n, 0);
  size_t total = 0;
  for (int r = 0; r < n; ++r) {
    const uint32_t wishes = uint32_t(counts[r] >> kWishShift);
    if (wishes != 0 && !drain_.load()) {
      std::fprintf(stderr, "flotilla-coordinator: worker rank %d asked to %s; draining the job\n",
                   r, wishes & kWishShutdown ? "shut down" : "drain");
      drain_.store(true);
    }
    total += recv[r] = counts[r] & kResultSizeMask;
  }
  std::string all(total, '\0');
  RETURN_IF_ERROR(world_.AllToAllV(nullptr, send, all.data(), recv, {"step results", plan.step}));
  size_t at = 0;
  for (int r = 0; r < n; ++r) {
    if (recv[r] == 0) continue;  // this rank, and ranks that sampled for no group
    ASSIGN_OR_RETURN(std::vector<StepToken> part, ParseStepTokens(all.substr(at, recv[r])));
    tokens->insert(tokens->end(), part.begin(), part.end());
    at += recv[r];
  }
  return absl::OkStatus();
}

absl::Status Engine::Run() {
  auto last_broadcast = std::chrono::steady_clock::now();
  const auto heartbeat = absl::ToChronoMilliseconds(options_.heartbeat);
  bool draining = false;
  std::vector<StepToken> tokens;
  for (;;) {
    if (drain_.load() && !draining) {
      draining = true;
      scheduler_.Drain();
    }
    StepPlan plan = scheduler_.NextStep();
    const bool idle = plan.seqs.empty() && plan.release.empty();
    if (idle && draining && scheduler_.Idle()) break;
    if (idle && std::chrono::steady_clock::now() - last_broadcast < heartbeat) {
      std::this_thread::sleep_for(absl::ToChronoMicroseconds(options_.idle_poll));
      continue;
    }
    plan.step = ++step_;
    const auto step_start = std::chrono::steady_clock::now();
    absl::Status st = Step(plan, &tokens);
    if (!st.ok()) {
      const std::string suspects = options_.suspects ? options_.suspects() : std::string();
      const absl::Status gone = absl::UnavailableError(
          absl::StrCat("the workers stopped answering: ", st.message(),
                       suspects.empty() ? "" : "; the liveness watch: ", suspects));
      scheduler_.FailAll(gone);
      return gone;
    }
    last_broadcast = std::chrono::steady_clock::now();
    if (!plan.seqs.empty() && options_.on_step) {
      options_.on_step(plan, std::chrono::duration<double>(last_broadcast - step_start).count());
    }
    if (!plan.seqs.empty()) scheduler_.OnStepDone(tokens);
  }
  if (options_.before_shutdown) options_.before_shutdown();
  StepPlan bye;
  bye.step = ++step_;
  bye.shutdown = 1;
  std::vector<StepToken> none;
  return Step(bye, &none);
}

}  // namespace flotilla
