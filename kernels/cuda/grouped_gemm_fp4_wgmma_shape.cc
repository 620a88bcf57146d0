#include <cstdint>

#include "kernels/cuda/grouped_gemm_fp4_wgmma.h"

namespace flotilla::kernels::cuda {

const char* CheckGroupedGemmFp8Fp4Wgmma(const GroupedGemmFp8Fp4Params& p) {
  if (const char* err = CheckGroupedGemmFp8Fp4(p)) return err;
  if (p.n % kWgmmaGemmTileN != 0)
    return "grouped FP8xFP4 GEMM (wgmma): n must be a multiple of 128";
  if (reinterpret_cast<uintptr_t>(p.a) % 16 != 0 || reinterpret_cast<uintptr_t>(p.w) % 8 != 0) {
    return "grouped FP8xFP4 GEMM (wgmma): a must be 16-byte and w 8-byte aligned";
  }
  return nullptr;
}

LaunchShape GroupedGemmFp8Fp4WgmmaShape(const GroupedGemmFp8Fp4Params& p) {
  LaunchShape s;
  s.grid_x = uint32_t(p.n / kWgmmaGemmTileN);
  s.grid_y = uint32_t(p.num_experts);
  s.block_x = kWgmmaGemmThreads;
  return s;
}

}  // namespace flotilla::kernels::cuda
