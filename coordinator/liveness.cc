#include "coordinator/liveness.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "comm/worker_control.h"

namespace flotilla {

LivenessTable::LivenessTable(std::vector<WorkerEndpoint> workers,
                             std::chrono::milliseconds deadline, Clock::time_point now)
    : deadline_(deadline) {
  for (WorkerEndpoint& w : workers) ranks_[w.world_rank] = Rank{std::move(w.address), now, {}};
}

void LivenessTable::OnReport(int32_t world_rank, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = ranks_.find(world_rank);
  if (it != ranks_.end()) it->second.last = std::max(it->second.last, now);
}

void LivenessTable::OnGone(int32_t world_rank, const absl::Status& why) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = ranks_.find(world_rank);
  if (it != ranks_.end() && it->second.gone.ok()) {
    it->second.gone = why.ok() ? absl::UnavailableError("its watch stream ended") : why;
  }
}

absl::Status LivenessTable::Check(Clock::time_point now) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [rank, r] : ranks_) {
    if (!r.gone.ok()) {
      return absl::UnavailableError(absl::StrCat("worker rank ", rank, " (", r.address,
                                                 ") is gone: ", r.gone.message()));
    }
  }
  for (const auto& [rank, r] : ranks_) {
    const auto silent = now - r.last;
    if (silent > deadline_) {
      return absl::UnavailableError(absl::StrFormat(
          "worker rank %d (%s) has not answered for %.1f s (liveness deadline %.1f s); not "
          "admitting requests until it does",
          rank, r.address, std::chrono::duration<double>(silent).count(),
          std::chrono::duration<double>(deadline_).count()));
    }
  }
  return absl::OkStatus();
}

std::string LivenessTable::Suspects(Clock::time_point now) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const auto& [rank, r] : ranks_) {
    const double silent = std::chrono::duration<double>(now - r.last).count();
    if (!r.gone.ok()) {
      absl::StrAppend(&out, out.empty() ? "" : "; ", "worker rank ", rank, " (", r.address,
                      ") is gone: ", r.gone.message());
    } else if (now - r.last > deadline_) {
      absl::StrAppendFormat(&out, "%sworker rank %d (%s) silent for %.1f s", out.empty() ? "" : "; ",
                            rank, r.address, silent);
    }
  }
  return out;
}

bool LivenessTable::AnyGone() const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [rank, r] : ranks_)
    if (!r.gone.ok()) return true;
  return false;
}

struct LivenessMonitor::Impl {
  LivenessOptions options;
  LivenessTable table;
  std::function<void(const absl::Status&)> on_change, on_gone;
  std::vector<std::unique_ptr<WorkerWatch>> watches;
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  bool woken = false;
  std::thread checker;

  Impl(const std::vector<WorkerEndpoint>& workers, const LivenessOptions& o)
      : options(o), table(workers, o.deadline, LivenessTable::Clock::now()) {}

  void Wake() {
    std::lock_guard<std::mutex> lock(mu);
    woken = true;
    cv.notify_all();
  }

  // Checks every tenth of the deadline (at most 100 ms), and at once when a stream ends.
  void Loop() {
    const auto tick = std::min(std::chrono::milliseconds(100), options.deadline / 10);
    enum { kLive, kLate, kGone } last = kLive;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait_for(lock, tick, [&] { return stop || woken; });
        if (stop) return;
        woken = false;
      }
      const absl::Status now = table.Check(LivenessTable::Clock::now());
      const auto state = now.ok() ? kLive : table.AnyGone() ? kGone : kLate;
      if (state == last) continue;
      std::fprintf(stderr, "flotilla-coordinator: %s\n",
                   now.ok() ? "every worker answers again" : std::string(now.message()).c_str());
      if (state == kGone) on_gone(now);
      on_change(now);
      last = state;
      if (state == kGone) return;  // final: the job is ending
    }
  }
};

LivenessMonitor::LivenessMonitor(std::vector<WorkerEndpoint> workers,
                                 const LivenessOptions& options,
                                 std::function<void(const absl::Status&)> on_change,
                                 std::function<void(const absl::Status&)> on_gone)
    : impl_(std::make_unique<Impl>(workers, options)) {
  impl_->on_change = std::move(on_change);
  impl_->on_gone = std::move(on_gone);
  Impl* impl = impl_.get();
  for (const WorkerEndpoint& w : workers) {
    const int32_t rank = w.world_rank;
    impl->watches.push_back(WorkerWatch::Start(
        w.address, options.interval,
        [impl, rank](const WorkerHealth&) {
          impl->table.OnReport(rank, LivenessTable::Clock::now());
        },
        [impl, rank](const absl::Status& end) {
          {
            std::lock_guard<std::mutex> lock(impl->mu);
            if (impl->stop) return;  // Stop() cancelled it
          }
          impl->table.OnGone(rank, end);
          impl->Wake();
        }));
  }
  impl->checker = std::thread([impl] { impl->Loop(); });
}

LivenessMonitor::~LivenessMonitor() { Stop(); }

std::string LivenessMonitor::Suspects() const {
  return impl_->table.Suspects(LivenessTable::Clock::now());
}

void LivenessMonitor::Stop() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->stop) return;
    impl_->stop = true;
    impl_->cv.notify_all();
  }
  impl_->checker.join();
  for (auto& w : impl_->watches) w->Stop();
}

}  // namespace flotilla
