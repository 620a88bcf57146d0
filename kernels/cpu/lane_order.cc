#include "kernels/cpu/lane_order.h"

#include "kernels/cpu/avx2_util.h"
#include "kernels/cpu/dispatch.h"

namespace flotilla::kernels::cpu {
namespace {

template <class T>
FLOTILLA_AVX2 float DotAvx2(const T* a, const T* b, int64_t n) {
  return avx2::Dot(a, b, n);
}

}  // namespace

float Dot(const bf16* a, const bf16* b, int64_t n) {
  return UseAvx2() ? DotAvx2(a, b, n) : DotLanes(a, b, n);
}

float Dot(const float* a, const float* b, int64_t n) {
  return UseAvx2() ? DotAvx2(a, b, n) : DotLanes(a, b, n);
}

}  // namespace flotilla::kernels::cpu
