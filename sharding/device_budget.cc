#include "sharding/device_budget.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "sharding/capacity.h"

namespace flotilla {

uint64_t DefaultGpuReserve(uint64_t total) { return std::max<uint64_t>(1ull << 30, total / 32); }

std::string DeviceMemoryBudget::Describe(const KvPoolLayout& layout) const {
  return absl::StrFormat(
      "weights %s + workspace %s + exchange %s + KV pool %s (%d pages of %s) + reserve %s of "
      "%s available",
      FormatBytes(weights), FormatBytes(workspace), FormatBytes(exchange), FormatBytes(kv_pool),
      pages, FormatBytes(uint64_t(layout.page_bytes)), FormatBytes(reserve),
      FormatBytes(available));
}

absl::StatusOr<DeviceMemoryBudget> PlanDeviceMemory(const DeviceMemoryRequest& r,
                                                    const KvPoolLayout& layout,
                                                    int64_t max_context) {
  if (r.sharing < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("device memory: %d workers share the device; expected at least 1",
                        r.sharing));
  }
  DeviceMemoryBudget b;
  b.available = r.free / uint64_t(r.sharing);
  b.reserve = r.reserve.value_or(DefaultGpuReserve(r.total));
  b.weights = r.weights;
  b.workspace = r.workspace;
  b.exchange = r.exchange;
  const std::string where =
      r.sharing > 1 ? absl::StrFormat(" (%s free on the device, shared by %d workers)",
                                      FormatBytes(r.free), r.sharing)
                    : std::string();
  // Sums in 128 bits: sizes come from flags.
  const unsigned __int128 fixed =
      (unsigned __int128)b.reserve + b.weights + b.workspace + b.exchange;
  if (fixed > b.available) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "device memory: weights %s + workspace %s + exchange %s + reserve %s exceed the %s "
        "available%s by %s",
        FormatBytes(b.weights), FormatBytes(b.workspace), FormatBytes(b.exchange),
        FormatBytes(b.reserve), FormatBytes(b.available), where,
        FormatBytes(uint64_t(fixed - b.available))));
  }
  const uint64_t left = b.available - uint64_t(fixed);
  const uint64_t page = uint64_t(layout.page_bytes);
  if (r.kv_memory.has_value()) {
    if (*r.kv_memory > left) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "--kv-memory %s does not fit: weights %s + workspace %s + exchange %s + reserve %s "
          "leave %s of the %s available%s",
          FormatBytes(*r.kv_memory), FormatBytes(b.weights), FormatBytes(b.workspace),
          FormatBytes(b.exchange), FormatBytes(b.reserve), FormatBytes(left),
          FormatBytes(b.available), where));
    }
    b.pages = int64_t(*r.kv_memory / page);
  } else {
    b.pages = int64_t(left / page);
  }
  b.kv_pool = uint64_t(b.pages) * page;
  b.unused = left - b.kv_pool;
  b.longest_context = layout.LongestContext(b.pages, max_context);
  if (b.longest_context < 0) {
    const int64_t need = layout.SequencePages(0).Total();
    return absl::ResourceExhaustedError(absl::StrFormat(
        "device memory: a KV pool of %d pages (%s) cannot hold one sequence's sliding-window "
        "rings and compressor states (%d pages, %s)",
        b.pages, FormatBytes(b.kv_pool), need, FormatBytes(uint64_t(need) * page)));
  }
  return b;
}

}  // namespace flotilla
