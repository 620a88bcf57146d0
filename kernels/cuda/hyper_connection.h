// Hyper-connections on the GPU (spec §4.3, §4.4; kernels::HcPre / HcPost / HcHead), bit for bit
// with the CPU backend: the mixes are lane-order dots (8 threads per dot, one chain each, the
// CPU's combine), the Sinkhorn split is kernels::SinkhornSplit itself (kernels/cpu/sinkhorn.h,
// FLOTILLA_HD), the collapses and hc_post add in stream order with each product rounded on its
// own. Plain C++ header.
#pragma once

#include <cstdint>

#include "common/dtype.h"

struct CUstream_st;

namespace flotilla::kernels::cuda {

struct HcPreParams {
  const bf16* h = nullptr;       // [m, hc, d] device
  const float* fn = nullptr;     // [(2+hc)*hc, hc*d] device
  const float* scale = nullptr;  // [3] device
  const float* base = nullptr;   // [(2+hc)*hc] device
  int64_t m = 0, hc = 4, d = 0;
  int64_t sinkhorn_iters = 20;
  float norm_eps = 1e-6f;
  float hc_eps = 1e-6f;
  bf16* x = nullptr;      // [m, d] device
  float* post = nullptr;  // [m, hc] device
  float* comb = nullptr;  // [m, hc, hc] device
};

struct HcPostParams {
  const bf16* x = nullptr;      // [m, d] device
  const bf16* res = nullptr;    // [m, hc, d] device
  const float* post = nullptr;  // [m, hc] device
  const float* comb = nullptr;  // [m, hc, hc] device
  int64_t m = 0, hc = 4, d = 0;
  bf16* h_out = nullptr;  // [m, hc, d] device, not overlapping res
};

struct HcHeadParams {
  const bf16* h = nullptr;       // [m, hc, d] device
  const float* fn = nullptr;     // [hc, hc*d] device
  const float* scale = nullptr;  // [1] device
  const float* base = nullptr;   // [hc] device
  int64_t m = 0, hc = 4, d = 0;
  float norm_eps = 1e-6f;
  float hc_eps = 1e-6f;
  bf16* y = nullptr;  // [m, d] device
};

// hc_pre / hc_head: a block per token, 32 groups of 8 threads each forming lane-order dots (the
// mixes and the sum of squares), thread 0 the split, then all threads the collapse.
constexpr int kHcThreads = 256;
constexpr int64_t kHcMaxStreams = 8;
// hc_post: a thread per output element, grid-stride.
constexpr int kHcPostThreads = 256;

const char* CheckHcPre(const HcPreParams& p);
const char* CheckHcPost(const HcPostParams& p);
const char* CheckHcHead(const HcHeadParams& p);
int64_t HcPostBlocks(const HcPostParams& p);
int LaunchHcPre(const HcPreParams& p, CUstream_st* stream);
int LaunchHcPost(const HcPostParams& p, CUstream_st* stream);
int LaunchHcHead(const HcHeadParams& p, CUstream_st* stream);

}  // namespace flotilla::kernels::cuda
