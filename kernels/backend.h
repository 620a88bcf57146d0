// The Backend seam (design.md §7a, STYLE rule 2): what the model computes on. ggml's split:
//   MemoryKind  (buffer type)  where memory comes from: alignment, largest arena
//   Arena       (buffer)       one fixed block of backend memory, spans allocated from it
//   Queue       (stream)       ordered execution; events; synchronize
//   Backend     (device)       makes arenas and queues; copies; every op of kernels/ops.h
//
// Contract of every call that takes a Queue: it is issued on that queue and runs after the
// queue's earlier work; it may return before it has run (a CUDA backend launches and returns).
// Host memory handed to Upload must stay unchanged, and host memory handed to Download must not
// be read, until the queue has been synchronized (or an event recorded after the copy is done).
// Only Synchronize / Event waits make the host wait.
//
// Arguments are checked on the host before anything is issued, identically for every backend
// (kernels/backend.cc): a span of another backend or outside its arena, a span shorter than
// the shape needs, a bad shape. The error names the op, the argument, and what was expected.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <type_traits>

#include "kernels/backend_ops.h"
#include "kernels/device_memory.h"

namespace flotilla::kernels {

class Queue;

// A point in a queue's work: done once everything issued before it has run.
struct Event {
  const Queue* queue = nullptr;  // null: never recorded
  uint64_t sequence = 0;
};

class Queue {
 public:
  virtual ~Queue() = default;
  // Marks the work issued so far.
  virtual Event Record() = 0;
  // Whether the event's work has run (does not wait).
  virtual BackendResult<bool> Done(const Event& event) const = 0;
  // Later work on this queue runs after the event's work (the event may be another queue's).
  virtual BackendStatus WaitFor(const Event& event) = 0;
  // The host waits until everything issued on this queue has run; returns the first error that
  // work met (a device fault), else OK.
  virtual BackendStatus Synchronize() = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // The kind of every arena this backend makes; its `owner` is this backend.
  virtual const MemoryKind& memory() const = 0;
  // One arena of `bytes` bytes (aligned to memory().alignment), reserved now. Errors: bytes < 0
  // or over memory().max_arena_bytes, or the backend has no memory left.
  virtual BackendResult<std::unique_ptr<Arena>> NewArena(const std::string& name,
                                                         int64_t bytes) = 0;
  // An arena over `bytes` bytes of host memory at `host` that the caller owns and keeps alive
  // and unchanged while the arena and its spans are used (a mapped checkpoint): read through
  // Arena::Whole<const T>(), nothing allocated from it. A backend whose ops can read host
  // memory in place views it (the CPU backend: zero copy); one that cannot (CUDA: its weights
  // are uploaded into device memory) returns an error saying so.
  virtual BackendResult<std::unique_ptr<Arena>> ImportHost(const std::string& name,
                                                           const void* host, int64_t bytes) = 0;
  virtual std::unique_ptr<Queue> NewQueue() = 0;

  // ---- copies and fill (bytes = the span's size; host sizes must match it exactly)
  template <typename T>
  BackendStatus Upload(Queue& queue, std::span<const T> host, DeviceSpan<T> dst) {
    static_assert(std::is_trivially_copyable_v<T>);
    if (int64_t(host.size()) != dst.size()) return SizeMismatch("Upload", host.size(), dst.size());
    if (BackendStatus s = CheckSpan("Upload", "dst", dst); !s.ok()) return s;
    return DoUpload(queue, host.data(), BackendAccess::RawAddress(dst), dst.size_bytes());
  }
  template <typename T>
  BackendStatus Download(Queue& queue, DeviceSpan<const T> src, std::span<T> host) {
    static_assert(std::is_trivially_copyable_v<T> && !std::is_const_v<T>);
    if (int64_t(host.size()) != src.size()) {
      return SizeMismatch("Download", host.size(), src.size());
    }
    if (BackendStatus s = CheckSpan("Download", "src", src); !s.ok()) return s;
    return DoDownload(queue, BackendAccess::RawAddress(src), host.data(), src.size_bytes());
  }
  // Device to device; the spans may not overlap.
  template <typename T>
  BackendStatus Copy(Queue& queue, DeviceSpan<const T> src, DeviceSpan<T> dst) {
    if (src.size() != dst.size()) return SizeMismatch("Copy", src.size(), dst.size());
    if (BackendStatus s = CheckSpan("Copy", "src", src); !s.ok()) return s;
    if (BackendStatus s = CheckSpan("Copy", "dst", dst); !s.ok()) return s;
    return DoCopy(queue, BackendAccess::RawAddress(src), BackendAccess::RawAddress(dst),
                  dst.size_bytes());
  }
  // Every element of dst = value.
  template <typename T>
  BackendStatus Fill(Queue& queue, DeviceSpan<T> dst, T value) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8);
    if (BackendStatus s = CheckSpan("Fill", "dst", dst); !s.ok()) return s;
    uint64_t pattern = 0;
    static_assert(sizeof(pattern) >= sizeof(T));
    __builtin_memcpy(&pattern, &value, sizeof(T));
    return DoFill(queue, BackendAccess::RawAddress(dst), dst.size(), int64_t(sizeof(T)), pattern);
  }

  // ---- ops (kernels/ops.h), checked then issued on `queue`
  BackendStatus ActQuantFp8(Queue& queue, const ActQuantArgs& args);
  BackendStatus Fp8SimulateInPlace(Queue& queue, const QuantSimulateArgs& args);
  BackendStatus Fp4SimulateInPlace(Queue& queue, const QuantSimulateArgs& args);
  BackendStatus GemmFp8(Queue& queue, const GemmFp8Args& args);
  BackendStatus GemmFp8Fp4(Queue& queue, const GemmFp8Fp4Args& args);
  BackendStatus GemmBf16(Queue& queue, const GemmBf16Args& args);
  BackendStatus GemmF32(Queue& queue, const GemmF32Args& args);
  BackendStatus RmsNorm(Queue& queue, const RmsNormArgs& args);
  BackendStatus HeadRmsNormBf16(Queue& queue, const HeadRmsNormArgs& args);
  BackendStatus RopeFrequencies(Queue& queue, const RopeFrequenciesArgs& args);
  BackendStatus ApplyRope(Queue& queue, const RopeArgs& args);
  BackendStatus HcPre(Queue& queue, const HcPreArgs& args);
  BackendStatus HcPost(Queue& queue, const HcPostArgs& args);
  BackendStatus HcHead(Queue& queue, const HcHeadArgs& args);
  BackendStatus CompressPool(Queue& queue, const CompressPoolArgs& args);
  BackendStatus HadamardRotateBf16(Queue& queue, const HadamardArgs& args);
  BackendStatus IndexerScores(Queue& queue, const IndexerScoreArgs& args);
  BackendStatus TopK(Queue& queue, const TopKArgs& args);
  BackendStatus SparseAttention(Queue& queue, const SparseAttentionArgs& args);
  BackendStatus Route(Queue& queue, const RouteArgs& args);
  BackendStatus SwiGlu(Queue& queue, const SwiGluArgs& args);
  BackendStatus MoePermute(Queue& queue, const MoePermuteArgs& args);
  BackendStatus GatherRows(Queue& queue, const RowCopyArgs& args);
  BackendStatus ScatterRows(Queue& queue, const RowCopyArgs& args);
  BackendStatus MoeCombine(Queue& queue, const MoeCombineArgs& args);
  BackendStatus PackKvEntries(Queue& queue, const KvPackArgs& args);
  BackendStatus UnpackKvEntries(Queue& queue, const KvUnpackArgs& args);
  BackendStatus PackIndexerKeys(Queue& queue, const KvPackArgs& args);
  BackendStatus UnpackIndexerKeys(Queue& queue, const KvUnpackArgs& args);
  // ---- model ops
  BackendStatus EmbedRows(Queue& queue, const EmbedRowsArgs& args);
  BackendStatus RepeatRows(Queue& queue, const RepeatRowsArgs& args);
  BackendStatus BroadcastAdd(Queue& queue, const BroadcastAddArgs& args);
  BackendStatus ConvertBf16ToF32(Queue& queue, const ConvertBf16ToF32Args& args);
  BackendStatus ConvertF32ToBf16(Queue& queue, const ConvertF32ToBf16Args& args);
  BackendStatus InterleaveRows(Queue& queue, const InterleaveRowsArgs& args);
  // ---- MoE ops
  BackendStatus RoutePerRowK(Queue& queue, const RoutePerRowKArgs& args);
  BackendStatus GroupedGemmFp8Fp4(Queue& queue, const GroupedGemmFp8Fp4Args& args);
  BackendStatus GroupedGemmFp8(Queue& queue, const GroupedGemmFp8Args& args);
  BackendStatus GroupedGemmBf16(Queue& queue, const GroupedGemmBf16Args& args);
  // ---- attention ops
  BackendStatus CompressorUpdate(Queue& queue, const CompressorUpdateArgs& args);
  BackendStatus IndexerTopK(Queue& queue, const IndexerTopKArgs& args);
  BackendStatus PickedEntries(Queue& queue, const PickedEntriesArgs& args);
  BackendStatus UnpackKvEntriesPaged(Queue& queue, const KvUnpackPagedArgs& args);
  BackendStatus ChunkAttention(Queue& queue, const ChunkAttentionArgs& args);

  // Whether `span` is usable by this backend: made by one of its arenas, inside it. Empty spans
  // pass only where the caller allows (optional inputs). The error names `op` and `arg`.
  template <typename T>
  BackendStatus CheckSpan(const char* op, const char* arg, const DeviceSpan<T>& span) const {
    return CheckRaw(op, arg, span.arena(), BackendAccess::RawAddress(span), span.size_bytes());
  }

 protected:
  virtual BackendStatus DoUpload(Queue& queue, const void* host, uintptr_t dst, int64_t bytes) = 0;
  virtual BackendStatus DoDownload(Queue& queue, uintptr_t src, void* host, int64_t bytes) = 0;
  virtual BackendStatus DoCopy(Queue& queue, uintptr_t src, uintptr_t dst, int64_t bytes) = 0;
  virtual BackendStatus DoFill(Queue& queue, uintptr_t dst, int64_t count, int64_t element_bytes,
                               uint64_t pattern) = 0;

  // Ops after their arguments passed the checks.
  virtual BackendStatus DoActQuantFp8(Queue& queue, const ActQuantArgs& args) = 0;
  virtual BackendStatus DoFp8SimulateInPlace(Queue& queue, const QuantSimulateArgs& args) = 0;
  virtual BackendStatus DoFp4SimulateInPlace(Queue& queue, const QuantSimulateArgs& args) = 0;
  virtual BackendStatus DoGemmFp8(Queue& queue, const GemmFp8Args& args) = 0;
  virtual BackendStatus DoGemmFp8Fp4(Queue& queue, const GemmFp8Fp4Args& args) = 0;
  virtual BackendStatus DoGemmBf16(Queue& queue, const GemmBf16Args& args) = 0;
  virtual BackendStatus DoGemmF32(Queue& queue, const GemmF32Args& args) = 0;
  virtual BackendStatus DoRmsNorm(Queue& queue, const RmsNormArgs& args) = 0;
  virtual BackendStatus DoHeadRmsNormBf16(Queue& queue, const HeadRmsNormArgs& args) = 0;
  virtual BackendStatus DoRopeFrequencies(Queue& queue, const RopeFrequenciesArgs& args) = 0;
  virtual BackendStatus DoApplyRope(Queue& queue, const RopeArgs& args) = 0;
  virtual BackendStatus DoHcPre(Queue& queue, const HcPreArgs& args) = 0;
  virtual BackendStatus DoHcPost(Queue& queue, const HcPostArgs& args) = 0;
  virtual BackendStatus DoHcHead(Queue& queue, const HcHeadArgs& args) = 0;
  virtual BackendStatus DoCompressPool(Queue& queue, const CompressPoolArgs& args) = 0;
  virtual BackendStatus DoHadamardRotateBf16(Queue& queue, const HadamardArgs& args) = 0;
  virtual BackendStatus DoIndexerScores(Queue& queue, const IndexerScoreArgs& args) = 0;
  virtual BackendStatus DoTopK(Queue& queue, const TopKArgs& args) = 0;
  virtual BackendStatus DoSparseAttention(Queue& queue, const SparseAttentionArgs& args) = 0;
  virtual BackendStatus DoRoute(Queue& queue, const RouteArgs& args) = 0;
  virtual BackendStatus DoSwiGlu(Queue& queue, const SwiGluArgs& args) = 0;
  virtual BackendStatus DoMoePermute(Queue& queue, const MoePermuteArgs& args) = 0;
  virtual BackendStatus DoGatherRows(Queue& queue, const RowCopyArgs& args) = 0;
  virtual BackendStatus DoScatterRows(Queue& queue, const RowCopyArgs& args) = 0;
  virtual BackendStatus DoMoeCombine(Queue& queue, const MoeCombineArgs& args) = 0;
  virtual BackendStatus DoPackKvEntries(Queue& queue, const KvPackArgs& args) = 0;
  virtual BackendStatus DoUnpackKvEntries(Queue& queue, const KvUnpackArgs& args) = 0;
  virtual BackendStatus DoPackIndexerKeys(Queue& queue, const KvPackArgs& args) = 0;
  virtual BackendStatus DoUnpackIndexerKeys(Queue& queue, const KvUnpackArgs& args) = 0;
  // ---- model ops
  virtual BackendStatus DoEmbedRows(Queue& queue, const EmbedRowsArgs& args) = 0;
  virtual BackendStatus DoRepeatRows(Queue& queue, const RepeatRowsArgs& args) = 0;
  virtual BackendStatus DoBroadcastAdd(Queue& queue, const BroadcastAddArgs& args) = 0;
  virtual BackendStatus DoConvertBf16ToF32(Queue& queue, const ConvertBf16ToF32Args& args) = 0;
  virtual BackendStatus DoConvertF32ToBf16(Queue& queue, const ConvertF32ToBf16Args& args) = 0;
  virtual BackendStatus DoInterleaveRows(Queue& queue, const InterleaveRowsArgs& args) = 0;
  // ---- MoE ops
  virtual BackendStatus DoRoutePerRowK(Queue& queue, const RoutePerRowKArgs& args) = 0;
  virtual BackendStatus DoGroupedGemmFp8Fp4(Queue& queue, const GroupedGemmFp8Fp4Args& args) = 0;
  virtual BackendStatus DoGroupedGemmFp8(Queue& queue, const GroupedGemmFp8Args& args) = 0;
  virtual BackendStatus DoGroupedGemmBf16(Queue& queue, const GroupedGemmBf16Args& args) = 0;
  // ---- attention ops
  virtual BackendStatus DoCompressorUpdate(Queue& queue, const CompressorUpdateArgs& args) = 0;
  virtual BackendStatus DoIndexerTopK(Queue& queue, const IndexerTopKArgs& args) = 0;
  virtual BackendStatus DoPickedEntries(Queue& queue, const PickedEntriesArgs& args) = 0;
  virtual BackendStatus DoUnpackKvEntriesPaged(Queue& queue, const KvUnpackPagedArgs& args) = 0;
  virtual BackendStatus DoChunkAttention(Queue& queue, const ChunkAttentionArgs& args) = 0;

 private:
  BackendStatus CheckRaw(const char* op, const char* arg, const Arena* arena, uintptr_t address,
                         int64_t bytes) const;
  static BackendStatus SizeMismatch(const char* op, size_t host, int64_t device);
};

}  // namespace flotilla::kernels
