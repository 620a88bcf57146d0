// Backend results at the worker's edge: kernels/ speaks BackendStatus (dependency-free), the
// worker absl::Status (STYLE rule 1).
#pragma once

#include <utility>

#include "common/status.h"
#include "kernels/device_memory.h"

namespace flotilla {

// INTERNAL with the backend's message (it names the op and the argument).
inline absl::Status FromBackend(const kernels::BackendStatus& s) {
  return s.ok() ? absl::OkStatus() : absl::InternalError(s.message());
}

}  // namespace flotilla

// Returns the absl::Status of a failed BackendStatus expression.
#define RETURN_IF_BACKEND_ERROR(expr)                                           \
  do {                                                                          \
    const ::flotilla::kernels::BackendStatus _backend_status = (expr);          \
    if (!_backend_status.ok()) return ::flotilla::FromBackend(_backend_status); \
  } while (0)

#define ASSIGN_OR_RETURN_BACKEND_IMPL(tmp, lhs, expr)          \
  auto tmp = (expr);                                           \
  if (!tmp.ok()) return ::flotilla::FromBackend(tmp.status()); \
  lhs = std::move(tmp.value())
// `lhs = value` of a BackendResult expression, or returns its error as absl::Status.
#define ASSIGN_OR_RETURN_BACKEND(lhs, expr) \
  ASSIGN_OR_RETURN_BACKEND_IMPL(FLOTILLA_CONCAT(_backend_result_, __LINE__), lhs, expr)
