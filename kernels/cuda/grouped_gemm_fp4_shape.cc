#include "kernels/cuda/grouped_gemm_fp4.h"

namespace flotilla::kernels::cuda {

const char* CheckGroupedGemmFp8Fp4(const GroupedGemmFp8Fp4Params& p) {
  if (!p.a || !p.a_scale || !p.w || !p.w_scale || !p.c) {
    return "grouped FP8xFP4 GEMM: a, a_scale, w, w_scale and c must all be set";
  }
  if ((p.group_offsets == nullptr) == (p.group_offsets64 == nullptr)) {
    return "grouped FP8xFP4 GEMM: exactly one of group_offsets / group_offsets64 must be set";
  }
  if (p.group_offsets64 != nullptr && (p.window_begin < 0 || p.window_rows < 0 ||
                                       p.window_rows > 0x7fffffff)) {
    return "grouped FP8xFP4 GEMM: the window must be non-negative and under 2^31 rows";
  }
  if (p.k <= 0 || p.k % 128 != 0) return "grouped FP8xFP4 GEMM: k must be a positive multiple of 128";
  if (p.n <= 0 || p.n % kGroupedGemmColumnsPerWarp != 0) {
    return "grouped FP8xFP4 GEMM: n must be a positive multiple of 16";
  }
  if (p.ldc < p.n) return "grouped FP8xFP4 GEMM: ldc must be at least n";
  if (p.ldc % 2 != 0) return "grouped FP8xFP4 GEMM: ldc must be even (bf16 pairs are stored together)";
  if (p.num_experts <= 0 || p.num_experts > 65535) {
    return "grouped FP8xFP4 GEMM: num_experts must be in [1, 65535] (grid y)";
  }
  if ((p.n + kGroupedGemmColumnsPerBlock - 1) / kGroupedGemmColumnsPerBlock > 0x7fffffff) {
    return "grouped FP8xFP4 GEMM: n too large for the grid";
  }
  // Fragment loads: 4-byte activation words and 2-byte weight pairs.
  if (reinterpret_cast<uintptr_t>(p.a) % 4 != 0 || reinterpret_cast<uintptr_t>(p.w) % 2 != 0 ||
      reinterpret_cast<uintptr_t>(p.c) % 4 != 0) {
    return "grouped FP8xFP4 GEMM: a must be 4-byte, w 2-byte and c 4-byte aligned";
  }
  return nullptr;
}

LaunchShape GroupedGemmFp8Fp4Shape(const GroupedGemmFp8Fp4Params& p) {
  LaunchShape s;
  s.grid_x = uint32_t((p.n + kGroupedGemmColumnsPerBlock - 1) / kGroupedGemmColumnsPerBlock);
  s.grid_y = uint32_t(p.num_experts);
  s.block_x = kGroupedGemmThreads;
  return s;
}

}  // namespace flotilla::kernels::cuda
