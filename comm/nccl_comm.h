// NcclComm: Comm over NCCL, device buffers (every pointer passed to it is CUDA device memory on
// this rank's device). Built from nccl_comm.cc when the CUDA toolkit and NCCL are found, else
// from nccl_comm_stub.cc, whose Create() returns UNIMPLEMENTED.
//
// * Operations are enqueued on the comm's own stream (stream()) and the call returns once they
//   have completed on the device, like every Comm: work the caller queued on other streams must
//   be complete (or ordered before, e.g. by an event) when the call is made.
// * AllToAllV is grouped ncclSend / ncclRecv (ncclGroupStart / ncclGroupEnd); the local block is
//   a device-to-device copy. Barrier is a one-float all-reduce.
// * AllReduceSum is ncclAllReduce(ncclFloat, ncclSum). NCCL does not document a summation
//   order. As implemented (ring, tree, NVLS, CollNet) every element is reduced once and the
//   result copied to all ranks, so it is identical on every rank and reproducible run to run
//   while NCCL keeps choosing the same algorithm, protocol and channel count for that size;
//   it is not the rank order 0..n-1 of MpiComm / FakeComm, and it can change when NCCL picks a
//   different algorithm (message size, topology, NCCL version, NCCL_ALGO / NCCL_PROTO). A
//   fixed-order variant (all-gather + local rank-order sum kernel) is future work.
// * Timeouts: the communicator is non-blocking (ncclConfig_t.blocking = 0); every wait polls
//   ncclCommGetAsyncError and cudaStreamQuery until done or the deadline, then calls
//   ncclCommAbort. NCCL does not say which peer is missing; the message says so.
// * Abort() calls Abort() on the bootstrap comm, which must outlive this one (normally the world
//   MpiComm, which ends the job); the NCCL communicator itself is aborted by the thread using it
//   (a wait in progress notices within a poll, a later call fails).
#pragma once

#include <memory>

#include "comm/comm.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace flotilla {

class NcclComm : public Comm {
 public:
  // Collective over `bootstrap` (all its ranks call; same ranks and order): rank 0 creates the
  // ncclUniqueId and broadcasts it over `bootstrap`; each rank binds to CUDA device
  // `cuda_device`. Initialization is bounded by options.timeout.
  static absl::StatusOr<std::unique_ptr<NcclComm>> Create(Comm& bootstrap, int cuda_device,
                                                          const CommOptions& options = {});

  // Number of CUDA devices visible to this process; an error when the CUDA runtime has no
  // usable driver / device, or when NcclComm is the stub.
  static absl::StatusOr<int> VisibleDeviceCount();

  // The stream every operation of this comm runs on (a cudaStream_t).
  virtual CUstream_st* stream() const = 0;
  int cuda_device() const { return cuda_device_; }

 protected:
  NcclComm(int rank, std::vector<int> world_ranks, int cuda_device, const CommOptions& options)
      : Comm(rank, std::move(world_ranks), options), cuda_device_(cuda_device) {}

 private:
  int cuda_device_;
};

}  // namespace flotilla
