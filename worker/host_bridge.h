// TRANSITIONAL: the host address of CPU-backend memory, for model code that still calls the
// kernels of kernels/ops.h directly instead of Backend ops. Every use marks code not yet written
// against the Backend; the goal is none left in worker/ (and this file deleted). Memory of any
// other backend has no host address: the process stops with a message naming the arena.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kernels/device_memory.h"

namespace flotilla {

// nullptr for a default (unset) span, as an unset weight pointer was.
template <typename T>
T* HostOf(const kernels::DeviceSpan<T>& span) {
  const kernels::Arena* arena = span.arena();
  if (arena == nullptr) return nullptr;
  if (std::strcmp(arena->kind().name.c_str(), "cpu") != 0) {
    std::fprintf(stderr,
                 "flotilla: HostOf: span of arena '%s' lies in %s memory; host code can read only "
                 "cpu backend memory\n",
                 arena->name().c_str(), arena->kind().name.c_str());
    std::abort();
  }
  return kernels::BackendAccess::Address(span);
}

}  // namespace flotilla
