// Backend memory (design.md §7a, STYLE rule 2): the error type of backend calls, typed spans of
// backend memory that the host cannot dereference, and the arena every span comes from.
//
// A `DeviceSpan<T>` names `size()` elements of type T inside an `Arena`. It has no operator*,
// operator[], data() or conversion to T*: host code that tries to read backend memory does not
// compile (tests/kernels/backend_test.cc states this with requires-expressions). Only a backend
// implementation reaches the address, through `BackendAccess`.
//
// Dependency-free like the ops (no absl): the GPU machine builds kernels/ with the CUDA toolkit
// alone. `BackendStatus` carries the message; the worker turns it into absl::Status at its edge.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

namespace flotilla::kernels {

// Success, or a message naming what was wrong and what was expected.
class [[nodiscard]] BackendStatus {
 public:
  BackendStatus() = default;  // success
  static BackendStatus Ok() { return {}; }
  static BackendStatus Error(std::string message) {
    BackendStatus s;
    s.message_ = std::move(message);
    s.failed_ = true;
    return s;
  }
  bool ok() const { return !failed_; }
  const std::string& message() const { return message_; }

 private:
  std::string message_;
  bool failed_ = false;
};

// A value or the BackendStatus saying why there is none.
template <typename T>
class [[nodiscard]] BackendResult {
 public:
  BackendResult(T value) : value_(std::move(value)) {}  // NOLINT: implicit like StatusOr
  BackendResult(BackendStatus status) : status_(std::move(status)) {}  // NOLINT
  bool ok() const { return status_.ok(); }
  const BackendStatus& status() const { return status_; }
  T& value() { return value_; }
  const T& value() const { return value_; }

 private:
  BackendStatus status_;
  T value_{};
};

class Arena;

// `size()` elements of T in backend memory (T may be const: a read-only view). Cheap to copy;
// does not own. Valid while the allocation it views is live.
template <typename T>
class DeviceSpan {
 public:
  using element_type = T;

  DeviceSpan() = default;
  // A read-only view of a writable span.
  template <typename U>
  requires std::is_same_v<const U, T> &&(!std::is_same_v<U, T>)
      DeviceSpan(const DeviceSpan<U>& other)  // NOLINT: implicit, like T* -> const T*
      : arena_(other.arena_), address_(other.address_), size_(other.size_) {}

  int64_t size() const { return size_; }
  int64_t size_bytes() const { return size_ * int64_t(sizeof(T)); }
  bool empty() const { return size_ == 0; }
  const Arena* arena() const { return arena_; }

  // Elements [offset, offset + count) of this span; out of range is a programmer error that
  // stops the process with a message (spans are cut on the host, never from device data).
  DeviceSpan subspan(int64_t offset, int64_t count) const;
  DeviceSpan subspan(int64_t offset) const { return subspan(offset, size_ - offset); }
  DeviceSpan first(int64_t count) const { return subspan(0, count); }

  // The same memory as bytes (for ops that move rows of any element type).
  DeviceSpan<const uint8_t> as_bytes() const {
    DeviceSpan<const uint8_t> out;
    out.arena_ = arena_;
    out.address_ = address_;
    out.size_ = size_bytes();
    return out;
  }
  DeviceSpan<uint8_t> as_writable_bytes() const requires(!std::is_const_v<T>) {
    DeviceSpan<uint8_t> out;
    out.arena_ = arena_;
    out.address_ = address_;
    out.size_ = size_bytes();
    return out;
  }

  // Same memory, same element bytes (for ops that view, say, an fp8 buffer as bytes).
  template <typename U>
  requires(sizeof(U) == sizeof(T) &&
           std::is_const_v<U> >= std::is_const_v<T>) DeviceSpan<U> reinterpret()
  const {
    DeviceSpan<U> out;
    out.arena_ = arena_;
    out.address_ = address_;
    out.size_ = size_;
    return out;
  }

 private:
  friend class Arena;
  friend struct BackendAccess;
  template <typename>
  friend class DeviceSpan;

  const Arena* arena_ = nullptr;
  uintptr_t address_ = 0;  // backend address of element 0 (not a host pointer in general)
  int64_t size_ = 0;
};

namespace internal {
[[noreturn]] void DeviceSpanOutOfRange(int64_t offset, int64_t count, int64_t size);
}  // namespace internal

template <typename T>
DeviceSpan<T> DeviceSpan<T>::subspan(int64_t offset, int64_t count) const {
  if (offset < 0 || count < 0 || offset > size_ || count > size_ - offset) {
    internal::DeviceSpanOutOfRange(offset, count, size_);
  }
  DeviceSpan out = *this;
  out.address_ = address_ + uintptr_t(offset) * sizeof(T);
  out.size_ = count;
  return out;
}

// Where an arena's memory comes from (ggml's "buffer type"): the backend's name for it, the
// least alignment of every allocation and the largest arena it can make.
struct MemoryKind {
  std::string name;        // "cpu", "cuda:0"
  int64_t alignment = 64;  // bytes, a power of two
  int64_t max_arena_bytes = 0;
  const void* owner = nullptr;  // the backend whose arenas these are
};

// One block of backend memory of fixed capacity, reserved when it is made (ggml's "buffer"),
// from which spans are allocated and freed (first fit, neighbours merged on free). Not
// thread-safe: one owner (a worker's weights, its KV pool, its step workspace) allocates.
class Arena {
 public:
  // `memory` is `capacity` bytes at backend address `base`, aligned to `kind.alignment`;
  // `release` returns it to the backend when the arena goes. An arena that is `imported` views
  // memory its caller owns (Backend::ImportHost): it has no alignment guarantee and nothing is
  // allocated from it; Whole() is its one span.
  Arena(std::string name, MemoryKind kind, uintptr_t base, int64_t capacity,
        void (*release)(uintptr_t base, int64_t capacity), bool imported = false);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  const std::string& name() const { return name_; }
  const MemoryKind& kind() const { return kind_; }
  int64_t capacity() const { return capacity_; }
  int64_t used() const { return used_; }  // bytes in live allocations, alignment padding included
  int64_t peak() const { return peak_; }
  int64_t num_allocations() const { return int64_t(live_.size()); }
  int64_t LargestFree() const;
  bool imported() const { return imported_; }

  // The whole arena as one span of T (T may be const). Errors: the arena's base is not aligned
  // for T, or its size is not a whole number of T.
  template <typename T>
  BackendResult<DeviceSpan<T>> Whole() const {
    if (base_ % alignof(T) != 0 || capacity_ % int64_t(sizeof(T)) != 0) {
      return WholeMismatch(int64_t(sizeof(T)), int64_t(alignof(T)));
    }
    DeviceSpan<T> span;
    span.arena_ = this;
    span.address_ = base_;
    span.size_ = capacity_ / int64_t(sizeof(T));
    return span;
  }

  // `count` elements of T at an address aligned to `alignment` (0: the kind's alignment; else a
  // power of two, at least alignof(T)). Errors name the arena, the request and what is free.
  template <typename T>
  BackendResult<DeviceSpan<T>> Allocate(int64_t count, int64_t alignment = 0) {
    static_assert(!std::is_const_v<T>, "allocate writable memory; views may be const");
    BackendResult<uintptr_t> address =
        AllocateBytes(count, int64_t(sizeof(T)), alignment == 0 ? kind_.alignment : alignment,
                      int64_t(alignof(T)));
    if (!address.ok()) return address.status();
    DeviceSpan<T> span;
    span.arena_ = this;
    span.address_ = address.value();
    span.size_ = count;
    return span;
  }

  // Frees the allocation that `span` is (the whole span Allocate returned). Errors: a span of
  // another arena, or one that is not a live allocation's start.
  template <typename T>
  BackendStatus Free(DeviceSpan<T> span) {
    if (span.arena_ != this) return ForeignSpan(span.arena_);
    return FreeBytes(span.address_);
  }

  // Whether [address, address + bytes) lies inside this arena.
  bool Contains(uintptr_t address, int64_t bytes) const;

 private:
  BackendResult<uintptr_t> AllocateBytes(int64_t count, int64_t element_bytes, int64_t alignment,
                                         int64_t element_alignment);
  BackendStatus FreeBytes(uintptr_t address);
  BackendStatus ForeignSpan(const Arena* other) const;
  BackendStatus WholeMismatch(int64_t element_bytes, int64_t element_alignment) const;

  std::string name_;
  MemoryKind kind_;
  uintptr_t base_;
  int64_t capacity_;
  void (*release_)(uintptr_t, int64_t);
  bool imported_ = false;
  std::map<int64_t, int64_t> free_;  // offset -> bytes, disjoint, neighbours merged
  struct Live {
    int64_t block_offset, block_bytes;  // the block taken from free_ (padding included)
  };
  std::map<uintptr_t, Live> live_;  // address returned -> its block
  int64_t used_ = 0, peak_ = 0;
};

// An owned allocation: frees itself when it goes (RAII, STYLE rule 10).
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static BackendResult<DeviceBuffer> Make(Arena& arena, int64_t count, int64_t alignment = 0) {
    BackendResult<DeviceSpan<T>> span = arena.Allocate<T>(count, alignment);
    if (!span.ok()) return span.status();
    DeviceBuffer b;
    b.arena_ = &arena;
    b.span_ = span.value();
    return b;
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : arena_(std::exchange(o.arena_, nullptr)), span_(std::exchange(o.span_, {})) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      Reset();
      arena_ = std::exchange(o.arena_, nullptr);
      span_ = std::exchange(o.span_, {});
    }
    return *this;
  }
  ~DeviceBuffer() { Reset(); }

  DeviceSpan<T> span() const { return span_; }
  DeviceSpan<const T> view() const { return span_; }
  int64_t size() const { return span_.size(); }
  void Reset() {
    if (arena_ != nullptr) (void)arena_->Free(span_);  // a buffer's own span always frees
    arena_ = nullptr;
    span_ = {};
  }

 private:
  Arena* arena_ = nullptr;
  DeviceSpan<T> span_;
};

// The address behind a span, for backend implementations only (kernels/<backend>/): model code
// never names it. On the CPU backend the address is a host pointer; on CUDA a device pointer.
struct BackendAccess {
  template <typename T>
  static T* Address(const DeviceSpan<T>& span) {
    return reinterpret_cast<T*>(span.address_);
  }
  template <typename T>
  static uintptr_t RawAddress(const DeviceSpan<T>& span) {
    return span.address_;
  }
};

}  // namespace flotilla::kernels
