// Comm: collective communication on a fixed group of ranks (design §7a).
//
// Implementations: FakeComm (in-process threads, for tests), MpiComm (host buffers),
// NcclComm (device buffers). All share these rules:
//  * Every collective is called by all ranks of the group, in the same order, with matching
//    sizes. A call returns once this rank's part is complete and its buffers may be reused.
//  * Every call is bounded: by `timeout`, or options().timeout when none is given. A call that
//    runs out returns DEADLINE_EXCEEDED naming this rank, the call, the step and the peers that
//    had not answered (where the transport knows them).
//  * Local argument errors return INVALID_ARGUMENT and leave the comm usable. Any other error
//    (timeout, transport error, size mismatch between peers, a peer's Abort) leaves the comm
//    unusable: later calls return FAILED_PRECONDITION quoting the first error. The expected
//    reaction is Abort(), which ends the job with the message on every rank.
//  * Not thread-safe: one thread at a time per object.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace flotilla {

// Where a communication call comes from; named in every error and timeout message.
struct CallSite {
  const char* what = "";  // e.g. "moe dispatch layer 7"; must outlive the call
  int64_t step = -1;      // engine step; -1 outside the step loop
};

// The one options struct for every Comm implementation.
struct CommOptions {
  // Bound on every call given no explicit timeout (and on setup: World(), NCCL init).
  absl::Duration timeout = absl::Seconds(60);
  // Abort(): how long the failing rank lets its peers report its message before the job is
  // killed (MpiComm; FakeComm needs none).
  absl::Duration abort_grace = absl::Seconds(1);
};

class Comm {
 public:
  // One call in flight, as handed to the transport hooks: what it is, who asked, its bound.
  struct CallContext {
    const char* op;  // "AllToAllV", ...
    CallSite site;
    absl::Duration timeout;
    std::chrono::steady_clock::time_point deadline;
  };

  virtual ~Comm() = default;
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  // World rank of group rank `group_rank` (identity for a world comm); used in messages.
  int world_rank(int group_rank) const { return world_ranks_[group_rank]; }
  const CommOptions& options() const { return options_; }

  // Personalized all-to-all. `send` holds size() blocks back to back in peer order; block q
  // (send_bytes[q] bytes) goes to rank q. `recv` receives block p (recv_bytes[p] bytes) from
  // rank p, in peer order. recv_bytes[p] must equal rank p's send_bytes[rank()]. Blocks may be
  // empty; send and recv must not overlap.
  absl::Status AllToAllV(const void* send, absl::Span<const size_t> send_bytes, void* recv,
                         absl::Span<const size_t> recv_bytes, const CallSite& site,
                         std::optional<absl::Duration> timeout = std::nullopt);

  // In-place sum of `count` floats over all ranks. Host implementations are deterministic: every
  // element is summed in rank order ((x0 + x1) + x2) + ... and the result is bitwise identical on
  // every rank, whatever the timing. (NcclComm: see nccl_comm.h.)
  absl::Status AllReduceSum(float* data, size_t count, const CallSite& site,
                            std::optional<absl::Duration> timeout = std::nullopt);

  // `send` (bytes_per_rank bytes, equal on every rank) lands in block rank() of `recv`
  // (size() * bytes_per_rank bytes, rank order). send may be that block of recv (in place).
  absl::Status AllGather(const void* send, size_t bytes_per_rank, void* recv, const CallSite& site,
                         std::optional<absl::Duration> timeout = std::nullopt);

  // Copies `bytes` at `data` on rank `root` to `data` on every other rank.
  absl::Status Broadcast(void* data, size_t bytes, int root, const CallSite& site,
                         std::optional<absl::Duration> timeout = std::nullopt);

  // Returns once every rank of the group has entered the barrier.
  absl::Status Barrier(const CallSite& site, std::optional<absl::Duration> timeout = std::nullopt);

  // Collective: ranks passing the same color (>= 0) form a new comm, ranked by (key, rank()).
  // E.g. TP groups: Split(rank / tp, rank % tp). The new comm inherits options().
  absl::StatusOr<std::unique_ptr<Comm>> Split(int color, int key, const CallSite& site,
                                              std::optional<absl::Duration> timeout = std::nullopt);

  // Fatal error on this rank: every rank of the job fails with `status`'s message instead of
  // hanging. FakeComm: every pending and later call of the whole fake group (splits included)
  // returns ABORTED quoting it. MpiComm: peers waiting in a call return ABORTED quoting it, then
  // the job is ended with MPI_Abort (never returns). May be called from any thread (MpiComm then
  // relies on MPI_THREAD_MULTIPLE, which World() requests).
  void Abort(const absl::Status& status);

  // Releases the transport's resources; later calls return FAILED_PRECONDITION. Local (not a
  // collective), idempotent; destructors call it.
  absl::Status Shutdown();

 protected:
  // world_ranks: world rank of every group rank (size() entries).
  Comm(int rank, std::vector<int> world_ranks, const CommOptions& options);

  // Transport hooks: arguments are validated and the comm is known usable.
  virtual absl::Status DoAllToAllV(const void* send, absl::Span<const size_t> send_bytes,
                                   void* recv, absl::Span<const size_t> recv_bytes,
                                   const CallContext& call) = 0;
  virtual absl::Status DoAllReduceSum(float* data, size_t count, const CallContext& call) = 0;
  virtual absl::Status DoAllGather(const void* send, size_t bytes_per_rank, void* recv,
                                   const CallContext& call) = 0;
  virtual absl::Status DoBroadcast(void* data, size_t bytes, int root, const CallContext& call) = 0;
  virtual absl::Status DoBarrier(const CallContext& call) = 0;
  virtual absl::StatusOr<std::unique_ptr<Comm>> DoSplit(int color, int key,
                                                        const CallContext& call) = 0;
  virtual void DoAbort(const absl::Status& status) = 0;
  virtual absl::Status DoShutdown() = 0;

  // "rank 1/4 (world 5): AllToAllV 'moe dispatch layer 7' step 12"
  std::string Describe(const CallContext& call) const { return DescribeAs(rank_, call); }
  // The same for another rank of the group (as that rank would describe its call).
  std::string DescribeAs(int group_rank, const CallContext& call) const;
  // "rank 2 (world 6)" or "rank 2" for a world comm.
  std::string PeerName(int group_rank) const;
  // "[0, 2 (world 4)]"
  std::string PeerList(absl::Span<const int> group_ranks) const;
  // DEADLINE_EXCEEDED: Describe(call) + " did not complete within T; " + waiting_on.
  absl::Status TimeoutError(const CallContext& call, const std::string& waiting_on) const;
  // Prefixes `status`'s message with Describe(call), keeping its code.
  absl::Status Annotate(const CallContext& call, const absl::Status& status) const;

  // Members of `color` ordered by (key, group rank), given every rank's color and key.
  static std::vector<int> SplitMembers(absl::Span<const int> colors, absl::Span<const int> keys,
                                       int color);

 private:
  absl::StatusOr<CallContext> Begin(const char* op, const CallSite& site,
                                    std::optional<absl::Duration> timeout) const;
  // Marks the comm unusable after a transport error; returns `status`.
  absl::Status Fail(absl::Status status);

  int rank_;
  int size_;
  std::vector<int> world_ranks_;
  CommOptions options_;
  absl::Status broken_;  // first error that made the comm unusable
  bool shut_down_ = false;
};

}  // namespace flotilla
