// The worker control plane through real gRPC on 127.0.0.1: a fake WorkerControlLogic behind
// WorkerControlServer, asked by WorkerControlClient; errors keep their codes; an unreachable
// worker fails within the deadline; the coordinator's cluster status shows the reports.
#include "comm/worker_control.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <vector>
#include <mutex>

#include "coordinator/grpc_server.h"
#include "coordinator/liveness.h"
#include "flotilla/v1/flotilla.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/tokenizer/test_data.h"
#include "tests/coordinator/fake_backend.h"

namespace flotilla {
namespace {

using namespace std::chrono_literals;

class FakeWorker : public WorkerControlLogic {
 public:
  WorkerHealth Health() override {
    std::lock_guard<std::mutex> lock(mu_);
    return {state_, 3, state_ == WorkerState::kLoading ? "loading shard 3/4" : ""};
  }
  WorkerLoadProgress LoadProgress() override {
    WorkerLoadProgress p;
    p.bytes_loaded = 3 << 20;
    p.bytes_total = 4 << 20;
    p.tensors_loaded = 30;
    p.tensors_total = 40;
    return p;
  }
  WorkerStats Stats() override {
    WorkerStats s;
    s.world_rank = 3;
    s.dp_group = 1;
    s.tp_rank = 0;
    s.steps = 1234;
    s.tokens_processed = 98765;
    s.sequences = 5;
    s.kv_pages_total = 100;
    s.kv_pages_used = 42;
    s.kv_pool_bytes = 1ull << 33;
    s.weight_bytes = 1ull << 34;
    s.uptime_s = 12.5;
    s.device = "cpu";
    return s;
  }
  absl::Status Drain() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (state_ != WorkerState::kReady) {
      return absl::FailedPreconditionError(
          absl::StrCat("rank 3 is ", WorkerStateName(state_), ", not ready"));
    }
    state_ = WorkerState::kDraining;
    return absl::OkStatus();
  }
  absl::Status Shutdown(const std::string& reason) override {
    std::lock_guard<std::mutex> lock(mu_);
    shutdown_reason_ = reason;
    state_ = WorkerState::kStopping;
    return absl::OkStatus();
  }
  void set_state(WorkerState s) {
    std::lock_guard<std::mutex> lock(mu_);
    state_ = s;
  }
  std::string shutdown_reason() {
    std::lock_guard<std::mutex> lock(mu_);
    return shutdown_reason_;
  }

 private:
  std::mutex mu_;
  WorkerState state_ = WorkerState::kLoading;
  std::string shutdown_reason_;
};

TEST(WorkerControlTest, RoundTrip) {
  FakeWorker worker;
  auto server = WorkerControlServer::Start({}, &worker);
  ASSERT_TRUE(server.ok()) << server.status();
  WorkerControlClient client((*server)->endpoint());

  auto health = client.Health(5s);
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(health->state, WorkerState::kLoading);
  EXPECT_EQ(health->world_rank, 3);
  EXPECT_EQ(health->message, "loading shard 3/4");

  auto load = client.LoadProgress(5s);
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ(load->bytes_loaded, 3u << 20);
  EXPECT_EQ(load->tensors_total, 40);
  EXPECT_FALSE(load->done);

  auto stats = client.Stats(5s);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->steps, 1234);
  EXPECT_EQ(stats->kv_pages_used, 42);
  EXPECT_EQ(stats->kv_pool_bytes, 1ull << 33);
  EXPECT_EQ(stats->weight_bytes, 1ull << 34);
  EXPECT_DOUBLE_EQ(stats->uptime_s, 12.5);
  EXPECT_EQ(stats->device, "cpu");

  // The logic's errors keep their code and message.
  absl::Status drain = client.Drain(5s);
  EXPECT_EQ(drain.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(drain.message(), "rank 3 is loading, not ready");
  worker.set_state(WorkerState::kReady);
  EXPECT_TRUE(client.Drain(5s).ok());
  EXPECT_EQ(client.Health(5s)->state, WorkerState::kDraining);

  EXPECT_TRUE(client.Shutdown("job ends", 5s).ok());
  EXPECT_EQ(worker.shutdown_reason(), "job ends");
  EXPECT_EQ(client.Health(5s)->state, WorkerState::kStopping);

  const WorkerReport report = client.Report(3, 5s);
  EXPECT_TRUE(report.error.empty()) << report.error;
  EXPECT_EQ(report.address, (*server)->endpoint());
  EXPECT_EQ(report.stats.tokens_processed, 98765);

  EXPECT_TRUE((*server)->Shutdown(std::chrono::system_clock::now() + 1s).ok());
  EXPECT_TRUE((*server)->Shutdown(std::chrono::system_clock::now()).ok());  // idempotent
}

TEST(WorkerControlTest, UnreachableWorkerFailsWithinTheDeadline) {
  int port = 0;
  {
    FakeWorker worker;
    auto server = WorkerControlServer::Start({}, &worker);
    ASSERT_TRUE(server.ok());
    port = (*server)->port();
  }  // gone: nothing listens on `port` now
  WorkerControlClient client(absl::StrCat("127.0.0.1:", port));
  const auto start = std::chrono::steady_clock::now();
  auto health = client.Health(500ms);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  ASSERT_FALSE(health.ok());
  EXPECT_TRUE(health.status().code() == absl::StatusCode::kUnavailable ||
              health.status().code() == absl::StatusCode::kDeadlineExceeded)
      << health.status();
  const WorkerReport report = client.Report(2, 500ms);
  EXPECT_NE(report.error.find(absl::StrCat("127.0.0.1:", port, " Health: ")), std::string::npos)
      << report.error;
}

// The coordinator's GetClusterStatus built from live worker reports.
TEST(WorkerControlTest, ClusterStatusCarriesWorkerReports) {
  FakeWorker worker;
  worker.set_state(WorkerState::kReady);
  auto worker_server = WorkerControlServer::Start({}, &worker);
  ASSERT_TRUE(worker_server.ok());
  WorkerControlClient worker_client((*worker_server)->endpoint());

  testing::FakeBackend backend(&testing::ProjectTokenizer());
  FrontDoor door(ModelConfig(), &testing::ProjectTokenizer(), &backend);
  ServingCallbacks callbacks;
  callbacks.cluster_status = [&] {
    ClusterStatus status;
    status.workers.push_back(worker_client.Report(1, 2s));
    status.workers.push_back(WorkerControlClient("127.0.0.1:1").Report(2, 300ms));
    return status;
  };
  auto server = ServingServer::Start({}, &door, std::move(callbacks));
  ASSERT_TRUE(server.ok());
  auto stub = v1::Flotilla::NewStub(
      grpc::CreateChannel((*server)->endpoint(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 20s);
  v1::ClusterStatus status;
  ASSERT_TRUE(stub->GetClusterStatus(&ctx, v1::GetClusterStatusRequest(), &status).ok());
  ASSERT_EQ(status.workers_size(), 2);
  EXPECT_EQ(status.workers(0).world_rank(), 1);
  EXPECT_EQ(status.workers(0).health().state(), v1::WORKER_STATE_READY);
  EXPECT_EQ(status.workers(0).stats().kv_pages_total(), 100);
  EXPECT_EQ(status.workers(0).load().tensors_loaded(), 30);
  EXPECT_TRUE(status.workers(0).error().empty());
  EXPECT_EQ(status.workers(1).world_rank(), 2);
  EXPECT_FALSE(status.workers(1).error().empty());
}

// ---- liveness (issue 13, item 4) ----

TEST(LivenessTable, LateAndGoneRanksAreNamed) {
  using Clock = LivenessTable::Clock;
  const Clock::time_point t0 = Clock::now();
  LivenessTable t({{1, "a:1"}, {2, "b:2"}}, 5000ms, t0);
  EXPECT_TRUE(t.Check(t0 + 4900ms).ok());
  t.OnReport(1, t0 + 1000ms);
  // Rank 2 has been silent since the start (5.5 s); rank 1 for 4.5 s.
  absl::Status st = t.Check(t0 + 5500ms);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(st.message(),
            "worker rank 2 (b:2) has not answered for 5.5 s (liveness deadline 5.0 s); not "
            "admitting requests until it does");
  // Both late: the lowest rank is named.
  EXPECT_NE(std::string(t.Check(t0 + 6500ms).message()).find("worker rank 1 (a:1) has not answered for 5.5 s"),
            std::string::npos);
  t.OnReport(1, t0 + 6000ms);
  t.OnReport(2, t0 + 6000ms);
  EXPECT_TRUE(t.Check(t0 + 6500ms).ok());
  EXPECT_FALSE(t.AnyGone());
  // Gone comes before late, and stays.
  t.OnGone(2, absl::UnavailableError("b:2: Socket closed"));
  st = t.Check(t0 + 6500ms);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(st.message(), "worker rank 2 (b:2) is gone: b:2: Socket closed");
  EXPECT_TRUE(t.AnyGone());
  t.OnReport(2, t0 + 7000ms);
  EXPECT_FALSE(t.Check(t0 + 7000ms).ok());
}

// A failed step names every rank the watch has lost, not only the lowest.
TEST(LivenessTable, SuspectsNamesEveryGoneAndLateRank) {
  using Clock = LivenessTable::Clock;
  const Clock::time_point t0 = Clock::now();
  LivenessTable t({{1, "a:1"}, {2, "b:2"}, {3, "c:3"}, {4, "d:4"}}, 5000ms, t0);
  EXPECT_EQ(t.Suspects(t0 + 4000ms), "");
  t.OnReport(1, t0 + 6000ms);
  t.OnReport(2, t0 + 6000ms);
  EXPECT_EQ(t.Suspects(t0 + 7200ms),
            "worker rank 3 (c:3) silent for 7.2 s; worker rank 4 (d:4) silent for 7.2 s");
  t.OnGone(4, absl::UnavailableError("d:4: Socket closed"));
  EXPECT_EQ(t.Suspects(t0 + 7200ms),
            "worker rank 3 (c:3) silent for 7.2 s; worker rank 4 (d:4) is gone: d:4: Socket closed");
}

// A worker whose Health() can be held, as a stopped process holds it.
class HangingWorker : public FakeWorker {
 public:
  WorkerHealth Health() override {
    std::unique_lock<std::mutex> lock(hang_mu_);
    hang_cv_.wait(lock, [&] { return !hang_; });
    return FakeWorker::Health();
  }
  void set_hang(bool hang) {
    std::lock_guard<std::mutex> lock(hang_mu_);
    hang_ = hang;
    hang_cv_.notify_all();
  }

 private:
  std::mutex hang_mu_;
  std::condition_variable hang_cv_;
  bool hang_ = false;
};

TEST(LivenessMonitor, HungThenBackThenGone) {
  HangingWorker logic;
  auto server = WorkerControlServer::Start(WorkerControlServerOptions(), &logic);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = (*server)->endpoint();
  std::mutex mu;
  std::condition_variable cv;
  std::vector<absl::Status> changes, gone;
  LivenessOptions options;
  options.deadline = 500ms;
  options.interval = 50ms;
  LivenessMonitor monitor(
      {{7, address}}, options,
      [&](const absl::Status& st) {
        std::lock_guard<std::mutex> lock(mu);
        changes.push_back(st);
        cv.notify_all();
      },
      [&](const absl::Status& st) {
        std::lock_guard<std::mutex> lock(mu);
        gone.push_back(st);
        cv.notify_all();
      });
  auto wait_changes = [&](size_t n) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, 20s, [&] { return changes.size() >= n; });
  };
  logic.set_hang(true);
  ASSERT_TRUE(wait_changes(1)) << "a hung worker was not noticed";
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(changes[0].code(), absl::StatusCode::kUnavailable);
    EXPECT_NE(std::string(changes[0].message())
                  .find("worker rank 7 (" + address + ") has not answered for"),
              std::string::npos)
        << changes[0];
    EXPECT_TRUE(gone.empty());
  }
  logic.set_hang(false);
  ASSERT_TRUE(wait_changes(2)) << "the worker's return was not noticed";
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_TRUE(changes[1].ok()) << changes[1];
  }
  (*server)->Shutdown(std::chrono::system_clock::now()).IgnoreError();
  ASSERT_TRUE(wait_changes(3)) << "a gone worker was not noticed";
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(gone.size(), 1u);
  EXPECT_EQ(gone[0].code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(std::string(gone[0].message()).find("worker rank 7 (" + address + ") is gone: "),
            std::string::npos)
      << gone[0];
  EXPECT_EQ(changes[2], gone[0]);
}

}  // namespace
}  // namespace flotilla
