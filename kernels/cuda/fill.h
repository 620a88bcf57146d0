// Small device writes the CUDA backend issues on a queue (no host synchronisation, no driver
// API): Backend::Fill of 1-, 2-, 4- or 8-byte elements, and the [0, rows] group offsets that
// let one plain FP8 x FP4 GEMM run on the grouped kernel as a single group. Plain C++ header.
#pragma once

#include <cstdint>

struct CUstream_st;

namespace flotilla::kernels::cuda {

constexpr int kFillThreads = 256;

// nullptr when a fill of `count` elements of `element_bytes` (1, 2, 4 or 8) can be launched.
const char* CheckFill(int64_t count, int64_t element_bytes);
int64_t FillBlocks(int64_t count);
// Every element of dst (count elements of element_bytes) = the low element_bytes of pattern.
int LaunchFill(void* dst, int64_t count, int64_t element_bytes, uint64_t pattern,
               CUstream_st* stream);
// offsets[0] = 0, offsets[1] = rows.
int LaunchSingleGroupOffsets(int32_t* offsets, int32_t rows, CUstream_st* stream);

}  // namespace flotilla::kernels::cuda
