// FP8 dense GEMM on cuBLASLt's block-scaled FP8 (fp8_gemm.h): the scale conversions (small
// kernels) and the cuBLASLt plan. No kernel of ours does the GEMM itself.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <utility>

#include "kernels/cuda/fp8_gemm.h"
#include "kernels/cuda/fp8_gemm_lt.h"

namespace flotilla::kernels::cuda {
namespace {

constexpr int kConvertThreads = 256;

__device__ __forceinline__ float ScaleValue(e8m0 s) { return E8m0ToF32(s); }
__device__ __forceinline__ float ScaleValue(float s) { return s; }

template <typename Scale>
__global__ void ConvertWeightScalesKernel(const Scale* in, int64_t rows, int64_t cols, int64_t ld,
                                          float* out) {
  const int64_t i = int64_t(blockIdx.x) * kConvertThreads + threadIdx.x;
  if (i >= rows * ld) return;
  const int64_t r = i / ld, c = i % ld;
  out[i] = c < cols ? ScaleValue(in[r * cols + c]) : 0.0f;
}

// in [m, kb] -> out [kb][m]: thread i writes out[i] (coalesced stores).
__global__ void ConvertActScalesKernel(const e8m0* in, int64_t m, int64_t kblocks, float* out) {
  const int64_t i = int64_t(blockIdx.x) * kConvertThreads + threadIdx.x;
  if (i >= m * kblocks) return;
  const int64_t kb = i / m, row = i % m;
  out[i] = E8m0ToF32(in[row * kblocks + kb]);
}

int64_t Blocks(int64_t items) { return (items + kConvertThreads - 1) / kConvertThreads; }

const char* LtError(cublasStatus_t s, const char* what) {
  return s == CUBLAS_STATUS_SUCCESS ? nullptr : what;
}

template <typename Scale>
int LaunchConvertWeightScales(const Scale* in, int64_t n, int64_t k, float* out,
                              CUstream_st* stream) {
  const Fp8GemmLayout l = MakeFp8GemmLayout(1, n, k, n);
  const int64_t items = l.w_scale_rows * l.w_scale_ld;
  if (items == 0) return 0;
  ConvertWeightScalesKernel<Scale>
      <<<dim3(uint32_t(Blocks(items))), dim3(kConvertThreads), 0, stream>>>(
          in, l.w_scale_rows, l.w_scale_cols, l.w_scale_ld, out);
  return int(cudaGetLastError());
}

}  // namespace

int LaunchConvertFp8WeightScales(const e8m0* in, int64_t n, int64_t k, float* out,
                                 CUstream_st* stream) {
  return LaunchConvertWeightScales(in, n, k, out, stream);
}

int LaunchConvertFp8WeightScalesF32(const float* in, int64_t n, int64_t k, float* out,
                                    CUstream_st* stream) {
  return LaunchConvertWeightScales(in, n, k, out, stream);
}

int LaunchConvertFp8ActScales(const e8m0* in, int64_t m, int64_t k, float* out,
                              CUstream_st* stream) {
  const int64_t items = m * (k / 128);
  if (items == 0) return 0;
  ConvertActScalesKernel<<<dim3(uint32_t(Blocks(items))), dim3(kConvertThreads), 0, stream>>>(
      in, m, k / 128, out);
  return int(cudaGetLastError());
}

// One prepared weight shape: its operation descriptor (transposes and scale modes; the scale
// pointers are set per call) and the pinned algorithm.
struct Fp8GemmLt::Impl {
  struct Shape {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatmulAlgo_t algo{};
    int algo_id = -1, split_k = 0;
  };
  cublasLtHandle_t handle = nullptr;
  std::map<std::pair<int64_t, int64_t>, Shape> shapes;

  ~Impl() {
    for (auto& [key, s] : shapes) cublasLtMatmulDescDestroy(s.desc);
    if (handle) cublasLtDestroy(handle);
  }
};

Fp8GemmLt::Fp8GemmLt() : impl_(std::make_unique<Impl>()) {}
Fp8GemmLt::~Fp8GemmLt() = default;

const char* Fp8GemmLt::Init() {
  if (impl_->handle) return nullptr;
  return LtError(cublasLtCreate(&impl_->handle), "FP8 GEMM: cublasLtCreate failed");
}

const char* Fp8GemmLt::Prepare(int64_t n, int64_t k) {
  if (!impl_->handle) return "FP8 GEMM: Prepare before Init";
  if (impl_->shapes.count({n, k})) return nullptr;
  if (k <= 0 || k % 128 != 0 || n <= 0 || n % 16 != 0) {
    return "FP8 GEMM: Prepare needs n a positive multiple of 16 and k of 128";
  }
  Impl::Shape shape;
  if (MakeFp8GemmDesc(&shape.desc) != CUBLAS_STATUS_SUCCESS) {
    if (shape.desc) cublasLtMatmulDescDestroy(shape.desc);
    return "FP8 GEMM: cuBLASLt refused the block-scaled FP8 descriptor (needs CUDA 12.9+)";
  }
  Fp8GemmLtLayouts layouts;
  const Fp8GemmLayout l = MakeFp8GemmLayout(kFp8GemmAlgoRows, n, k, n);
  cublasLtMatmulPreference_t pref = nullptr;
  const uint64_t workspace = kFp8GemmLtWorkspaceBytes;
  const uint32_t reduction = CUBLASLT_REDUCTION_SCHEME_NONE;
  cublasStatus_t s = layouts.Make(l);
  if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatmulPreferenceCreate(&pref);
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                             &workspace, sizeof(workspace));
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                             &reduction, sizeof(reduction));
  constexpr int kWanted = 16;
  cublasLtMatmulHeuristicResult_t results[kWanted] = {};
  int found = 0;
  if (s == CUBLAS_STATUS_SUCCESS) {
    s = cublasLtMatmulAlgoGetHeuristic(impl_->handle, shape.desc, layouts.a, layouts.b, layouts.d,
                                       layouts.d, pref, kWanted, results, &found);
  }
  if (pref) cublasLtMatmulPreferenceDestroy(pref);
  // The first answer (the heuristic's order) that runs without split-K.
  for (int i = 0; s == CUBLAS_STATUS_SUCCESS && i < found && shape.algo_id < 0; ++i) {
    if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
    cublasLtMatmulAlgo_t algo = results[i].algo;
    int32_t split = 1;
    const uint32_t none = CUBLASLT_REDUCTION_SCHEME_NONE;
    if (cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &split,
                                             sizeof(split)) != CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &none,
                                             sizeof(none)) != CUBLAS_STATUS_SUCCESS) {
      continue;
    }
    cublasLtMatmulHeuristicResult_t check{};
    if (cublasLtMatmulAlgoCheck(impl_->handle, shape.desc, layouts.a, layouts.b, layouts.d,
                                layouts.d, &algo, &check) != CUBLAS_STATUS_SUCCESS ||
        check.workspaceSize > kFp8GemmLtWorkspaceBytes) {
      continue;
    }
    int32_t id = -1, got_split = 0;
    size_t written = 0;
    cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof(id), &written);
    cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &got_split,
                                         sizeof(got_split), &written);
    if (got_split > 1) continue;
    shape.algo = algo;
    shape.algo_id = id;
    shape.split_k = got_split;
  }
  if (s != CUBLAS_STATUS_SUCCESS || shape.algo_id < 0) {
    cublasLtMatmulDescDestroy(shape.desc);
    return s == CUBLAS_STATUS_SUCCESS
               ? "FP8 GEMM: cuBLASLt offers no block-scaled FP8 algorithm without split-K for "
                 "this shape"
               : "FP8 GEMM: cuBLASLt has no block-scaled FP8 (1x128 / 128x128 f32 scales) "
                 "algorithm on this device (needs sm_90 and CUDA 12.9+)";
  }
  impl_->shapes.emplace(std::make_pair(n, k), shape);
  return nullptr;
}

bool Fp8GemmLt::AlgoInfo(int64_t n, int64_t k, int* algo_id, int* split_k) const {
  const auto it = impl_->shapes.find({n, k});
  if (it == impl_->shapes.end()) return false;
  *algo_id = it->second.algo_id;
  *split_k = it->second.split_k;
  return true;
}

const char* Fp8GemmLt::Run(const Fp8GemmParams& p, void* workspace, size_t workspace_bytes,
                           CUstream_st* stream) {
  if (const char* err = CheckFp8Gemm(p)) return err;
  const auto it = impl_->shapes.find({p.n, p.k});
  if (it == impl_->shapes.end()) return "FP8 GEMM: weight shape (n, k) was not prepared";
  if (!workspace || reinterpret_cast<uintptr_t>(workspace) % 256 != 0 ||
      workspace_bytes < Fp8GemmWorkspaceBytes(p.m, p.k)) {
    return "FP8 GEMM: workspace must be 256-byte aligned and Fp8GemmWorkspaceBytes(m, k) long";
  }
  const Fp8GemmLayout l = MakeFp8GemmLayout(p.m, p.n, p.k, p.ldc);
  float* a_scale = static_cast<float*>(workspace);
  const size_t scale_bytes = (size_t(l.a_scale_count) * sizeof(float) + 255) / 256 * 256;
  void* lt_workspace = static_cast<char*>(workspace) + scale_bytes;
  if (LaunchConvertFp8ActScales(p.a_scale, p.m, p.k, a_scale, stream) != 0) {
    return "FP8 GEMM: the activation scale conversion did not launch";
  }
  Impl::Shape& shape = it->second;
  const void* w_scale = p.w_scale;
  const void* x_scale = a_scale;
  cublasStatus_t s = cublasLtMatmulDescSetAttribute(
      shape.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scale, sizeof(w_scale));
  if (s == CUBLAS_STATUS_SUCCESS) {
    s = cublasLtMatmulDescSetAttribute(shape.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &x_scale,
                                       sizeof(x_scale));
  }
  Fp8GemmLtLayouts layouts;
  if (s == CUBLAS_STATUS_SUCCESS) s = layouts.Make(l);
  const float alpha = 1.0f, beta = 0.0f;
  if (s == CUBLAS_STATUS_SUCCESS) {
    s = cublasLtMatmul(impl_->handle, shape.desc, &alpha, p.w, layouts.a, p.a, layouts.b, &beta,
                       p.c, layouts.d, p.c, layouts.d, &shape.algo, lt_workspace,
                       kFp8GemmLtWorkspaceBytes, stream);
  }
  return LtError(s, "FP8 GEMM: cublasLtMatmul refused the call");
}

}  // namespace flotilla::kernels::cuda
