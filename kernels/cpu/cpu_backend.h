// The CPU backend: host memory arenas and the kernels of kernels/cpu/ behind the Backend seam,
// bitwise equal to calling kernels/ops.h directly (tests/kernels/backend_test.cc holds every op
// to that).
//
// Its queues run each call to completion before returning (in issue order, so trivially
// ordered); an event is done as soon as it is recorded. The ops are multithreaded inside
// (OpenMP), as when called directly.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kernels/backend.h"

namespace flotilla::kernels {

class CpuBackend final : public Backend {
 public:
  // max_arena_bytes: the largest arena NewArena makes (0: the machine's physical memory).
  explicit CpuBackend(int64_t max_arena_bytes = 0);

  const MemoryKind& memory() const override { return memory_; }
  BackendResult<std::unique_ptr<Arena>> NewArena(const std::string& name, int64_t bytes) override;
  BackendResult<std::unique_ptr<Arena>> ImportHost(const std::string& name, const void* host,
                                                   int64_t bytes) override;
  std::unique_ptr<Queue> NewQueue() override;

 protected:
  BackendStatus DoUpload(Queue& queue, const void* host, uintptr_t dst, int64_t bytes) override;
  BackendStatus DoDownload(Queue& queue, uintptr_t src, void* host, int64_t bytes) override;
  BackendStatus DoCopy(Queue& queue, uintptr_t src, uintptr_t dst, int64_t bytes) override;
  BackendStatus DoFill(Queue& queue, uintptr_t dst, int64_t count, int64_t element_bytes,
                       uint64_t pattern) override;

  BackendStatus DoActQuantFp8(Queue& queue, const ActQuantArgs& args) override;
  BackendStatus DoFp8SimulateInPlace(Queue& queue, const QuantSimulateArgs& args) override;
  BackendStatus DoFp4SimulateInPlace(Queue& queue, const QuantSimulateArgs& args) override;
  BackendStatus DoGemmFp8(Queue& queue, const GemmFp8Args& args) override;
  BackendStatus DoGemmFp8Fp4(Queue& queue, const GemmFp8Fp4Args& args) override;
  BackendStatus DoGemmBf16(Queue& queue, const GemmBf16Args& args) override;
  BackendStatus DoGemmF32(Queue& queue, const GemmF32Args& args) override;
  BackendStatus DoRmsNorm(Queue& queue, const RmsNormArgs& args) override;
  BackendStatus DoHeadRmsNormBf16(Queue& queue, const HeadRmsNormArgs& args) override;
  BackendStatus DoRopeFrequencies(Queue& queue, const RopeFrequenciesArgs& args) override;
  BackendStatus DoApplyRope(Queue& queue, const RopeArgs& args) override;
  BackendStatus DoHcPre(Queue& queue, const HcPreArgs& args) override;
  BackendStatus DoHcPost(Queue& queue, const HcPostArgs& args) override;
  BackendStatus DoHcHead(Queue& queue, const HcHeadArgs& args) override;
  BackendStatus DoCompressPool(Queue& queue, const CompressPoolArgs& args) override;
  BackendStatus DoHadamardRotateBf16(Queue& queue, const HadamardArgs& args) override;
  BackendStatus DoIndexerScores(Queue& queue, const IndexerScoreArgs& args) override;
  BackendStatus DoTopK(Queue& queue, const TopKArgs& args) override;
  BackendStatus DoSparseAttention(Queue& queue, const SparseAttentionArgs& args) override;
  BackendStatus DoRoute(Queue& queue, const RouteArgs& args) override;
  BackendStatus DoSwiGlu(Queue& queue, const SwiGluArgs& args) override;
  BackendStatus DoMoePermute(Queue& queue, const MoePermuteArgs& args) override;
  BackendStatus DoGatherRows(Queue& queue, const RowCopyArgs& args) override;
  BackendStatus DoScatterRows(Queue& queue, const RowCopyArgs& args) override;
  BackendStatus DoMoeCombine(Queue& queue, const MoeCombineArgs& args) override;
  BackendStatus DoPackKvEntries(Queue& queue, const KvPackArgs& args) override;
  BackendStatus DoUnpackKvEntries(Queue& queue, const KvUnpackArgs& args) override;
  BackendStatus DoPackIndexerKeys(Queue& queue, const KvPackArgs& args) override;
  BackendStatus DoUnpackIndexerKeys(Queue& queue, const KvUnpackArgs& args) override;
  // ---- model ops
  BackendStatus DoEmbedRows(Queue& queue, const EmbedRowsArgs& args) override;
  BackendStatus DoRepeatRows(Queue& queue, const RepeatRowsArgs& args) override;
  BackendStatus DoBroadcastAdd(Queue& queue, const BroadcastAddArgs& args) override;
  BackendStatus DoConvertBf16ToF32(Queue& queue, const ConvertBf16ToF32Args& args) override;
  BackendStatus DoConvertF32ToBf16(Queue& queue, const ConvertF32ToBf16Args& args) override;
  BackendStatus DoInterleaveRows(Queue& queue, const InterleaveRowsArgs& args) override;
  // ---- MoE ops
  BackendStatus DoRoutePerRowK(Queue& queue, const RoutePerRowKArgs& args) override;
  BackendStatus DoGroupedGemmFp8Fp4(Queue& queue, const GroupedGemmFp8Fp4Args& args) override;
  BackendStatus DoGroupedGemmFp8(Queue& queue, const GroupedGemmFp8Args& args) override;
  BackendStatus DoGroupedGemmBf16(Queue& queue, const GroupedGemmBf16Args& args) override;
  // ---- attention ops
  BackendStatus DoCompressorUpdate(Queue& queue, const CompressorUpdateArgs& args) override;
  BackendStatus DoIndexerTopK(Queue& queue, const IndexerTopKArgs& args) override;
  BackendStatus DoPickedEntries(Queue& queue, const PickedEntriesArgs& args) override;
  BackendStatus DoUnpackKvEntriesPaged(Queue& queue, const KvUnpackPagedArgs& args) override;
  BackendStatus DoChunkAttention(Queue& queue, const ChunkAttentionArgs& args) override;

 private:
  // OK when `queue` is one of this backend's queues.
  BackendStatus CheckQueue(const Queue& queue, const char* op) const;

  MemoryKind memory_;
};

}  // namespace flotilla::kernels
