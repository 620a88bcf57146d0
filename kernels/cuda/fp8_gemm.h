// FP8 dense GEMM on the GPU (every FP8 linear, spec §2.4; kernels::GemmFp8's contract):
//   C[m, n] = bf16( Σ_kb P(m, n, kb) · sa[m, kb] · sw[n / 128, kb] ),
// activations E4M3 with 1 × 128 UE8M0 scales (act_quant), weights E4M3 [n, k] with 128 × 128
// scales, f32 accumulation, bf16 out — on cuBLASLt's block-scaled FP8 matmul (CUDA 12.9+:
// CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F for the weights, VEC128_32F for the activations).
//
// cuBLASLt is column-major, so the row-major product C = X · Wᵀ is issued as its transpose
// Cᵀ[n, m] = W[n, k] · Xᵀ[k, m] in the "TN" form FP8 requires:
//   cuBLASLt A = the weights, a k × n column-major matrix (lda = k), transa = T;
//   cuBLASLt B = the activations, k × m column-major (ldb = k), transb = N;
//   cuBLASLt D = C as an n × m column-major matrix (ldd = ldc), bf16.
// Scales are f32 in cuBLASLt's layouts (Fp8GemmLayout below):
//   weights: [ceil(n/128)][ld = round_up(k/128, 4)] row-major — converted ONCE at load from the
//     checkpoint's UE8M0 [ceil(n/128), k/128] (ConvertFp8WeightScales /
//     LaunchConvertFp8WeightScales);
//   activations: [k/128][m] (each K block's m scales together) — converted by Run on every call
//     from act_quant's UE8M0 [m, k/128] into the caller's workspace.
//
// Row-count invariance: results must not depend on how many rows share a call (batching stays
// bitwise invisible). Prepare pins ONE algorithm per weight shape (n, k): the first heuristic
// answer for kFp8GemmAlgoRows rows with reduction scheme NONE, its split-K forced to 1; Run uses
// that algorithm for every m. With one K order per output tile and no split-K, row i of C is
// computed the same way whatever m is.
//
// This header is plain C++ (no CUDA headers): host code and CPU tests use it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "common/dtype.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace flotilla::kernels::cuda {

struct Fp8GemmParams {
  const fp8* a = nullptr;          // [m, k] device, dense
  const e8m0* a_scale = nullptr;   // [m, k/128] device (act_quant's output)
  const fp8* w = nullptr;          // [n, k] device, dense
  const float* w_scale = nullptr;  // device, Fp8WeightScaleCount(n, k) f32 in the layout above
  bf16* c = nullptr;               // [m, n] device, row stride ldc
  int64_t ldc = 0;
  int64_t m = 0, n = 0, k = 0;
};

// The algorithm of a weight shape is chosen for this many rows (a prefill-sized bucket).
constexpr int64_t kFp8GemmAlgoRows = 256;
// cuBLASLt's own workspace per call (the size the algorithm was chosen with).
constexpr size_t kFp8GemmLtWorkspaceBytes = size_t(32) << 20;

// The cuBLASLt problem of a call: matrix shapes as cuBLASLt sees them (column-major) and the
// scale layouts. Pure arithmetic, unit-tested on the CPU.
struct Fp8GemmLayout {
  // A = weights (transa = T), B = activations (transb = N), D = output.
  int64_t a_rows = 0, a_cols = 0, lda = 0;
  int64_t b_rows = 0, b_cols = 0, ldb = 0;
  int64_t d_rows = 0, d_cols = 0, ldd = 0;
  bool transa = true, transb = false;
  // Weight scales: rows = ceil(n/128), cols = k/128, row stride w_scale_ld.
  int64_t w_scale_rows = 0, w_scale_cols = 0, w_scale_ld = 0;
  // Activation scales: k/128 blocks of m.
  int64_t a_scale_count = 0;
};
Fp8GemmLayout MakeFp8GemmLayout(int64_t m, int64_t n, int64_t k, int64_t ldc);

// f32 weight scales one weight matrix needs: ceil(n/128) * round_up(k/128, 4).
int64_t Fp8WeightScaleCount(int64_t n, int64_t k);
// Index of the scale of weight block (n_block, k_block) in that layout.
int64_t Fp8WeightScaleIndex(int64_t n_block, int64_t k_block, int64_t k);
// Index of the scale of activation row `row`, K block `k_block`, in a call of m rows.
inline int64_t Fp8ActScaleIndex(int64_t row, int64_t k_block, int64_t m) {
  return k_block * m + row;
}
// Bytes of the workspace Run needs for m rows: the f32 activation scales (256-byte aligned)
// then cuBLASLt's workspace.
size_t Fp8GemmWorkspaceBytes(int64_t m, int64_t k);

// The load-time conversion on the host: checkpoint UE8M0 [ceil(n/128), k/128] -> f32 layout
// (padding columns 0). `out` holds Fp8WeightScaleCount(n, k) floats.
void ConvertFp8WeightScales(const e8m0* in, int64_t n, int64_t k, float* out);
// The same on the device (both pointers device memory); returns the launch's cudaError_t.
int LaunchConvertFp8WeightScales(const e8m0* in, int64_t n, int64_t k, float* out,
                                 CUstream_st* stream);
// The same for weights whose block scales are already f32 [ceil(n/128), k/128] (the Base
// checkpoint's FP8 experts): only the padded row layout changes.
void ConvertFp8WeightScalesF32(const float* in, int64_t n, int64_t k, float* out);
int LaunchConvertFp8WeightScalesF32(const float* in, int64_t n, int64_t k, float* out,
                                    CUstream_st* stream);
// Activation scales UE8M0 [m, k/128] -> f32 [k/128][m]; returns the launch's cudaError_t.
int LaunchConvertFp8ActScales(const e8m0* in, int64_t m, int64_t k, float* out,
                              CUstream_st* stream);

// nullptr when `p` can be run, else what is wrong (shapes, strides, alignment, pointers).
// cuBLASLt FP8 wants 16-byte aligned matrices and leading dimensions of 16 bytes.
const char* CheckFp8Gemm(const Fp8GemmParams& p);

// One cuBLASLt handle and the pinned algorithm of each weight shape prepared on it. Not
// thread-safe: one per stream (a backend holds one).
class Fp8GemmLt {
 public:
  Fp8GemmLt();
  ~Fp8GemmLt();
  Fp8GemmLt(const Fp8GemmLt&) = delete;
  Fp8GemmLt& operator=(const Fp8GemmLt&) = delete;

  // Creates the cuBLASLt handle (needs a device). nullptr or what failed.
  const char* Init();
  // Pins the algorithm of weight shape (n, k) (no device memory touched). nullptr, or what
  // failed — no algorithm without split-K, or cuBLASLt without block-scaled FP8 (before 12.9,
  // or a device other than sm_90).
  const char* Prepare(int64_t n, int64_t k);
  // Enqueues C = A · Wᵀ on `stream`; the shape (n, k) must have been prepared. `workspace`:
  // Fp8GemmWorkspaceBytes(m, k) device bytes, 256-byte aligned, owned by the caller and not
  // used by anything else until the call has run. No host synchronisation.
  const char* Run(const Fp8GemmParams& p, void* workspace, size_t workspace_bytes,
                  CUstream_st* stream);
  // The pinned algorithm's cuBLASLt id and split-K count for (n, k), for logs and tests;
  // false when the shape was not prepared.
  bool AlgoInfo(int64_t n, int64_t k, int* algo_id, int* split_k) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace flotilla::kernels::cuda
