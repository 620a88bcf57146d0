#include "worker/linear.h"

#include "worker/backend_status.h"

namespace flotilla {

absl::Status QuantizeActs(kernels::Backend& backend, kernels::Queue& queue, kernels::In<bf16> x,
                          int64_t ldx, int64_t m, int64_t k, QuantizedActs& out) {
  out.m = m;
  out.k = k;
  kernels::ActQuantArgs a;
  a.x = x;
  a.ldx = ldx;
  a.m = m;
  a.k = k;
  a.block = 128;
  a.q = out.q;
  a.scale = out.scale;
  RETURN_IF_BACKEND_ERROR(backend.ActQuantFp8(queue, a));
  return absl::OkStatus();
}

absl::Status LinearForwardQuantized(kernels::Backend& backend, kernels::Queue& queue,
                                    const Linear& l, kernels::In<fp8> q, kernels::In<e8m0> scale,
                                    int64_t m, kernels::Out<bf16> y, int64_t ldy) {
  if (m == 0) return absl::OkStatus();
  if (l.kind == Linear::Kind::kFp4) {
    kernels::GemmFp8Fp4Args a;
    a.a = q;
    a.a_scale = scale;
    a.w = l.w4;
    a.w_scale = l.scale;
    a.c = y;
    a.ldc = ldy;
    a.m = m;
    a.n = l.out;
    a.k = l.in;
    RETURN_IF_BACKEND_ERROR(backend.GemmFp8Fp4(queue, a));
    return absl::OkStatus();
  }
  FLOTILLA_CHECK(l.kind == Linear::Kind::kFp8 || l.kind == Linear::Kind::kFp8F32Scale);
  kernels::GemmFp8Args a;
  a.a = q;
  a.a_scale = scale;
  a.w = l.w8;
  a.w_scale = l.scale;
  a.w_scale_f32 = l.scale_f32;
  a.c = y;
  a.ldc = ldy;
  a.m = m;
  a.n = l.out;
  a.k = l.in;
  RETURN_IF_BACKEND_ERROR(backend.GemmFp8(queue, a));
  return absl::OkStatus();
}

absl::Status LinearForward(kernels::Backend& backend, kernels::Queue& queue, const Linear& l,
                           kernels::In<bf16> x, int64_t ldx, int64_t m, kernels::Out<bf16> y,
                           int64_t ldy, QuantizedActs& scratch) {
  if (m == 0) return absl::OkStatus();
  if (l.kind == Linear::Kind::kBf16) {
    kernels::GemmBf16Args a;
    a.a = x;
    a.lda = ldx;
    a.w = l.wb;
    a.ldw = l.in;
    a.c = y;
    a.ldc = ldy;
    a.m = m;
    a.n = l.out;
    a.k = l.in;
    RETURN_IF_BACKEND_ERROR(backend.GemmBf16(queue, a));
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(QuantizeActs(backend, queue, x, ldx, m, l.in, scratch));
  return LinearForwardQuantized(backend, queue, l, scratch.q, scratch.scale, m, y, ldy);
}

}  // namespace flotilla
