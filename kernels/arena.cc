#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <string>

#include "kernels/device_memory.h"

namespace flotilla::kernels {
namespace internal {

void DeviceSpanOutOfRange(int64_t offset, int64_t count, int64_t size) {
  std::fprintf(stderr,
               "flotilla: DeviceSpan::subspan(%lld, %lld) out of range of a span of %lld "
               "elements\n",
               static_cast<long long>(offset), static_cast<long long>(count),
               static_cast<long long>(size));
  std::abort();
}

}  // namespace internal

namespace {

bool PowerOfTwo(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

}  // namespace

Arena::Arena(std::string name, MemoryKind kind, uintptr_t base, int64_t capacity,
             void (*release)(uintptr_t, int64_t), bool imported)
    : name_(std::move(name)),
      kind_(std::move(kind)),
      base_(base),
      capacity_(capacity),
      release_(release),
      imported_(imported) {
  if (capacity_ > 0 && !imported_) free_[0] = capacity_;
}

BackendStatus Arena::WholeMismatch(int64_t element_bytes, int64_t element_alignment) const {
  return BackendStatus::Error("arena '" + name_ + "' (" + std::to_string(capacity_) +
                              " bytes at address % " + std::to_string(element_alignment) + " = " +
                              std::to_string(base_ % uint64_t(element_alignment)) +
                              "): not a whole span of " + std::to_string(element_bytes) +
                              "-byte elements; expected a size that is a multiple of " +
                              std::to_string(element_bytes) + " and an address aligned to " +
                              std::to_string(element_alignment));
}

Arena::~Arena() {
  if (release_ != nullptr) release_(base_, capacity_);
}

int64_t Arena::LargestFree() const {
  int64_t largest = 0;
  for (const auto& [offset, bytes] : free_) largest = std::max(largest, bytes);
  return largest;
}

bool Arena::Contains(uintptr_t address, int64_t bytes) const {
  return bytes >= 0 && address >= base_ && address - base_ <= uint64_t(capacity_) &&
         uint64_t(bytes) <= uint64_t(capacity_) - (address - base_);
}

BackendResult<uintptr_t> Arena::AllocateBytes(int64_t count, int64_t element_bytes,
                                              int64_t alignment, int64_t element_alignment) {
  const std::string what =
      "arena '" + name_ + "' (" + kind_.name + ", " + std::to_string(capacity_) + " bytes)";
  if (count < 0) {
    return BackendStatus::Error(what + ": cannot allocate " + std::to_string(count) +
                                " elements; expected a count >= 0");
  }
  if (imported_) {
    return BackendStatus::Error(what + ": views imported memory; nothing is allocated from it " +
                                "(use Whole())");
  }
  if (!PowerOfTwo(alignment) || alignment < element_alignment) {
    return BackendStatus::Error(what + ": alignment " + std::to_string(alignment) +
                                " is not a power of two of at least " +
                                std::to_string(element_alignment) + " (the element's alignment)");
  }
  if (count > (int64_t(1) << 62) / element_bytes) {
    return BackendStatus::Error(what + ": " + std::to_string(count) + " elements of " +
                                std::to_string(element_bytes) + " bytes overflow");
  }
  // An empty allocation still takes one byte so that its address is distinct and freeable.
  const int64_t bytes = std::max<int64_t>(count * element_bytes, 1);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    const int64_t offset = it->first, hole = it->second;
    const uintptr_t start = base_ + uintptr_t(offset);
    const uintptr_t aligned = (start + uintptr_t(alignment) - 1) & ~uintptr_t(alignment - 1);
    const int64_t pad = int64_t(aligned - start);
    if (pad + bytes > hole) continue;
    free_.erase(it);
    const int64_t end = offset + pad + bytes;
    if (end < offset + hole) free_[end] = offset + hole - end;
    live_[aligned] = {offset, pad + bytes};
    used_ += pad + bytes;
    peak_ = std::max(peak_, used_);
    return aligned;
  }
  return BackendStatus::Error(
      what + ": cannot allocate " + std::to_string(bytes) + " bytes aligned to " +
      std::to_string(alignment) + "; " + std::to_string(capacity_ - used_) +
      " bytes free, largest free block " + std::to_string(LargestFree()) + " bytes");
}

BackendStatus Arena::FreeBytes(uintptr_t address) {
  const auto it = live_.find(address);
  if (it == live_.end()) {
    return BackendStatus::Error("arena '" + name_ + "': free of an address that is not a live " +
                                "allocation (offset " + std::to_string(int64_t(address - base_)) +
                                "); expected a span exactly as Allocate returned it");
  }
  int64_t offset = it->second.block_offset, bytes = it->second.block_bytes;
  used_ -= bytes;
  live_.erase(it);
  auto next = free_.lower_bound(offset);
  if (next != free_.end() && next->first == offset + bytes) {  // merge with the block after
    bytes += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {  // merge with the block before
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      prev->second += bytes;
      return BackendStatus::Ok();
    }
  }
  free_[offset] = bytes;
  return BackendStatus::Ok();
}

BackendStatus Arena::ForeignSpan(const Arena* other) const {
  return BackendStatus::Error("arena '" + name_ + "': free of a span of " +
                              (other == nullptr ? std::string("no arena (a default span)")
                                                : "arena '" + other->name() + "'") +
                              "; expected a span this arena allocated");
}

}  // namespace flotilla::kernels
