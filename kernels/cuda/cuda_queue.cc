#include "kernels/cuda/cuda_queue.h"

#include <cuda_runtime_api.h>

namespace flotilla::kernels::cuda {
namespace {

const CudaQueue* Owner(const Event& event) { return dynamic_cast<const CudaQueue*>(event.queue); }

BackendStatus Foreign(const Event& event, const char* op) {
  return BackendStatus::Error(std::string(op) + (event.queue == nullptr
                                                     ? ": the event was never recorded"
                                                     : ": the event is not a CUDA queue's"));
}

}  // namespace

BackendStatus CudaError(const std::string& what, int rc) {
  const cudaError_t e = cudaError_t(rc);
  return BackendStatus::Error(what + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
                              ")");
}

CudaQueue::~CudaQueue() {
  // Errors here (a device already lost) leave nothing to do: destructors never fail.
  (void)cudaStreamSynchronize(stream_);
  for (auto& [sequence, event] : events_) (void)cudaEventDestroy(event);
  fp8_gemm_.reset();
  (void)cudaFree(workspace_);
  (void)cudaFree(error_);
  (void)cudaFree(scratch_);
  (void)cudaStreamDestroy(stream_);
}

BackendResult<Fp8GemmLt*> CudaQueue::Fp8Gemm() {
  if (!fp8_gemm_) {
    auto lt = std::make_unique<Fp8GemmLt>();
    if (const char* why = lt->Init()) return BackendStatus::Error(why);
    fp8_gemm_ = std::move(lt);
  }
  return fp8_gemm_.get();
}

BackendResult<void*> CudaQueue::Workspace(size_t bytes) {
  if (bytes <= workspace_bytes_) return workspace_;
  cudaError_t rc = cudaStreamSynchronize(stream_);
  if (rc != cudaSuccess) return CudaError("workspace: waiting for the queue", rc);
  (void)cudaFree(workspace_);
  workspace_ = nullptr;
  workspace_bytes_ = 0;
  rc = cudaMalloc(&workspace_, bytes);
  if (rc != cudaSuccess) {
    (void)cudaGetLastError();
    workspace_ = nullptr;
    return CudaError("workspace of " + std::to_string(bytes) + " bytes", rc);
  }
  workspace_bytes_ = bytes;
  return workspace_;
}

Event CudaQueue::Record() {
  const uint64_t sequence = ++issued_;
  cudaEvent_t event = nullptr;
  if (cudaEventCreateWithFlags(&event, cudaEventDisableTiming) == cudaSuccess &&
      cudaEventRecord(event, stream_) == cudaSuccess) {
    events_.emplace_back(sequence, event);
  } else {
    // No event to be had: make the mark trivially done by waiting for the work now.
    if (event != nullptr) (void)cudaEventDestroy(event);
    (void)cudaStreamSynchronize(stream_);
    completed_ = sequence;
  }
  return Event{this, sequence};
}

BackendResult<bool> CudaQueue::Done(const Event& event) const {
  const CudaQueue* owner = Owner(event);
  if (owner == nullptr) return Foreign(event, "Queue::Done");
  return owner->Query(event.sequence);
}

BackendStatus CudaQueue::WaitFor(const Event& event) {
  const CudaQueue* owner = Owner(event);
  if (owner == nullptr) return Foreign(event, "Queue::WaitFor");
  if (event.sequence <= owner->completed_) return BackendStatus::Ok();
  for (const auto& [sequence, cuda_event] : owner->events_) {
    if (sequence == event.sequence) {
      const cudaError_t rc = cudaStreamWaitEvent(stream_, cuda_event, 0);
      if (rc != cudaSuccess) return CudaError("Queue::WaitFor: cudaStreamWaitEvent", rc);
      return BackendStatus::Ok();
    }
  }
  return BackendStatus::Ok();  // retired: already done
}

BackendStatus CudaQueue::Synchronize() {
  cudaError_t rc = cudaStreamSynchronize(stream_);
  if (rc != cudaSuccess) return CudaError("Queue::Synchronize: the queue's work failed", rc);
  for (auto& [sequence, event] : events_) (void)cudaEventDestroy(event);
  events_.clear();
  completed_ = issued_;
  DeviceError record;
  rc = cudaMemcpyAsync(&record, error_, sizeof(record), cudaMemcpyDeviceToHost, stream_);
  if (rc == cudaSuccess) rc = cudaStreamSynchronize(stream_);
  if (rc != cudaSuccess) return CudaError("Queue::Synchronize: reading the error record", rc);
  if (record.code == kDeviceErrorNone) return BackendStatus::Ok();
  rc = cudaMemsetAsync(error_, 0, sizeof(DeviceError), stream_);
  if (rc == cudaSuccess) rc = cudaStreamSynchronize(stream_);
  if (rc != cudaSuccess) return CudaError("Queue::Synchronize: clearing the error record", rc);
  return BackendStatus::Error(DeviceErrorMessage(record));
}

BackendResult<bool> CudaQueue::Query(uint64_t sequence) const {
  while (!events_.empty() && completed_ < sequence) {
    const cudaError_t rc = cudaEventQuery(events_.front().second);
    if (rc == cudaErrorNotReady) break;
    if (rc != cudaSuccess) return CudaError("Queue::Done: cudaEventQuery", rc);
    completed_ = events_.front().first;
    (void)cudaEventDestroy(events_.front().second);
    events_.pop_front();
  }
  return sequence <= completed_;
}

}  // namespace flotilla::kernels::cuda
