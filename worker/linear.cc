#include "worker/linear.h"

#include "common/status.h"
#include "kernels/ops.h"

namespace flotilla {

void QuantizeActs(const bf16* x, int64_t ldx, int64_t m, int64_t k, QuantizedActs* out) {
  out->m = m;
  out->k = k;
  out->q.resize(m * k);
  out->scale.resize(m * (k / 128));
  kernels::ActQuantParams p;
  p.x = x;
  p.ldx = ldx;
  p.m = m;
  p.k = k;
  p.block = 128;
  p.q = out->q.data();
  p.scale = out->scale.data();
  kernels::ActQuantFp8(p);
}

void LinearForwardQuantized(const Linear& l, const fp8* q, const e8m0* scale, int64_t m, bf16* y,
                            int64_t ldy) {
  if (m == 0) return;
  if (l.kind == Linear::Kind::kFp4) {
    kernels::GemmFp8Fp4Params p;
    p.a = q;
    p.a_scale = scale;
    p.w = l.w4;
    p.w_scale = l.scale;
    p.c = y;
    p.ldc = ldy;
    p.m = m;
    p.n = l.out;
    p.k = l.in;
    kernels::GemmFp8Fp4(p);
    return;
  }
  FLOTILLA_CHECK(l.kind == Linear::Kind::kFp8 || l.kind == Linear::Kind::kFp8F32Scale);
  kernels::GemmFp8Params p;
  p.a = q;
  p.a_scale = scale;
  p.w = l.w8;
  p.w_scale = l.scale;
  p.w_scale_f32 = l.scale_f32;
  p.c = y;
  p.ldc = ldy;
  p.m = m;
  p.n = l.out;
  p.k = l.in;
  kernels::GemmFp8(p);
}

void LinearForward(const Linear& l, const bf16* x, int64_t ldx, int64_t m, bf16* y, int64_t ldy,
                   QuantizedActs* scratch) {
  if (m == 0) return;
  if (l.kind == Linear::Kind::kBf16) {
    kernels::GemmBf16Params p;
    p.a = x;
    p.lda = ldx;
    p.w = l.wb;
    p.ldw = l.in;
    p.c = y;
    p.ldc = ldy;
    p.m = m;
    p.n = l.out;
    p.k = l.in;
    kernels::GemmBf16(p);
    return;
  }
  QuantizedActs local;
  QuantizedActs& acts = scratch != nullptr ? *scratch : local;
  QuantizeActs(x, ldx, m, l.in, &acts);
  LinearForwardQuantized(l, acts.q.data(), acts.scale.data(), m, y, ldy);
}

}  // namespace flotilla
