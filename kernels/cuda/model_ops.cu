// The model ops (model_ops.h): grid-stride loops, one element (or one byte) per thread step.
#include <cuda_runtime.h>

#include "kernels/cuda/model_ops.h"

namespace flotilla::kernels::cuda {
namespace {

#define FLOTILLA_GRID_STRIDE(i, count)                                               \
  for (int64_t i = int64_t(blockIdx.x) * kModelOpThreads + threadIdx.x; i < (count); \
       i += int64_t(gridDim.x) * kModelOpThreads)

__global__ void __launch_bounds__(kModelOpThreads) EmbedRowsKernel(EmbedRowsParams p) {
  FLOTILLA_GRID_STRIDE(i, p.n * p.d) {
    const int64_t r = i / p.d, c = i % p.d;
    const int64_t row = int64_t(p.tokens[r]) - p.first;
    p.out[i] = row >= 0 && row < p.num_rows ? p.table[row * p.d + c] : bf16(0);
  }
}

__global__ void __launch_bounds__(kModelOpThreads) RepeatRowsKernel(RepeatRowsParams p) {
  FLOTILLA_GRID_STRIDE(i, p.n * p.copies * p.d) {
    const int64_t c = i % p.d, r = i / (p.copies * p.d);
    p.out[i] = p.x[r * p.d + c];
  }
}

__global__ void __launch_bounds__(kModelOpThreads) BroadcastAddKernel(BroadcastAddParams p) {
  FLOTILLA_GRID_STRIDE(i, p.n * p.copies * p.d) {
    const int64_t c = i % p.d, r = i / (p.copies * p.d);
    // One f32 add (exact operands), one rounding: no contraction is possible here.
    p.out[i] = F32ToBf16(Bf16ToF32(p.a[r * p.d + c]) + Bf16ToF32(p.b[i]));
  }
}

__global__ void __launch_bounds__(kModelOpThreads)
    Bf16ToF32Kernel(const bf16* x, float* y, int64_t count) {
  FLOTILLA_GRID_STRIDE(i, count) { y[i] = Bf16ToF32(x[i]); }
}

__global__ void __launch_bounds__(kModelOpThreads)
    F32ToBf16Kernel(const float* x, bf16* y, int64_t count) {
  FLOTILLA_GRID_STRIDE(i, count) { y[i] = F32ToBf16(x[i]); }
}

__global__ void __launch_bounds__(kModelOpThreads) InterleaveRowsKernel(InterleaveRowsParams p) {
  FLOTILLA_GRID_STRIDE(i, p.blocks * p.rows * p.row_bytes) {
    const int64_t byte = i % p.row_bytes, dst_row = i / p.row_bytes;
    const int64_t r = dst_row / p.blocks, b = dst_row % p.blocks;
    p.dst[i] = p.src[(b * p.rows + r) * p.row_bytes + byte];
  }
}

unsigned Grid(int64_t elements) { return unsigned(ModelOpBlocks(elements)); }

}  // namespace

int LaunchEmbedRows(const EmbedRowsParams& p, CUstream_st* stream) {
  if (p.n > 0 && p.d > 0) EmbedRowsKernel<<<Grid(p.n * p.d), kModelOpThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

int LaunchRepeatRows(const RepeatRowsParams& p, CUstream_st* stream) {
  const int64_t total = p.n * p.copies * p.d;
  if (total > 0) RepeatRowsKernel<<<Grid(total), kModelOpThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

int LaunchBroadcastAdd(const BroadcastAddParams& p, CUstream_st* stream) {
  const int64_t total = p.n * p.copies * p.d;
  if (total > 0) BroadcastAddKernel<<<Grid(total), kModelOpThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

int LaunchConvertBf16ToF32(const bf16* x, float* y, int64_t count, CUstream_st* stream) {
  if (count > 0) Bf16ToF32Kernel<<<Grid(count), kModelOpThreads, 0, stream>>>(x, y, count);
  return int(cudaGetLastError());
}

int LaunchConvertF32ToBf16(const float* x, bf16* y, int64_t count, CUstream_st* stream) {
  if (count > 0) F32ToBf16Kernel<<<Grid(count), kModelOpThreads, 0, stream>>>(x, y, count);
  return int(cudaGetLastError());
}

int LaunchInterleaveRows(const InterleaveRowsParams& p, CUstream_st* stream) {
  const int64_t total = p.blocks * p.rows * p.row_bytes;
  if (total > 0) InterleaveRowsKernel<<<Grid(total), kModelOpThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace flotilla::kernels::cuda
