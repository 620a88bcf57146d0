// Shared by the CPU backend's translation units (cpu_backend.cc: memory, queues and the ops of
// kernels/ops.h; cpu_backend_model_ops.cc: the ops the model adds). Not part of the API.
#pragma once

#include "kernels/cpu/cpu_backend.h"
#include "kernels/device_memory.h"

namespace flotilla::kernels {

// The host address of a span of CPU-backend memory; null for an unset (default) span.
template <typename T>
T* Ptr(const DeviceSpan<T>& s) {
  return s.arena() == nullptr ? nullptr : BackendAccess::Address(s);
}

}  // namespace flotilla::kernels

// Returns the error when `queue` is not one of this backend's queues (inside CpuBackend members).
#define FLOTILLA_CPU_QUEUE(queue, op)                                  \
  do {                                                                 \
    if (BackendStatus s_ = CheckQueue(queue, op); !s_.ok()) return s_; \
  } while (0)
