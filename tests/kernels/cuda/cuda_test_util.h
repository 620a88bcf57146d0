// Helpers of the GPU tests: whether a device is there, and device copies of host vectors.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "common/dtype.h"

namespace flotilla::kernels::cuda::testing {

inline bool HaveGpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

// A device copy of `host` (at least one element, so an empty vector still gets an address).
template <typename T>
T* Upload(const std::vector<T>& host) {
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(1, host.size()) * sizeof(T)), cudaSuccess);
  if (!host.empty()) {
    EXPECT_EQ(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  return static_cast<T*>(p);
}

template <typename T>
std::vector<T> Download(const T* device, size_t n) {
  std::vector<T> out(n);
  if (n > 0) {
    EXPECT_EQ(cudaMemcpy(out.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  }
  return out;
}

// n bf16 values from N(0, scale^2), reproducible from `seed`.
inline std::vector<bf16> RandomBf16(size_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<bf16> v(n);
  for (auto& x : v) x = F32ToBf16(d(rng));
  return v;
}

}  // namespace flotilla::kernels::cuda::testing
