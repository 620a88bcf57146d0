// FakeComm: an in-process Comm for tests. N ranks are N Comm objects, each driven by its own
// thread, sharing a hub (one mutex + condition variable per group, splits included). Same
// semantics as MpiComm: rank-order deterministic AllReduceSum, deadlines naming the ranks that
// never arrived, Split, Abort. Data is copied by the last rank to arrive at each call.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "comm/comm.h"

namespace flotilla {

struct FakeHub;   // fake_comm.cc
struct FakeArgs;  // fake_comm.cc
struct FakeOp;    // fake_comm.cc

class FakeCommGroup {
 public:
  // n >= 1 comms; comm i has rank i. Each must be used by one thread at a time.
  static std::vector<std::unique_ptr<Comm>> Create(int n, const CommOptions& options = {});
};

class FakeComm final : public Comm {
 public:
  FakeComm(int rank, std::shared_ptr<FakeHub> hub, const CommOptions& options);
  ~FakeComm() override;

 private:
  absl::Status DoAllToAllV(const void* send, absl::Span<const size_t> send_bytes, void* recv,
                           absl::Span<const size_t> recv_bytes, const CallContext& call) override;
  absl::Status DoAllReduceSum(float* data, size_t count, const CallContext& call) override;
  absl::Status DoAllGather(const void* send, size_t bytes_per_rank, void* recv,
                           const CallContext& call) override;
  absl::Status DoBroadcast(void* data, size_t bytes, int root, const CallContext& call) override;
  absl::Status DoBarrier(const CallContext& call) override;
  absl::StatusOr<std::unique_ptr<Comm>> DoSplit(int color, int key,
                                                const CallContext& call) override;
  void DoAbort(const absl::Status& status) override;
  absl::Status DoShutdown() override;

  // Joins call number seq_ of the hub with `args`; the last rank to arrive runs `execute` on
  // everyone's arguments (under the hub lock) and fills each rank's result.
  template <typename Execute>
  absl::Status Run(const CallContext& call, const FakeArgs& args, Execute execute,
                   std::unique_ptr<Comm>* child = nullptr);

  std::shared_ptr<FakeHub> hub_;
  uint64_t seq_ = 0;  // calls made on this comm; equal across ranks while in step
};

}  // namespace flotilla
