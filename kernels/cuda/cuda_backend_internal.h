// Shared by the CUDA backend's translation units (cuda_backend.cc: memory, queues and the ops of
// kernels/ops.h; cuda_backend_model_ops.cc: the ops the model adds). Not part of the API.
#pragma once

#include <string>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_queue.h"
#include "kernels/cuda/device_error.h"
#include "kernels/device_memory.h"

namespace flotilla::kernels::cuda {

// The device address of a span; null for an unset (default) span.
template <typename T>
T* Ptr(const DeviceSpan<T>& s) {
  return s.arena() == nullptr ? nullptr : BackendAccess::Address(s);
}

// The op's queue as this backend's CUDA queue, or the error.
inline BackendResult<CudaQueue*> OwnQueue(const CudaBackend* backend, Queue& queue, const char* op) {
  auto* q = dynamic_cast<CudaQueue*>(&queue);
  if (q == nullptr || q->backend() != backend) {
    return BackendStatus::Error(std::string(op) + ": the queue is not one of this CUDA backend's " +
                                "queues");
  }
  return q;
}

inline BackendStatus Refused(const char* why, const char* op) {
  if (why == nullptr) return BackendStatus::Ok();
  return BackendStatus::Error(std::string(op) + ": " + why + " (a limit of the CUDA kernel)");
}

inline BackendStatus Launched(int rc, const char* op) {
  if (rc == 0) return BackendStatus::Ok();
  return CudaError(std::string(op) + ": kernel launch failed", cudaError_t(rc));
}

}  // namespace flotilla::kernels::cuda

#define FLOTILLA_CUDA_QUEUE(q, queue, op)                           \
  BackendResult<CudaQueue*> q##_result = OwnQueue(this, queue, op); \
  if (!q##_result.ok()) return q##_result.status();                 \
  CudaQueue* q = q##_result.value()

#define FLOTILLA_CUDA_RETURN_IF_ERROR(expr)             \
  do {                                                  \
    if (BackendStatus s_ = (expr); !s_.ok()) return s_; \
  } while (0)
