// Helpers of the GPU tests: whether a device is there, and device copies of host vectors.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

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

}  // namespace flotilla::kernels::cuda::testing
