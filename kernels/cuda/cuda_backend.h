// The CUDA backend: device arenas (cudaMalloc through the runtime API; never the driver API),
// queues that are CUDA streams with CUDA events, host <-> device copies, fill, and every op of
// kernels/backend_ops.h dispatched to the kernels of kernels/cuda/. Arguments are checked on the
// host by kernels/backend.cc exactly as for the CPU backend; each kernel's own launch check
// (shape limits, alignment) is applied here and names the op.
//
// Numerics (docs/cuda.md): bitwise equal to the CPU backend for every op that is not a tensor-core
// GEMM (the FP8 x FP4 GEMM and the FP8 GEMM on cuBLASLt are held to stated tolerances).
// SparseAttention is refused by name: the CUDA kernel (kernels/cuda/sparse_attention.h) reads the
// packed, paged KV pool, not the bf16 rows this op names (docs/cuda.md).
//
// Index lists the host cannot see (GatherRows/ScatterRows, CompressPool's slot offsets) are
// checked on the device: a bad entry is skipped and the first one is reported, naming the op, the
// position and the value, by the next Synchronize of the queue it was issued on.
//
// Plain C++ header (no CUDA headers): built into flotilla_kernels_cuda only.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kernels/backend.h"

namespace flotilla::kernels::cuda {

class CudaBackend final : public Backend {
 public:
  // The backend of CUDA device `device`. max_arena_bytes: the largest arena NewArena makes (0: the
  // device's memory). Errors: no CUDA device or driver, a device index out of range.
  static BackendResult<std::unique_ptr<CudaBackend>> Create(int device,
                                                            int64_t max_arena_bytes = 0);

  const MemoryKind& memory() const override { return memory_; }
  BackendResult<std::unique_ptr<Arena>> NewArena(const std::string& name, int64_t bytes) override;
  BackendResult<std::unique_ptr<Arena>> ImportHost(const std::string& name, const void* host,
                                                   int64_t bytes) override;
  // A new stream (non-blocking with respect to the legacy default stream) with its own device
  // error record. Returns nullptr when the device cannot make one (out of resources).
  std::unique_ptr<Queue> NewQueue() override;
  int device() const { return device_; }

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
  CudaBackend(int device, int64_t max_arena_bytes);

  MemoryKind memory_;
  int device_ = 0;
};

}  // namespace flotilla::kernels::cuda
