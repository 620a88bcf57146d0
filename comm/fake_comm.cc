#include "comm/fake_comm.h"

#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace flotilla {

// Shared by every hub created from one FakeCommGroup::Create, splits included, so that Abort and
// timeouts wake every waiter of the group.
struct FakeGroupState {
  std::mutex mu;
  std::condition_variable cv;
  absl::Status aborted;  // first Abort() of any rank
};

// One arguments record per rank and call; pointers stay valid while that rank waits in the call.
struct FakeArgs {
  const void* send = nullptr;
  void* recv = nullptr;
  absl::Span<const size_t> send_bytes;
  absl::Span<const size_t> recv_bytes;
  float* data = nullptr;
  size_t count = 0;  // floats (AllReduceSum) or bytes (AllGather, Broadcast)
  int root = 0;
  int color = 0;
  int key = 0;
  const CommOptions* options = nullptr;
  Comm::CallContext call{};
};

struct FakeOp {
  const char* op = nullptr;
  std::vector<char> arrived;
  std::vector<FakeArgs> args;
  int num_arrived = 0;
  int num_collected = 0;
  bool done = false;     // executed; results[] are final
  bool failed = false;   // abandoned (a rank timed out or calls mismatched); will never execute
  absl::Status failure;  // why, as seen by failure_rank, the rank that found it
  int failure_rank = -1;
  absl::Duration failure_timeout;  // timeouts: failure_rank's bound
  std::string waiting_on;          // timeouts: "no answer from ranks [..]"
  std::vector<absl::Status> results;
  std::vector<std::unique_ptr<Comm>> children;  // Split
};

struct FakeHub {
  std::shared_ptr<FakeGroupState> group;
  std::vector<int> world_ranks;
  std::map<uint64_t, std::unique_ptr<FakeOp>> ops;  // by call number
  absl::Status broken;  // first failure; the hub takes no new calls after it
};

std::vector<std::unique_ptr<Comm>> FakeCommGroup::Create(int n, const CommOptions& options) {
  auto hub = std::make_shared<FakeHub>();
  hub->group = std::make_shared<FakeGroupState>();
  for (int r = 0; r < n; ++r) hub->world_ranks.push_back(r);
  std::vector<std::unique_ptr<Comm>> comms;
  for (int r = 0; r < n; ++r) comms.push_back(std::make_unique<FakeComm>(r, hub, options));
  return comms;
}

FakeComm::FakeComm(int rank, std::shared_ptr<FakeHub> hub, const CommOptions& options)
    : Comm(rank, hub->world_ranks, options), hub_(std::move(hub)) {}

FakeComm::~FakeComm() { (void)Shutdown(); }

template <typename Execute>
absl::Status FakeComm::Run(const CallContext& call, const FakeArgs& args, Execute execute,
                           std::unique_ptr<Comm>* child) {
  FakeGroupState& group = *hub_->group;
  std::unique_lock<std::mutex> lock(group.mu);
  if (!group.aborted.ok()) {
    return absl::AbortedError(absl::StrCat(Describe(call), ": ", group.aborted.message()));
  }
  if (!hub_->broken.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        Describe(call), ": comm unusable after an earlier error: ", hub_->broken.message()));
  }
  const uint64_t seq = seq_++;
  std::unique_ptr<FakeOp>& slot = hub_->ops[seq];
  if (slot == nullptr) {
    slot = std::make_unique<FakeOp>();
    slot->op = call.op;
    slot->arrived.assign(size(), 0);
    slot->args.resize(size());
    slot->results.assign(size(), absl::OkStatus());
    slot->children.resize(size());
  }
  FakeOp& op = *slot;
  op.args[rank()] = args;
  op.args[rank()].call = call;
  op.arrived[rank()] = 1;
  ++op.num_arrived;

  absl::Status result;
  if (std::strcmp(op.op, call.op) != 0) {
    // Ranks disagree on the call order: a programming error that would hang a real transport.
    int other = 0;
    while (other < size() && (other == rank() || !op.arrived[other])) ++other;
    op.failed = true;
    op.failure =
        absl::InternalError(absl::StrCat("collective mismatch at call ", seq, ": ", Describe(call),
                                         " but ", DescribeAs(other, op.args[other].call)));
    op.failure_rank = rank();
    hub_->broken = op.failure;
    group.cv.notify_all();
    result = op.failure;
  } else if (op.num_arrived == size()) {
    execute(op);
    op.done = true;
    group.cv.notify_all();
  } else {
    while (!op.done && !op.failed && group.aborted.ok()) {
      if (group.cv.wait_until(lock, call.deadline) == std::cv_status::timeout && !op.done &&
          !op.failed && group.aborted.ok()) {
        std::vector<int> missing;
        for (int r = 0; r < size(); ++r) {
          if (!op.arrived[r]) missing.push_back(r);
        }
        op.failed = true;
        op.waiting_on = absl::StrCat("no answer from ranks ", PeerList(missing));
        op.failure = TimeoutError(call, op.waiting_on);
        op.failure_rank = rank();
        op.failure_timeout = call.timeout;
        hub_->broken = op.failure;
        group.cv.notify_all();
      }
    }
  }
  if (result.ok()) {
    if (op.done) {
      result = op.results[rank()];
      if (child != nullptr) *child = std::move(op.children[rank()]);
    } else if (op.failed) {
      // The rank that found the failure returns it as is; the others say who gave up.
      if (op.failure_rank == rank()) {
        result = op.failure;
      } else if (!op.waiting_on.empty()) {
        result = absl::DeadlineExceededError(absl::StrCat(
            Describe(call), " abandoned: ", PeerName(op.failure_rank), " gave up after ",
            absl::FormatDuration(op.failure_timeout), "; ", op.waiting_on));
      } else {
        result = absl::Status(op.failure.code(),
                              absl::StrCat(Describe(call), ": ", op.failure.message()));
      }
    } else {
      result = absl::AbortedError(absl::StrCat(Describe(call), ": ", group.aborted.message()));
    }
  }
  if (++op.num_collected == op.num_arrived && (op.done || op.failed)) hub_->ops.erase(seq);
  return result;
}

absl::Status FakeComm::DoAllToAllV(const void* send, absl::Span<const size_t> send_bytes,
                                   void* recv, absl::Span<const size_t> recv_bytes,
                                   const CallContext& call) {
  FakeArgs args;
  args.send = send;
  args.recv = recv;
  args.send_bytes = send_bytes;
  args.recv_bytes = recv_bytes;
  return Run(call, args, [&](FakeOp& op) {
    const int n = size();
    for (int dst = 0; dst < n; ++dst) {
      const FakeArgs& to = op.args[dst];
      size_t recv_offset = 0;
      for (int src = 0; src < n; ++src) {
        const FakeArgs& from = op.args[src];
        size_t send_offset = 0;
        for (int q = 0; q < dst; ++q) send_offset += from.send_bytes[q];
        const size_t sent = from.send_bytes[dst];
        const size_t expected = to.recv_bytes[src];
        if (sent != expected && op.results[dst].ok()) {
          op.results[dst] = absl::InvalidArgumentError(
              absl::StrCat(DescribeAs(dst, to.call), ": expected ", expected, " bytes from ",
                           PeerName(src), ", which sends ", sent));
        } else if (sent > 0) {
          std::memcpy(static_cast<char*>(to.recv) + recv_offset,
                      static_cast<const char*>(from.send) + send_offset, sent);
        }
        recv_offset += expected;
      }
    }
  });
}

absl::Status FakeComm::DoAllReduceSum(float* data, size_t count, const CallContext& call) {
  FakeArgs args;
  args.data = data;
  args.count = count;
  return Run(call, args, [&](FakeOp& op) {
    const int n = size();
    for (int r = 1; r < n; ++r) {
      if (op.args[r].count != op.args[0].count) {
        for (int q = 0; q < n; ++q) {
          op.results[q] = absl::InvalidArgumentError(absl::StrCat(
              DescribeAs(q, op.args[q].call), ": float counts differ: ", PeerName(0), " has ",
              op.args[0].count, ", ", PeerName(r), " has ", op.args[r].count));
        }
        return;
      }
    }
    // Rank order, one accumulator per element: ((x0 + x1) + x2) + ...
    std::vector<float> sum(op.args[0].data, op.args[0].data + count);
    for (int r = 1; r < n; ++r) {
      const float* x = op.args[r].data;
      for (size_t i = 0; i < count; ++i) sum[i] += x[i];
    }
    for (int r = 0; r < n; ++r) {
      if (count > 0) std::memcpy(op.args[r].data, sum.data(), count * sizeof(float));
    }
  });
}

absl::Status FakeComm::DoAllGather(const void* send, size_t bytes_per_rank, void* recv,
                                   const CallContext& call) {
  FakeArgs args;
  args.send = send;
  args.recv = recv;
  args.count = bytes_per_rank;
  return Run(call, args, [&](FakeOp& op) {
    const int n = size();
    for (int r = 1; r < n; ++r) {
      if (op.args[r].count != op.args[0].count) {
        for (int q = 0; q < n; ++q) {
          op.results[q] = absl::InvalidArgumentError(absl::StrCat(
              DescribeAs(q, op.args[q].call), ": bytes per rank differ: ", PeerName(0), " has ",
              op.args[0].count, ", ", PeerName(r), " has ", op.args[r].count));
        }
        return;
      }
    }
    const size_t bytes = op.args[0].count;
    if (bytes == 0) return;
    for (int dst = 0; dst < n; ++dst) {
      for (int src = 0; src < n; ++src) {
        char* to = static_cast<char*>(op.args[dst].recv) + src * bytes;
        if (to != op.args[src].send) std::memcpy(to, op.args[src].send, bytes);
      }
    }
  });
}

absl::Status FakeComm::DoBroadcast(void* data, size_t bytes, int root, const CallContext& call) {
  FakeArgs args;
  args.recv = data;
  args.count = bytes;
  args.root = root;
  return Run(call, args, [&](FakeOp& op) {
    const int n = size();
    for (int r = 0; r < n; ++r) {
      if (op.args[r].count != op.args[0].count || op.args[r].root != op.args[0].root) {
        for (int q = 0; q < n; ++q) {
          op.results[q] = absl::InvalidArgumentError(
              absl::StrCat(DescribeAs(q, op.args[q].call), ": (root, bytes) differ: ", PeerName(0),
                           " has (", op.args[0].root, ", ", op.args[0].count, "), ", PeerName(r),
                           " has (", op.args[r].root, ", ", op.args[r].count, ")"));
        }
        return;
      }
    }
    const FakeArgs& from = op.args[op.args[0].root];
    if (from.count == 0) return;
    for (int r = 0; r < n; ++r) {
      if (op.args[r].recv != from.recv) std::memcpy(op.args[r].recv, from.recv, from.count);
    }
  });
}

absl::Status FakeComm::DoBarrier(const CallContext& call) {
  return Run(call, FakeArgs{}, [](FakeOp&) {});
}

absl::StatusOr<std::unique_ptr<Comm>> FakeComm::DoSplit(int color, int key,
                                                        const CallContext& call) {
  FakeArgs args;
  args.color = color;
  args.key = key;
  args.options = &options();
  std::unique_ptr<Comm> child;
  absl::Status status = Run(
      call, args,
      [&](FakeOp& op) {
        const int n = size();
        std::vector<int> colors(n), keys(n);
        for (int r = 0; r < n; ++r) {
          colors[r] = op.args[r].color;
          keys[r] = op.args[r].key;
        }
        std::map<int, std::shared_ptr<FakeHub>> hubs;
        for (int r = 0; r < n; ++r) {
          if (hubs.count(colors[r])) continue;
          const std::vector<int> members = SplitMembers(colors, keys, colors[r]);
          auto hub = std::make_shared<FakeHub>();
          hub->group = hub_->group;
          for (int m : members) hub->world_ranks.push_back(hub_->world_ranks[m]);
          for (size_t i = 0; i < members.size(); ++i) {
            op.children[members[i]] =
                std::make_unique<FakeComm>(static_cast<int>(i), hub, *op.args[members[i]].options);
          }
          hubs[colors[r]] = std::move(hub);
        }
      },
      &child);
  if (!status.ok()) return status;
  return child;
}

void FakeComm::DoAbort(const absl::Status& status) {
  FakeGroupState& group = *hub_->group;
  std::lock_guard<std::mutex> lock(group.mu);
  if (group.aborted.ok()) {
    group.aborted = absl::AbortedError(
        absl::StrCat("world rank ", world_rank(rank()), " aborted: ", status.ToString()));
  }
  group.cv.notify_all();
}

absl::Status FakeComm::DoShutdown() { return absl::OkStatus(); }

}  // namespace flotilla
