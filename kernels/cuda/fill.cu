// Fills and the single-group offsets (fill.h).
#include <cuda_runtime.h>

#include "kernels/cuda/fill.h"

namespace flotilla::kernels::cuda {
namespace {

template <typename T>
__global__ void __launch_bounds__(kFillThreads) FillKernel(T* dst, int64_t count, T value) {
  for (int64_t i = int64_t(blockIdx.x) * kFillThreads + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * kFillThreads) {
    dst[i] = value;
  }
}

template <typename T>
void Fill(void* dst, int64_t count, uint64_t pattern, CUstream_st* stream) {
  T value;
  memcpy(&value, &pattern, sizeof(T));  // the low bytes (little-endian host and device)
  FillKernel<T><<<unsigned(FillBlocks(count)), kFillThreads, 0, stream>>>(static_cast<T*>(dst),
                                                                          count, value);
}

__global__ void SingleGroupOffsetsKernel(int32_t* offsets, int32_t rows) {
  offsets[0] = 0;
  offsets[1] = rows;
}

}  // namespace

int LaunchFill(void* dst, int64_t count, int64_t element_bytes, uint64_t pattern,
               CUstream_st* stream) {
  if (count > 0) {
    switch (element_bytes) {
      case 1:
        Fill<uint8_t>(dst, count, pattern, stream);
        break;
      case 2:
        Fill<uint16_t>(dst, count, pattern, stream);
        break;
      case 4:
        Fill<uint32_t>(dst, count, pattern, stream);
        break;
      case 8:
        Fill<uint64_t>(dst, count, pattern, stream);
        break;
      default:
        return int(cudaErrorInvalidValue);
    }
  }
  return int(cudaGetLastError());
}

int LaunchSingleGroupOffsets(int32_t* offsets, int32_t rows, CUstream_st* stream) {
  SingleGroupOffsetsKernel<<<1, 1, 0, stream>>>(offsets, rows);
  return int(cudaGetLastError());
}

}  // namespace flotilla::kernels::cuda
