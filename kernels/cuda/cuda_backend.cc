// The CUDA backend (cuda_backend.h): host code, built with the CUDA runtime API into
// flotilla_kernels_cuda; the kernels it launches are the .cu files beside it.
#include "kernels/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <string>
#include <vector>

#include "kernels/cuda/act_quant.h"
#include "kernels/cuda/attention_ops.h"
#include "kernels/cuda/compressor.h"
#include "kernels/cuda/cuda_backend_internal.h"
#include "kernels/cuda/cuda_queue.h"
#include "kernels/cuda/dense_gemm.h"
#include "kernels/cuda/device_error.h"
#include "kernels/cuda/fill.h"
#include "kernels/cuda/fp8_gemm.h"
#include "kernels/cuda/grouped_gemm_fp4.h"
#include "kernels/cuda/hyper_connection.h"
#include "kernels/cuda/indexer.h"
#include "kernels/cuda/kv_pack.h"
#include "kernels/cuda/model_ops.h"
#include "kernels/cuda/moe.h"
#include "kernels/cuda/moe_permute.h"
#include "kernels/cuda/norm.h"
#include "kernels/cuda/rope.h"
#include "kernels/ops.h"

namespace flotilla::kernels::cuda {
namespace {

constexpr int64_t kCudaAlignment = 256;  // what cudaMalloc guarantees

void ReleaseDevice(uintptr_t base, int64_t) {
  // Errors here (a device already lost) leave nothing to do: destructors never fail.
  if (base != 0) (void)cudaFree(reinterpret_cast<void*>(base));
}

}  // namespace

BackendResult<std::unique_ptr<CudaBackend>> CudaBackend::Create(int device,
                                                                int64_t max_arena_bytes) {
  int count = 0;
  cudaError_t rc = cudaGetDeviceCount(&count);
  if (rc != cudaSuccess) return CudaError("CudaBackend: no usable CUDA device", rc);
  if (device < 0 || device >= count) {
    return BackendStatus::Error("CudaBackend: device " + std::to_string(device) +
                                "; expected 0 to " + std::to_string(count - 1) + " (" +
                                std::to_string(count) + " CUDA devices)");
  }
  rc = cudaSetDevice(device);
  if (rc != cudaSuccess)
    return CudaError("CudaBackend: cudaSetDevice(" + std::to_string(device) + ")", rc);
  size_t free_bytes = 0, total_bytes = 0;
  rc = cudaMemGetInfo(&free_bytes, &total_bytes);
  if (rc != cudaSuccess) return CudaError("CudaBackend: cudaMemGetInfo", rc);
  const int64_t limit = max_arena_bytes > 0 ? max_arena_bytes : int64_t(total_bytes);
  return std::unique_ptr<CudaBackend>(new CudaBackend(device, limit));
}

CudaBackend::CudaBackend(int device, int64_t max_arena_bytes) : device_(device) {
  memory_.name = "cuda:" + std::to_string(device);
  memory_.alignment = kCudaAlignment;
  memory_.max_arena_bytes = max_arena_bytes;
  memory_.owner = static_cast<const Backend*>(this);
}

BackendResult<std::unique_ptr<Arena>> CudaBackend::NewArena(const std::string& name,
                                                            int64_t bytes) {
  if (bytes < 0 || bytes > memory_.max_arena_bytes) {
    return BackendStatus::Error("NewArena '" + name + "': " + std::to_string(bytes) +
                                " bytes; expected 0 to " + std::to_string(memory_.max_arena_bytes) +
                                " (the " + memory_.name + " limit)");
  }
  cudaError_t rc = cudaSetDevice(device_);
  if (rc != cudaSuccess) return CudaError("NewArena '" + name + "': cudaSetDevice", rc);
  void* memory = nullptr;
  rc = cudaMalloc(&memory, size_t(std::max<int64_t>(bytes, kCudaAlignment)));
  if (rc != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error so later calls are not blamed
    size_t free_bytes = 0, total_bytes = 0;
    (void)cudaMemGetInfo(&free_bytes, &total_bytes);
    return CudaError("NewArena '" + name + "': " + memory_.name + " cannot give " +
                         std::to_string(bytes) + " bytes (" + std::to_string(free_bytes) + " free)",
                     rc);
  }
  return std::make_unique<Arena>(name, memory_, reinterpret_cast<uintptr_t>(memory), bytes,
                                 &ReleaseDevice);
}

BackendResult<std::unique_ptr<Arena>> CudaBackend::ImportHost(const std::string& name, const void*,
                                                              int64_t) {
  // Kernels read device memory only; pageable host memory (a mapped file) is not addressable
  // from the device, so weights are uploaded into an arena of this backend instead.
  return BackendStatus::Error("ImportHost '" + name + "': " + memory_.name +
                              " cannot view host memory in place; weights are uploaded");
}

std::unique_ptr<Queue> CudaBackend::NewQueue() {
  if (cudaSetDevice(device_) != cudaSuccess) return nullptr;
  cudaStream_t stream = nullptr;
  if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) return nullptr;
  void* error = nullptr;
  void* scratch = nullptr;
  if (cudaMalloc(&error, sizeof(DeviceError)) != cudaSuccess ||
      cudaMalloc(&scratch, 2 * sizeof(int32_t)) != cudaSuccess ||
      cudaMemsetAsync(error, 0, sizeof(DeviceError), stream) != cudaSuccess ||
      cudaStreamSynchronize(stream) != cudaSuccess) {
    (void)cudaFree(error);
    (void)cudaFree(scratch);
    (void)cudaStreamDestroy(stream);
    return nullptr;
  }
  return std::make_unique<CudaQueue>(this, stream, static_cast<DeviceError*>(error),
                                     static_cast<int32_t*>(scratch));
}

// ---------------------------------------------------------------- copies and fill

BackendStatus CudaBackend::DoUpload(Queue& queue, const void* host, uintptr_t dst, int64_t bytes) {
  FLOTILLA_CUDA_QUEUE(q, queue, "Upload");
  if (bytes == 0) return BackendStatus::Ok();
  const cudaError_t rc = cudaMemcpyAsync(reinterpret_cast<void*>(dst), host, size_t(bytes),
                                         cudaMemcpyHostToDevice, q->stream());
  return rc == cudaSuccess ? BackendStatus::Ok() : CudaError("Upload", rc);
}

BackendStatus CudaBackend::DoDownload(Queue& queue, uintptr_t src, void* host, int64_t bytes) {
  FLOTILLA_CUDA_QUEUE(q, queue, "Download");
  if (bytes == 0) return BackendStatus::Ok();
  const cudaError_t rc = cudaMemcpyAsync(host, reinterpret_cast<const void*>(src), size_t(bytes),
                                         cudaMemcpyDeviceToHost, q->stream());
  return rc == cudaSuccess ? BackendStatus::Ok() : CudaError("Download", rc);
}

BackendStatus CudaBackend::DoCopy(Queue& queue, uintptr_t src, uintptr_t dst, int64_t bytes) {
  FLOTILLA_CUDA_QUEUE(q, queue, "Copy");
  if (bytes == 0) return BackendStatus::Ok();
  const cudaError_t rc =
      cudaMemcpyAsync(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src),
                      size_t(bytes), cudaMemcpyDeviceToDevice, q->stream());
  return rc == cudaSuccess ? BackendStatus::Ok() : CudaError("Copy", rc);
}

BackendStatus CudaBackend::DoFill(Queue& queue, uintptr_t dst, int64_t count, int64_t element_bytes,
                                  uint64_t pattern) {
  FLOTILLA_CUDA_QUEUE(q, queue, "Fill");
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckFill(count, element_bytes), "Fill"));
  return Launched(
      LaunchFill(reinterpret_cast<void*>(dst), count, element_bytes, pattern, q->stream()), "Fill");
}

// ---------------------------------------------------------------- quantisation

BackendStatus CudaBackend::DoActQuantFp8(Queue& queue, const ActQuantArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "ActQuantFp8");
  ActQuantFp8Params p;
  p.x = Ptr(a.x);
  p.ldx = a.ldx;
  p.m = a.m;
  p.k = a.k;
  p.block = a.block;
  p.q = Ptr(a.q);
  p.scale = Ptr(a.scale);
  if (a.m == 0 || a.k == 0) return BackendStatus::Ok();
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckActQuantFp8(p), "ActQuantFp8"));
  return Launched(LaunchActQuantFp8(p, q->stream()), "ActQuantFp8");
}

namespace {

BackendStatus Simulate(cudaStream_t stream, const QuantSimulateArgs& a, SimulateFormat format,
                       const char* op) {
  if (a.rows == 0 || a.n == 0) return BackendStatus::Ok();
  SimulateParams p;
  p.x = Ptr(a.x);
  p.rows = a.rows;
  p.ld = a.ld;
  p.n = a.n;
  p.block = a.block;
  p.format = format;
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckSimulate(p), op));
  return Launched(LaunchSimulate(p, stream), op);
}

}  // namespace

BackendStatus CudaBackend::DoFp8SimulateInPlace(Queue& queue, const QuantSimulateArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "Fp8SimulateInPlace");
  return Simulate(q->stream(), a, SimulateFormat::kFp8, "Fp8SimulateInPlace");
}

BackendStatus CudaBackend::DoFp4SimulateInPlace(Queue& queue, const QuantSimulateArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "Fp4SimulateInPlace");
  return Simulate(q->stream(), a, SimulateFormat::kFp4, "Fp4SimulateInPlace");
}

// ---------------------------------------------------------------- GEMMs

BackendStatus CudaBackend::DoGemmFp8(Queue& queue, const GemmFp8Args& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "GemmFp8");
  if (a.m == 0 || a.n == 0) return BackendStatus::Ok();
  // cuBLASLt's block-scaled FP8 (kernels/cuda/fp8_gemm.h): the queue's handle pins one algorithm
  // per weight shape; the weight scales go into its f32 layout in the queue's workspace on every
  // call, ahead of the GEMM's own workspace.
  BackendResult<Fp8GemmLt*> lt = q->Fp8Gemm();
  if (!lt.ok()) return BackendStatus::Error("GemmFp8: " + lt.status().message());
  if (const char* why = lt.value()->Prepare(a.n, a.k)) return Refused(why, "GemmFp8");
  const size_t scale_bytes =
      (size_t(Fp8WeightScaleCount(a.n, a.k)) * sizeof(float) + 255) / 256 * 256;
  const size_t gemm_bytes = Fp8GemmWorkspaceBytes(a.m, a.k);
  BackendResult<void*> ws = q->Workspace(scale_bytes + gemm_bytes);
  if (!ws.ok()) return BackendStatus::Error("GemmFp8: " + ws.status().message());
  float* w_scale = static_cast<float*>(ws.value());
  Fp8GemmParams p;
  p.a = Ptr(a.a);
  p.a_scale = Ptr(a.a_scale);
  p.w = Ptr(a.w);
  p.w_scale = w_scale;
  p.c = Ptr(a.c);
  p.ldc = a.ldc;
  p.m = a.m;
  p.n = a.n;
  p.k = a.k;
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckFp8Gemm(p), "GemmFp8"));
  const int rc =
      a.w_scale.arena() != nullptr
          ? LaunchConvertFp8WeightScales(Ptr(a.w_scale), a.n, a.k, w_scale, q->stream())
          : LaunchConvertFp8WeightScalesF32(Ptr(a.w_scale_f32), a.n, a.k, w_scale, q->stream());
  FLOTILLA_CUDA_RETURN_IF_ERROR(Launched(rc, "GemmFp8"));
  if (const char* why = lt.value()->Run(p, static_cast<char*>(ws.value()) + scale_bytes, gemm_bytes,
                                        q->stream())) {
    return BackendStatus::Error(std::string("GemmFp8: ") + why);
  }
  return BackendStatus::Ok();
}

BackendStatus CudaBackend::DoGemmFp8Fp4(Queue& queue, const GemmFp8Fp4Args& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "GemmFp8Fp4");
  if (a.m == 0 || a.n == 0) return BackendStatus::Ok();
  if (a.m > 0x7fffffff) return Refused("m must fit an int32 group offset", "GemmFp8Fp4");
  GroupedGemmFp8Fp4Params p;
  p.a = Ptr(a.a);
  p.a_scale = Ptr(a.a_scale);
  p.w = Ptr(a.w);
  p.w_scale = Ptr(a.w_scale);
  p.group_offsets = q->scratch();
  p.c = Ptr(a.c);
  p.ldc = a.ldc;
  p.n = a.n;
  p.k = a.k;
  p.num_experts = 1;
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckGroupedGemmFp8Fp4(p), "GemmFp8Fp4"));
  FLOTILLA_CUDA_RETURN_IF_ERROR(
      Launched(LaunchSingleGroupOffsets(q->scratch(), int32_t(a.m), q->stream()), "GemmFp8Fp4"));
  return Launched(LaunchGroupedGemmFp8Fp4(p, q->stream()), "GemmFp8Fp4");
}

namespace {

// Launches in slices of at most 65535 rows (the grid's y limit).
BackendStatus DenseGemmRows(const DenseGemmParams& p, cudaStream_t stream, const char* op) {
  for (int64_t r0 = 0; r0 < p.m; r0 += 65535) {
    DenseGemmParams s = p;
    s.m = std::min<int64_t>(65535, p.m - r0);
    if (p.a != nullptr) s.a = p.a + r0 * p.lda;
    if (p.a_bf16 != nullptr) s.a_bf16 = p.a_bf16 + r0 * p.lda;
    if (p.c != nullptr) s.c = p.c + r0 * p.ldc;
    if (p.c_bf16 != nullptr) s.c_bf16 = p.c_bf16 + r0 * p.ldc;
    FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckDenseGemm(s), op));
    FLOTILLA_CUDA_RETURN_IF_ERROR(Launched(LaunchDenseGemm(s, stream), op));
  }
  return BackendStatus::Ok();
}

}  // namespace

BackendStatus CudaBackend::DoGemmBf16(Queue& queue, const GemmBf16Args& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "GemmBf16");
  DenseGemmParams p;
  p.a_bf16 = Ptr(a.a);
  p.lda = a.lda;
  p.w_bf16 = Ptr(a.w);
  p.ldw = a.ldw;
  p.c_bf16 = Ptr(a.c);
  p.c = Ptr(a.c_f32);
  p.ldc = a.ldc;
  p.m = a.m;
  p.n = a.n;
  p.k = a.k;
  if (a.m == 0 || a.n == 0) return BackendStatus::Ok();
  return DenseGemmRows(p, q->stream(), "GemmBf16");
}

BackendStatus CudaBackend::DoGemmF32(Queue& queue, const GemmF32Args& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "GemmF32");
  DenseGemmParams p;
  p.a = Ptr(a.a);
  p.a_bf16 = Ptr(a.a_bf16);
  p.lda = a.lda;
  p.w = Ptr(a.w);
  p.w_bf16 = Ptr(a.w_bf16);
  p.ldw = a.ldw;
  p.c = Ptr(a.c);
  p.ldc = a.ldc;
  p.m = a.m;
  p.n = a.n;
  p.k = a.k;
  if (a.m == 0 || a.n == 0) return BackendStatus::Ok();
  return DenseGemmRows(p, q->stream(), "GemmF32");
}

// ---------------------------------------------------------------- norms, RoPE

BackendStatus CudaBackend::DoRmsNorm(Queue& queue, const RmsNormArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "RmsNorm");
  if (a.m == 0) return BackendStatus::Ok();
  RmsNormParams p;
  p.x = Ptr(a.x);
  p.ldx = a.ldx;
  p.w = Ptr(a.w);
  p.m = a.m;
  p.d = a.d;
  p.eps = a.eps;
  p.y = Ptr(a.y);
  p.ldy = a.ldy;
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckRmsNorm(p), "RmsNorm"));
  return Launched(LaunchRmsNorm(p, q->stream()), "RmsNorm");
}

BackendStatus CudaBackend::DoHeadRmsNormBf16(Queue& queue, const HeadRmsNormArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "HeadRmsNormBf16");
  if (a.rows == 0) return BackendStatus::Ok();
  HeadRmsNormParams p;
  p.q = Ptr(a.q);
  p.rows = a.rows;
  p.dim = a.dim;
  p.eps = a.eps;
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckHeadRmsNorm(p), "HeadRmsNormBf16"));
  return Launched(LaunchHeadRmsNorm(p, q->stream()), "HeadRmsNormBf16");
}

BackendStatus CudaBackend::DoRopeFrequencies(Queue& queue, const RopeFrequenciesArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "RopeFrequencies");
  // A load-time table: computed by the CPU backend's own function (pow and log in double), copied,
  // and waited for (the host vector goes when this returns).
  std::vector<float> freqs(size_t(a.rope_dim / 2));
  kernels::RopeFrequencies(a.rope_dim, a.base, a.yarn, a.factor, a.original_max_position,
                           a.beta_fast, a.beta_slow, freqs.data());
  if (freqs.empty()) return BackendStatus::Ok();
  cudaError_t rc = cudaMemcpyAsync(Ptr(a.freqs), freqs.data(), freqs.size() * sizeof(float),
                                   cudaMemcpyHostToDevice, q->stream());
  if (rc == cudaSuccess) rc = cudaStreamSynchronize(q->stream());
  return rc == cudaSuccess ? BackendStatus::Ok() : CudaError("RopeFrequencies: copy", rc);
}

BackendStatus CudaBackend::DoApplyRope(Queue& queue, const RopeArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "ApplyRope");
  RopeParams p;
  p.x = Ptr(a.x);
  p.ld = a.ld;
  p.head_stride = a.head_stride;
  p.num_tokens = a.num_tokens;
  p.num_heads = a.num_heads;
  p.rope_offset = a.rope_offset;
  p.rope_dim = a.rope_dim;
  p.positions = Ptr(a.positions);
  p.freqs = Ptr(a.freqs);
  p.inverse = a.inverse;
  if (a.num_tokens == 0 || a.num_heads == 0 || a.rope_dim == 0) return BackendStatus::Ok();
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckRope(p), "ApplyRope"));
  return Launched(LaunchRope(p, q->stream()), "ApplyRope");
}

// ---------------------------------------------------------------- hyper-connections

BackendStatus CudaBackend::DoHcPre(Queue& queue, const HcPreArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "HcPre");
  if (a.m == 0) return BackendStatus::Ok();
  HcPreParams p;
  p.h = Ptr(a.h);
  p.fn = Ptr(a.fn);
  p.scale = Ptr(a.scale);
  p.base = Ptr(a.base);
  p.m = a.m;
  p.hc = a.hc;
  p.d = a.d;
  p.sinkhorn_iters = a.sinkhorn_iters;
  p.norm_eps = a.norm_eps;
  p.hc_eps = a.hc_eps;
  p.x = Ptr(a.x);
  p.post = Ptr(a.post);
  p.comb = Ptr(a.comb);
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckHcPre(p), "HcPre"));
  return Launched(LaunchHcPre(p, q->stream()), "HcPre");
}

BackendStatus CudaBackend::DoHcPost(Queue& queue, const HcPostArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "HcPost");
  if (a.m == 0 || a.d == 0) return BackendStatus::Ok();
  HcPostParams p;
  p.x = Ptr(a.x);
  p.res = Ptr(a.res);
  p.post = Ptr(a.post);
  p.comb = Ptr(a.comb);
  p.m = a.m;
  p.hc = a.hc;
  p.d = a.d;
  p.h_out = Ptr(a.h_out);
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckHcPost(p), "HcPost"));
  return Launched(LaunchHcPost(p, q->stream()), "HcPost");
}

BackendStatus CudaBackend::DoHcHead(Queue& queue, const HcHeadArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "HcHead");
  if (a.m == 0) return BackendStatus::Ok();
  HcHeadParams p;
  p.h = Ptr(a.h);
  p.fn = Ptr(a.fn);
  p.scale = Ptr(a.scale);
  p.base = Ptr(a.base);
  p.m = a.m;
  p.hc = a.hc;
  p.d = a.d;
  p.norm_eps = a.norm_eps;
  p.hc_eps = a.hc_eps;
  p.y = Ptr(a.y);
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckHcHead(p), "HcHead"));
  return Launched(LaunchHcHead(p, q->stream()), "HcHead");
}

// ---------------------------------------------------------------- compressor, indexer

BackendStatus CudaBackend::DoCompressPool(Queue& queue, const CompressPoolArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "CompressPool");
  if (a.num_entries == 0 || a.d == 0) return BackendStatus::Ok();
  CompressPoolParams p;
  p.kv = Ptr(a.kv);
  p.score = Ptr(a.score);
  p.state_elements = std::min(a.kv.size(), a.score.size());
  p.slot_offsets = Ptr(a.slot_offsets);
  p.num_entries = a.num_entries;
  p.n_slots = a.n_slots;
  p.d = a.d;
  p.out = Ptr(a.out);
  p.error = q->error();
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckCompressPool(p), "CompressPool"));
  return Launched(LaunchCompressPool(p, q->stream()), "CompressPool");
}

BackendStatus CudaBackend::DoHadamardRotateBf16(Queue& queue, const HadamardArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "HadamardRotateBf16");
  if (a.rows == 0) return BackendStatus::Ok();
  HadamardParams p;
  p.x = Ptr(a.x);
  p.rows = a.rows;
  p.dim = a.dim;
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckHadamard(p), "HadamardRotateBf16"));
  return Launched(LaunchHadamard(p, q->stream()), "HadamardRotateBf16");
}

BackendStatus CudaBackend::DoIndexerScores(Queue& queue, const IndexerScoreArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "IndexerScores");
  if (a.n == 0) return BackendStatus::Ok();
  IndexerScoresParams p;
  p.q = Ptr(a.q);
  p.w = Ptr(a.w);
  p.keys = Ptr(a.keys);
  p.ldk = a.ldk;
  p.n = a.n;
  p.num_heads = a.num_heads;
  p.dim = a.dim;
  p.scores = Ptr(a.scores);
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckIndexerScores(p), "IndexerScores"));
  return Launched(LaunchIndexerScores(p, q->stream()), "IndexerScores");
}

BackendStatus CudaBackend::DoTopK(Queue& queue, const TopKArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "TopK");
  if (a.k == 0) return BackendStatus::Ok();
  for (int64_t r = 0; r < a.rows; ++r) {  // one block per row, each launch in queue order
    TopKParams p;
    p.scores = Ptr(a.scores) + r * a.ld_scores;
    p.n = a.n;
    p.k = a.k;
    p.idx = Ptr(a.idx) + r * a.k;
    FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckTopK(p), "TopK"));
    FLOTILLA_CUDA_RETURN_IF_ERROR(Launched(LaunchTopK(p, q->stream()), "TopK"));
  }
  return BackendStatus::Ok();
}

// ---------------------------------------------------------------- attention

BackendStatus CudaBackend::DoSparseAttention(Queue& queue, const SparseAttentionArgs&) {
  FLOTILLA_CUDA_QUEUE(q, queue, "SparseAttention");
  (void)q;
  // Dispatch point of sparse attention. kernels/cuda/sparse_attention.h reads the packed, paged
  // KV pool (spec §8.2); this op's arguments are rows of bf16 with an index list, which no CUDA
  // kernel reads.
  return BackendStatus::Error(
      "SparseAttention: no CUDA kernel takes bf16 KV rows (kernels/cuda/sparse_attention.h reads "
      "the packed, paged KV pool); run this op on the CPU backend");
}

// ---------------------------------------------------------------- MoE

BackendStatus CudaBackend::DoRoute(Queue& queue, const RouteArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "Route");
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
  p.expert_idx = Ptr(a.expert_idx);
  p.weights = Ptr(a.weights);
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckRoute(p), "Route"));
  return Launched(LaunchRoute(p, q->stream()), "Route");
}

BackendStatus CudaBackend::DoSwiGlu(Queue& queue, const SwiGluArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "SwiGlu");
  if (a.m == 0 || a.inter == 0) return BackendStatus::Ok();
  SwiGluParams p;
  p.gate = Ptr(a.gate);
  p.up = Ptr(a.up);
  p.ld_in = a.ld_in;
  p.row_weight = Ptr(a.row_weight);
  p.m = a.m;
  p.inter = a.inter;
  p.limit = a.limit;
  p.out = Ptr(a.out);
  p.ld_out = a.ld_out;
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckSwiGlu(p), "SwiGlu"));
  return Launched(LaunchSwiGlu(p, q->stream()), "SwiGlu");
}

BackendStatus CudaBackend::DoMoePermute(Queue& queue, const MoePermuteArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "MoePermute");
  MoePermuteParams p;
  p.expert_idx = Ptr(a.expert_idx);
  p.n = a.n;
  p.k = a.k;
  p.first_expert = a.first_expert;
  p.num_experts = a.num_experts;
  p.offsets = Ptr(a.offsets);
  p.order = Ptr(a.order);
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckMoePermute(p), "MoePermute"));
  return Launched(LaunchMoePermute(p, q->stream()), "MoePermute");
}

namespace {

RowCopyParams RowCopy(const RowCopyArgs& a, int64_t indexed_bytes, int64_t ld, DeviceError* error) {
  RowCopyParams p;
  p.src = Ptr(a.src);
  p.ld_src = a.ld_src;
  p.index = Ptr(a.index);
  p.rows = a.rows;
  p.divisor = a.divisor;
  p.row_bytes = a.row_bytes;
  p.dst = Ptr(a.dst);
  p.ld_dst = a.ld_dst;
  // The rows the indexed side holds, as the CPU backend counts them.
  p.indexed_rows =
      indexed_bytes < a.row_bytes || ld <= 0 ? 0 : (indexed_bytes - a.row_bytes) / ld + 1;
  p.error = error;
  return p;
}

}  // namespace

BackendStatus CudaBackend::DoGatherRows(Queue& queue, const RowCopyArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "GatherRows");
  if (a.rows == 0 || a.row_bytes == 0) return BackendStatus::Ok();
  const RowCopyParams p = RowCopy(a, a.src.size(), a.ld_src, q->error());
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckRowCopy(p), "GatherRows"));
  return Launched(LaunchGatherRows(p, q->stream()), "GatherRows");
}

BackendStatus CudaBackend::DoScatterRows(Queue& queue, const RowCopyArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "ScatterRows");
  if (a.rows == 0 || a.row_bytes == 0) return BackendStatus::Ok();
  const RowCopyParams p = RowCopy(a, a.dst.size(), a.ld_dst, q->error());
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckRowCopy(p), "ScatterRows"));
  return Launched(LaunchScatterRows(p, q->stream()), "ScatterRows");
}

BackendStatus CudaBackend::DoMoeCombine(Queue& queue, const MoeCombineArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "MoeCombine");
  if (a.n == 0 || a.d == 0) return BackendStatus::Ok();
  MoeCombineParams p;
  p.expert_idx = Ptr(a.expert_idx);
  p.routed = Ptr(a.routed);
  p.shared = Ptr(a.shared);
  p.n = a.n;
  p.k = a.k;
  p.d = a.d;
  p.out = Ptr(a.out);
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckMoeCombine(p), "MoeCombine"));
  return Launched(LaunchMoeCombine(p, q->stream()), "MoeCombine");
}

// ---------------------------------------------------------------- packed KV

namespace {

KvPackParams PackParams(const KvPackArgs& a) {
  KvPackParams p;
  p.rows = a.rows;
  p.nope = a.nope;
  p.rope = a.rope;
  p.entry_bytes = a.entry_bytes;
  p.x = Ptr(a.x);
  p.ldx = a.ldx;
  p.entries = Ptr(a.entries);
  return p;
}

KvUnpackParams UnpackParams(const KvUnpackArgs& a) {
  KvUnpackParams p;
  p.rows = a.rows;
  p.nope = a.nope;
  p.rope = a.rope;
  p.entry_bytes = a.entry_bytes;
  p.x = Ptr(a.x);
  p.ldx = a.ldx;
  p.entries = Ptr(a.entries);
  return p;
}

}  // namespace

BackendStatus CudaBackend::DoPackKvEntries(Queue& queue, const KvPackArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "PackKvEntries");
  if (a.rows == 0) return BackendStatus::Ok();
  const KvPackParams p = PackParams(a);
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckKvPack(p), "PackKvEntries"));
  return Launched(LaunchPackKvEntries(p, q->stream()), "PackKvEntries");
}

BackendStatus CudaBackend::DoUnpackKvEntries(Queue& queue, const KvUnpackArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "UnpackKvEntries");
  if (a.rows == 0) return BackendStatus::Ok();
  const KvUnpackParams p = UnpackParams(a);
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckKvPack(p), "UnpackKvEntries"));
  return Launched(LaunchUnpackKvEntries(p, q->stream()), "UnpackKvEntries");
}

BackendStatus CudaBackend::DoPackIndexerKeys(Queue& queue, const KvPackArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "PackIndexerKeys");
  if (a.rows == 0) return BackendStatus::Ok();
  const KvPackParams p = PackParams(a);
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckIndexerKeyPack(p), "PackIndexerKeys"));
  return Launched(LaunchPackIndexerKeys(p, q->stream()), "PackIndexerKeys");
}

BackendStatus CudaBackend::DoUnpackIndexerKeys(Queue& queue, const KvUnpackArgs& a) {
  FLOTILLA_CUDA_QUEUE(q, queue, "UnpackIndexerKeys");
  if (a.rows == 0) return BackendStatus::Ok();
  const KvUnpackParams p = UnpackParams(a);
  FLOTILLA_CUDA_RETURN_IF_ERROR(Refused(CheckIndexerKeyPack(p), "UnpackIndexerKeys"));
  return Launched(LaunchUnpackIndexerKeys(p, q->stream()), "UnpackIndexerKeys");
}

}  // namespace flotilla::kernels::cuda
