// The CUDA backend's ops beyond those of kernels/ops.h: the blocks the model adds (model ops, MoE
// ops, attention ops; kernels/backend_ops.h). Host code, built with the CUDA runtime API into
// flotilla_kernels_cuda; the kernels are the .cu files beside it.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <string>
#include <vector>

#include "kernels/cuda/attention_ops.h"
#include "kernels/cuda/compressor.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_backend_internal.h"
#include "kernels/cuda/dense_gemm.h"
#include "kernels/cuda/fp8_gemm.h"
#include "kernels/cuda/grouped_gemm_fp4.h"
#include "kernels/cuda/indexer.h"
#include "kernels/cuda/model_ops.h"
#include "kernels/cuda/moe.h"
#include "kernels/cuda/moe_permute.h"
#include "kernels/ops.h"

namespace flotilla::kernels::cuda {

// ---------------------------------------------------------------- model ops

BackendStatus CudaBackend::DoEmbedRows(Queue& queue, const EmbedRowsArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "EmbedRows");
  EmbedRowsParams p;
  p.table = Ptr(a.table);
  p.tokens = Ptr(a.tokens);
  p.first = a.first;
  p.num_rows = a.num_rows;
  p.n = a.n;
  p.d = a.d;
  p.out = Ptr(a.out);
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckEmbedRows(p), "EmbedRows"));
  return Launched(LaunchEmbedRows(p, q->stream()), "EmbedRows");
}

BackendStatus CudaBackend::DoRepeatRows(Queue& queue, const RepeatRowsArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "RepeatRows");
  RepeatRowsParams p;
  p.x = Ptr(a.x);
  p.n = a.n;
  p.copies = a.copies;
  p.d = a.d;
  p.out = Ptr(a.out);
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckRepeatRows(p), "RepeatRows"));
  return Launched(LaunchRepeatRows(p, q->stream()), "RepeatRows");
}

BackendStatus CudaBackend::DoBroadcastAdd(Queue& queue, const BroadcastAddArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "BroadcastAdd");
  BroadcastAddParams p;
  p.a = Ptr(a.a);
  p.b = Ptr(a.b);
  p.n = a.n;
  p.copies = a.copies;
  p.d = a.d;
  p.out = Ptr(a.out);
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckBroadcastAdd(p), "BroadcastAdd"));
  return Launched(LaunchBroadcastAdd(p, q->stream()), "BroadcastAdd");
}

BackendStatus CudaBackend::DoConvertBf16ToF32(Queue& queue, const ConvertBf16ToF32Args& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "ConvertBf16ToF32");
  FLOTILLA_CUDA_RETURN_IF_ERROR(
      Refused(CheckConvert(Ptr(a.x), Ptr(a.y), a.count), "ConvertBf16ToF32"));
  return Launched(LaunchConvertBf16ToF32(Ptr(a.x), Ptr(a.y), a.count, q->stream()),
                  "ConvertBf16ToF32");
}

BackendStatus CudaBackend::DoConvertF32ToBf16(Queue& queue, const ConvertF32ToBf16Args& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "ConvertF32ToBf16");
  FLOTILLA_CUDA_RETURN_IF_ERROR(
      Refused(CheckConvert(Ptr(a.x), Ptr(a.y), a.count), "ConvertF32ToBf16"));
  return Launched(LaunchConvertF32ToBf16(Ptr(a.x), Ptr(a.y), a.count, q->stream()),
                  "ConvertF32ToBf16");
}

BackendStatus CudaBackend::DoInterleaveRows(Queue& queue, const InterleaveRowsArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "InterleaveRows");
  InterleaveRowsParams p;
  p.src = Ptr(a.src);
  p.blocks = a.blocks;
  p.rows = a.rows;
  p.row_bytes = a.row_bytes;
  p.dst = Ptr(a.dst);
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckInterleaveRows(p), "InterleaveRows"));
  return Launched(LaunchInterleaveRows(p, q->stream()), "InterleaveRows");
}

// ---------------------------------------------------------------- MoE ops

BackendStatus CudaBackend::DoRoutePerRowK(Queue& queue, const RoutePerRowKArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "RoutePerRowK");
  if (a.m == 0) return BackendStatus::Ok();
  RouteParams p;
  p.logits = Ptr(a.logits);
  p.bias = Ptr(a.bias);
  p.hash_ids = Ptr(a.hash_ids);
  p.ld_hash = a.ld_hash;
  p.m = a.m;
  p.num_experts = a.num_experts;
  p.top_k = a.top_k;
  p.route_scale = a.route_scale;
  p.row_top_k = Ptr(a.row_top_k);
  p.expert_idx = Ptr(a.expert_idx);
  p.weights = Ptr(a.weights);
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckRoute(p), "RoutePerRowK"));
  return Launched(LaunchRoute(p, q->stream()), "RoutePerRowK");
}

// One launch per group, each reading its two offsets on the device (no host synchronisation):
// the group's weights need not lie at a fixed stride from the previous group's.
BackendStatus CudaBackend::DoGroupedGemmFp8Fp4(Queue& queue, const GroupedGemmFp8Fp4Args& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "GroupedGemmFp8Fp4");
  if (a.rows == 0 || a.n == 0) return BackendStatus::Ok();
  for (size_t g = 0; g < a.w.size(); ++g) {
    GroupedGemmFp8Fp4Params p;
    p.a = Ptr(a.a);
    p.a_scale = Ptr(a.a_scale);
    p.w = Ptr(a.w[g]);
    p.w_scale = Ptr(a.w_scale[g]);
    p.group_offsets64 = Ptr(a.offsets) + g;
    p.window_begin = a.row_begin;
    p.window_rows = a.rows;
    p.c = Ptr(a.c);
    p.ldc = a.ldc;
    p.n = a.n;
    p.k = a.k;
    p.num_experts = 1;
    FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckGroupedGemmFp8Fp4(p), "GroupedGemmFp8Fp4"));
    FLOTILLA_CUDA_RETURN_IF_ERROR(
        Launched(LaunchGroupedGemmFp8Fp4(p, q->stream()), "GroupedGemmFp8Fp4"));
  }
  return BackendStatus::Ok();
}

namespace {

// The group offsets on the host: the FP8 and bf16 GEMMs (cuBLASLt, the dense kernel) take their
// row counts from the host, so these two grouped GEMMs wait for the offsets (docs/cuda.md).
// Grown once to the most groups seen, then reused.
BackendResult<const int64_t*> HostOffsets(Queue& queue, cudaStream_t stream,
                                          const In<int64_t>& offsets, size_t num_groups,
                                          const char* op) {
  static thread_local std::vector<int64_t> host;
  host.resize(num_groups + 1);
  cudaError_t rc =
      cudaMemcpyAsync(host.data(), BackendAccess::Address(offsets),
                      (num_groups + 1) * sizeof(int64_t), cudaMemcpyDeviceToHost, stream);
  if (rc == cudaSuccess) rc = cudaStreamSynchronize(stream);
  if (rc != cudaSuccess) return CudaError(std::string(op) + ": reading the group offsets", rc);
  (void)queue;
  return static_cast<const int64_t*>(host.data());
}

// The window's rows of group g: [first, first + count) relative to row_begin.
void GroupRows(const int64_t* offsets, size_t g, int64_t row_begin, int64_t rows, int64_t* first,
               int64_t* count) {
  const int64_t lo = std::clamp<int64_t>(offsets[g] - row_begin, 0, rows);
  const int64_t hi = std::clamp<int64_t>(offsets[g + 1] - row_begin, 0, rows);
  *first = lo;
  *count = std::max<int64_t>(0, hi - lo);
}

}  // namespace

BackendStatus CudaBackend::DoGroupedGemmFp8(Queue& queue, const GroupedGemmFp8Args& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "GroupedGemmFp8");
  if (a.rows == 0 || a.n == 0) return BackendStatus::Ok();
  BackendResult<const int64_t*> offsets =
      HostOffsets(queue, q->stream(), a.offsets, a.w.size(), "GroupedGemmFp8");
  if (!offsets.ok()) return offsets.status();
  const int64_t kb = a.k / 128;
  for (size_t g = 0; g < a.w.size(); ++g) {
    int64_t first = 0, count = 0;
    GroupRows(offsets.value(), g, a.row_begin, a.rows, &first, &count);
    if (count == 0) continue;
    GemmFp8Args s;
    s.a = a.a.subspan(first * a.k, count * a.k);
    s.a_scale = a.a_scale.subspan(first * kb, count * kb);
    s.w = a.w[g];
    if (!a.w_scale.empty()) s.w_scale = a.w_scale[g];
    if (!a.w_scale_f32.empty()) s.w_scale_f32 = a.w_scale_f32[g];
    s.c = a.c.subspan(first * a.ldc, (count - 1) * a.ldc + a.n);
    s.ldc = a.ldc;
    s.m = count;
    s.n = a.n;
    s.k = a.k;
    FLOTILLA_CUDA_RETURN_IF_ERROR(DoGemmFp8(queue, s));
  }
  return BackendStatus::Ok();
}

BackendStatus CudaBackend::DoGroupedGemmBf16(Queue& queue, const GroupedGemmBf16Args& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "GroupedGemmBf16");
  if (a.rows == 0 || a.n == 0) return BackendStatus::Ok();
  BackendResult<const int64_t*> offsets =
      HostOffsets(queue, q->stream(), a.offsets, a.w.size(), "GroupedGemmBf16");
  if (!offsets.ok()) return offsets.status();
  for (size_t g = 0; g < a.w.size(); ++g) {
    int64_t first = 0, count = 0;
    GroupRows(offsets.value(), g, a.row_begin, a.rows, &first, &count);
    if (count == 0) continue;
    GemmBf16Args s;
    s.a = a.a.subspan(first * a.lda, (count - 1) * a.lda + a.k);
    s.lda = a.lda;
    s.w = a.w[g];
    s.ldw = a.k;
    s.c = a.c.subspan(first * a.ldc, (count - 1) * a.ldc + a.n);
    s.ldc = a.ldc;
    s.m = count;
    s.n = a.n;
    s.k = a.k;
    FLOTILLA_CUDA_RETURN_IF_ERROR(DoGemmBf16(queue, s));
  }
  return BackendStatus::Ok();
}

// ---------------------------------------------------------------- attention ops

BackendStatus CudaBackend::DoCompressorUpdate(Queue& queue, const CompressorUpdateArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "CompressorUpdate");
  if (a.n == 0) return BackendStatus::Ok();
  CompressorUpdateParams p;
  p.k = Ptr(a.k);
  p.g = Ptr(a.g);
  p.ape = Ptr(a.ape);
  p.n = a.n;
  p.width = a.width;
  p.d = a.d;
  p.ratio = a.ratio;
  p.overlap = a.overlap;
  p.start_pos = a.start_pos;
  p.state_kv = Ptr(a.state_kv);
  p.state_score = Ptr(a.state_score);
  p.pooled = Ptr(a.pooled);
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckCompressorUpdate(p), "CompressorUpdate"));
  FLOTILLA_CUDA_RETURN_IF_ERROR(
      Launched(LaunchCompressorUpdate(p, q->stream()), "CompressorUpdate"));
  if (a.entry_pos.arena() == nullptr) return BackendStatus::Ok();
  return Launched(
      LaunchEntryPositions(Ptr(a.entry_pos), CompressorEntries(a.start_pos, a.n, a.ratio),
                           a.start_pos, a.ratio, q->stream()),
      "CompressorUpdate");
}

BackendStatus CudaBackend::DoIndexerTopK(Queue& queue, const IndexerTopKArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "IndexerTopK");
  if (a.rows == 0 || a.n_keys == 0) return BackendStatus::Ok();
  IndexerTopKParams p;
  p.q = Ptr(a.q);
  p.w = Ptr(a.w);
  p.w_scale = a.w_scale;
  p.keys = Ptr(a.keys);
  p.first_key = a.first_key;
  p.n_keys = a.n_keys;
  p.rows = a.rows;
  p.start_pos = a.start_pos;
  p.ratio = a.ratio;
  p.num_heads = a.num_heads;
  p.dim = a.dim;
  p.top_k = a.top_k;
  p.picks = Ptr(a.picks);
  p.pick_scores = Ptr(a.pick_scores);
  p.num_picks = Ptr(a.num_picks);
  p.error = q->error();
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckIndexerTopK(p), "IndexerTopK"));
  return Launched(LaunchIndexerTopK(p, q->stream()), "IndexerTopK");
}

BackendStatus CudaBackend::DoPickedEntries(Queue& queue, const PickedEntriesArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "PickedEntries");
  PickedEntriesParams p;
  p.picks = Ptr(a.picks);
  p.num_picks = Ptr(a.num_picks);
  p.rows = a.rows;
  p.top_k = a.top_k;
  p.visible = a.visible;
  p.max_entries = a.max_entries;
  p.entry_slot = Ptr(a.entry_slot);
  p.entry_idx = Ptr(a.entry_idx);
  p.count = Ptr(a.count);
  p.error = q->error();
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckPickedEntries(p), "PickedEntries"));
  return Launched(LaunchPickedEntries(p, q->stream()), "PickedEntries");
}

BackendStatus CudaBackend::DoUnpackKvEntriesPaged(Queue& queue, const KvUnpackPagedArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "UnpackKvEntriesPaged");
  if (a.max_rows == 0) return BackendStatus::Ok();
  KvUnpackPagedParams p;
  p.pool = Ptr(a.pool);
  p.pool_pages = a.pool.size() / a.page_bytes;
  p.page_bytes = a.page_bytes;
  p.per_page = a.per_page;
  p.page_ids = Ptr(a.page_ids);
  p.table_pages = a.page_ids.size();
  p.units = Ptr(a.units);
  p.count = Ptr(a.count);
  p.max_rows = a.max_rows;
  p.nope = a.nope;
  p.rope = a.rope;
  p.entry_bytes = a.entry_bytes;
  p.x = Ptr(a.x);
  p.ldx = a.ldx;
  p.error = q->error();
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckKvUnpackPaged(p), "UnpackKvEntriesPaged"));
  return Launched(LaunchKvUnpackPaged(p, q->stream()), "UnpackKvEntriesPaged");
}

BackendStatus CudaBackend::DoChunkAttention(Queue& queue, const ChunkAttentionArgs&) {
  FLOTILLA_CUDA_QUEUE(q, queue, "ChunkAttention");
  (void)q;
  // As SparseAttention: kernels/cuda/sparse_attention.h attends over the packed, paged pool,
  // not over bf16 rows of a workspace.
  return BackendStatus::Error(
      "ChunkAttention: no CUDA kernel takes bf16 KV rows (kernels/cuda/sparse_attention.h reads "
      "the packed, paged KV pool); run this op on the CPU backend");
}

}  // namespace flotilla::kernels::cuda
