// A kernel that breaks both rules of sass_check.py, to show that the check fails when it should:
// its name matches the grouped GEMM's rules but it has no MMA, and it writes and reads a large
// local array at runtime indices (local memory).
__global__ void GroupedGemmFp8Fp4KernelWithoutMma(const float* in, float* out, const int* idx) {
  float scratch[256];
  for (int i = 0; i < 256; ++i) scratch[idx[i] & 255] = in[threadIdx.x * 256 + i];
  out[threadIdx.x] = scratch[idx[threadIdx.x] & 255];
}
