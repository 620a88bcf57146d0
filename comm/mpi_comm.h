// MpiComm: Comm over an MPI communicator, host buffers.
//
// Every operation is built from non-blocking point-to-point messages (MPI_Isend / MPI_Irecv)
// polled with MPI_Testsome until done or the deadline passes, so a timeout can say exactly which
// peers had not sent (or not taken) their data, and pending receives can be cancelled. Each call
// uses its own tag (the call number on this comm), so stale messages never match a later call.
// MPI errors (MPI_ERRORS_RETURN is set on every communicator) become Status values naming the
// rank, the operation and the MPI call.
//
// Process lifetime: World() initializes MPI once (MPI_Init_thread); FinalizeProcess() ends it
// after every MpiComm is gone. On a fatal error call Abort() instead, which never returns.
#pragma once

#include <mpi.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "comm/comm.h"

namespace flotilla {

class MpiAbortChannel;  // mpi_comm.cc

class MpiComm final : public Comm {
 public:
  // All ranks must call. Initializes MPI if needed (MPI_THREAD_MULTIPLE requested, at least
  // MPI_THREAD_SERIALIZED required) and returns a comm over a duplicate of MPI_COMM_WORLD. The
  // duplication is bounded by options.timeout.
  static absl::StatusOr<std::unique_ptr<MpiComm>> World(const CommOptions& options = {},
                                                        int* argc = nullptr,
                                                        char*** argv = nullptr);

  // MPI_Finalize, if World() initialized MPI. FAILED_PRECONDITION while any MpiComm is alive.
  // All ranks must call (MPI_Finalize synchronizes); idempotent.
  static absl::Status FinalizeProcess();

  ~MpiComm() override;

  // The underlying communicator (valid until Shutdown), for code that must call MPI directly.
  MPI_Comm raw() const { return comm_; }

  // One side of a point-to-point transfer within a call (internal; public for mpi_comm.cc).
  struct Transfer {
    int peer;
    bool is_send;
    void* buf;
    size_t bytes;
  };

 private:
  MpiComm(MPI_Comm comm, int rank, std::vector<int> world_ranks,
          std::shared_ptr<MpiAbortChannel> abort_channel, const CommOptions& options);

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

  // Posts every transfer (receives first; messages over 1 GiB in pieces) with this call's tag,
  // runs `local_work` (e.g. the self block's copy) while they are in flight, and polls them to
  // completion or the deadline. Checks received sizes. On failure cancels what is still pending.
  absl::Status Exchange(const CallContext& call, const std::vector<Transfer>& transfers,
                        const std::function<void()>& local_work = nullptr);
  absl::Status MpiError(const CallContext& call, int rc, absl::string_view mpi_call) const;

  MPI_Comm comm_ = MPI_COMM_NULL;
  int tag_ub_ = 32767;
  uint64_t seq_ = 0;  // exchanges posted on this comm; equal across ranks while in step
  std::shared_ptr<MpiAbortChannel> abort_channel_;
};

}  // namespace flotilla
