// The CUDA backend's queue: a CUDA stream with its events, its device error record (the first bad
// index a kernel met, reported by Synchronize), a small scratch, and what the FP8 GEMM needs per
// stream (a cuBLASLt handle with its pinned algorithms, a workspace). Events are CUDA events
// recorded on the stream; those known done are destroyed as queries and synchronizations find
// them so. Plain C++ header (CUDA handles as their opaque struct pointers); built into
// flotilla_kernels_cuda with cuda_queue.cc.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <utility>

#include "kernels/backend.h"
#include "kernels/cuda/device_error.h"
#include "kernels/cuda/fp8_gemm.h"

struct CUstream_st;
struct CUevent_st;

namespace flotilla::kernels::cuda {

class CudaBackend;

// "what: cudaErrorName (description)" for a CUDA runtime return code.
BackendStatus CudaError(const std::string& what, int rc);

class CudaQueue final : public Queue {
 public:
  // Takes ownership of the stream and of the two device allocations.
  CudaQueue(const CudaBackend* backend, CUstream_st* stream, DeviceError* error, int32_t* scratch)
      : backend_(backend), stream_(stream), error_(error), scratch_(scratch) {}
  ~CudaQueue() override;
  CudaQueue(const CudaQueue&) = delete;
  CudaQueue& operator=(const CudaQueue&) = delete;

  const CudaBackend* backend() const { return backend_; }
  CUstream_st* stream() const { return stream_; }
  DeviceError* error() const { return error_; }
  int32_t* scratch() const { return scratch_; }  // device, 2 int32: GemmFp8Fp4's group offsets

  // The queue's cuBLASLt FP8 GEMM, created on first use (needs the device).
  BackendResult<Fp8GemmLt*> Fp8Gemm();
  // A device workspace of at least `bytes` (256-byte aligned), grown on demand: growing waits
  // for the queue's earlier work (which may still use the old one) before freeing it.
  BackendResult<void*> Workspace(size_t bytes);

  Event Record() override;
  BackendResult<bool> Done(const Event& event) const override;
  BackendStatus WaitFor(const Event& event) override;
  BackendStatus Synchronize() override;

 private:
  // Whether work up to `sequence` has run; retires the events found done, oldest first.
  BackendResult<bool> Query(uint64_t sequence) const;

  const CudaBackend* backend_;
  CUstream_st* stream_;
  DeviceError* error_;
  int32_t* scratch_;
  uint64_t issued_ = 0;
  mutable uint64_t completed_ = 0;
  mutable std::deque<std::pair<uint64_t, CUevent_st*>> events_;
  std::unique_ptr<Fp8GemmLt> fp8_gemm_;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
};

}  // namespace flotilla::kernels::cuda
