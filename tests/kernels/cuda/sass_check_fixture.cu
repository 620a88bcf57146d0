// Kernels that break every rule of sass_check.py, to show that the check fails when it should:
// the first's name matches the grouped GEMM's rules but it has no MMA, and it writes and reads a
// large local array at runtime indices (local memory); the second's name matches a kernel that
// must give hd_math's bits but it calls the approximate __expf and __sinf.
__global__ void GroupedGemmFp8Fp4KernelWithoutMma(const float* in, float* out, const int* idx) {
  float scratch[256];
  for (int i = 0; i < 256; ++i) scratch[idx[i] & 255] = in[threadIdx.x * 256 + i];
  out[threadIdx.x] = scratch[idx[threadIdx.x] & 255];
}

__global__ void RopeKernelWithFastMath(const float* in, float* out) {
  out[threadIdx.x] = __expf(in[threadIdx.x]) + __sinf(in[threadIdx.x]);
}
