#include "kernels/cpu/dispatch.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels/ops.h"

namespace flotilla::kernels::cpu {
namespace {

Simd DetectSimd() {
  if (!CpuHasAvx2()) return Simd::kScalar;
  const char* env = std::getenv("FLOTILLA_SIMD");
  if (env != nullptr && std::strcmp(env, "scalar") == 0) return Simd::kScalar;
  return Simd::kAvx2;
}

std::atomic<int>& Override() {
  static std::atomic<int> value{-1};
  return value;
}

}  // namespace

bool CpuHasAvx2() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
  }();
  return has;
}

Simd ActiveSimd() {
  static const Simd detected = DetectSimd();
  const int forced = Override().load(std::memory_order_relaxed);
  if (forced >= 0) return static_cast<Simd>(forced);
  return detected;
}

void SetSimdForTesting(Simd simd) {
  if (simd == Simd::kAvx2 && !CpuHasAvx2()) simd = Simd::kScalar;
  Override().store(static_cast<int>(simd), std::memory_order_relaxed);
}

}  // namespace flotilla::kernels::cpu

namespace flotilla::kernels {

const char* SimdPath() { return cpu::UseAvx2() ? "avx2" : "scalar"; }

}  // namespace flotilla::kernels
