// Hyper-connections (spec §4.3, §4.4): hc_pre with the Sinkhorn split, hc_post, hc_head.
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/hd_math.h"
#include "kernels/cpu/avx2_util.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/gemm_dense.h"
#include "kernels/cpu/lane_order.h"
#include "kernels/cpu/sinkhorn.h"
#include "kernels/ops.h"

namespace flotilla::kernels {
namespace {

// Shared with the CUDA kernels bit for bit (common/hd_math.h).
inline float Sigmoid(float z) { return hd::SigmoidF(z); }

// mix[t][j] = (fn_j . v_t) * r_t with r_t = 1/sqrtf(mean(v_t^2) + eps), v_t = f32(h_t) flat.
void HcMixes(const bf16* h, int64_t m, int64_t width, const float* fn, int64_t n_mix, float eps,
             std::vector<float>* mix) {
  mix->resize(m * n_mix);
  cpu::DenseGemm(cpu::DenseOperand{nullptr, h, width}, m, cpu::DenseOperand{fn, nullptr, width},
                 n_mix, width, mix->data(), nullptr, n_mix);
  const float inv_width = 1.0f / static_cast<float>(width);
#pragma omp parallel for schedule(static) if (m * width >= (1 << 16))
  for (int64_t t = 0; t < m; ++t) {
    const bf16* v = h + t * width;
    const float ss = cpu::Dot(v, v, width);
    const float r = 1.0f / std::sqrt(ss * inv_width + eps);
    for (int64_t j = 0; j < n_mix; ++j) (*mix)[t * n_mix + j] *= r;
  }
}

// y[c] = bf16(((w0*h0[c] + w1*h1[c]) + w2*h2[c]) + ...), each product rounded on its own.
FLOTILLA_AVX2 void CollapseAvx2(const bf16* h, const float* w, int64_t hc, int64_t d, bf16* y) {
  int64_t c = 0;
  for (; c + 8 <= d; c += 8) {
    __m256 acc = _mm256_mul_ps(_mm256_set1_ps(w[0]), cpu::avx2::LoadBf16(h + c));
    for (int64_t j = 1; j < hc; ++j) {
      acc = _mm256_add_ps(acc,
                          _mm256_mul_ps(_mm256_set1_ps(w[j]), cpu::avx2::LoadBf16(h + j * d + c)));
    }
    cpu::avx2::StoreBf16(y + c, acc);
  }
  for (; c < d; ++c) {
    float acc = w[0] * Bf16ToF32(h[c]);
    for (int64_t j = 1; j < hc; ++j) acc = acc + w[j] * Bf16ToF32(h[j * d + c]);
    y[c] = F32ToBf16(acc);
  }
}

void CollapseScalar(const bf16* h, const float* w, int64_t hc, int64_t d, bf16* y) {
  for (int64_t c = 0; c < d; ++c) {
    float acc = w[0] * Bf16ToF32(h[c]);
    for (int64_t j = 1; j < hc; ++j) acc = acc + w[j] * Bf16ToF32(h[j * d + c]);
    y[c] = F32ToBf16(acc);
  }
}

inline void Collapse(const bf16* h, const float* w, int64_t hc, int64_t d, bf16* y) {
  if (cpu::UseAvx2()) {
    CollapseAvx2(h, w, hc, d, y);
  } else {
    CollapseScalar(h, w, hc, d, y);
  }
}

}  // namespace

void HcPre(const HcPreParams& p) {
  const int64_t width = p.hc * p.d, n_mix = (2 + p.hc) * p.hc;
  // This thread's (grows once, then reused); threads below read it through the reference.
  static thread_local std::vector<float> mix_storage;
  std::vector<float>& mix = mix_storage;
  HcMixes(p.h, p.m, width, p.fn, n_mix, p.norm_eps, &mix);
#pragma omp parallel for schedule(static) if (p.m * width >= (1 << 16))
  for (int64_t t = 0; t < p.m; ++t) {
    static thread_local std::vector<float> pre;
    pre.assign(size_t(p.hc), 0.0f);
    SinkhornSplit(mix.data() + t * n_mix, p.scale, p.base, p.hc, p.sinkhorn_iters, p.hc_eps,
                  pre.data(), p.post + t * p.hc, p.comb + t * p.hc * p.hc);
    Collapse(p.h + t * width, pre.data(), p.hc, p.d, p.x + t * p.d);
  }
}

namespace {

FLOTILLA_AVX2 void HcPostTokenAvx2(const bf16* x, const bf16* res, const float* post,
                                   const float* comb, int64_t hc, int64_t d, bf16* out) {
  for (int64_t k = 0; k < hc; ++k) {
    int64_t c = 0;
    for (; c + 8 <= d; c += 8) {
      __m256 acc = _mm256_mul_ps(_mm256_set1_ps(comb[k]), cpu::avx2::LoadBf16(res + c));
      for (int64_t j = 1; j < hc; ++j) {
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(comb[j * hc + k]),
                                               cpu::avx2::LoadBf16(res + j * d + c)));
      }
      acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(post[k]), cpu::avx2::LoadBf16(x + c)));
      cpu::avx2::StoreBf16(out + k * d + c, acc);
    }
    for (; c < d; ++c) {
      float acc = comb[k] * Bf16ToF32(res[c]);
      for (int64_t j = 1; j < hc; ++j) acc = acc + comb[j * hc + k] * Bf16ToF32(res[j * d + c]);
      out[k * d + c] = F32ToBf16(acc + post[k] * Bf16ToF32(x[c]));
    }
  }
}

void HcPostTokenScalar(const bf16* x, const bf16* res, const float* post, const float* comb,
                       int64_t hc, int64_t d, bf16* out) {
  for (int64_t k = 0; k < hc; ++k) {
    for (int64_t c = 0; c < d; ++c) {
      float acc = comb[k] * Bf16ToF32(res[c]);
      for (int64_t j = 1; j < hc; ++j) acc = acc + comb[j * hc + k] * Bf16ToF32(res[j * d + c]);
      out[k * d + c] = F32ToBf16(acc + post[k] * Bf16ToF32(x[c]));
    }
  }
}

}  // namespace

void HcPost(const HcPostParams& p) {
  const bool avx2 = cpu::UseAvx2();
  const int64_t width = p.hc * p.d;
#pragma omp parallel for schedule(static) if (p.m * width >= (1 << 16))
  for (int64_t t = 0; t < p.m; ++t) {
    const bf16* x = p.x + t * p.d;
    const bf16* res = p.res + t * width;
    const float* post = p.post + t * p.hc;
    const float* comb = p.comb + t * p.hc * p.hc;
    bf16* out = p.h_out + t * width;
    if (avx2) {
      HcPostTokenAvx2(x, res, post, comb, p.hc, p.d, out);
    } else {
      HcPostTokenScalar(x, res, post, comb, p.hc, p.d, out);
    }
  }
}

void HcHead(const HcHeadParams& p) {
  const int64_t width = p.hc * p.d;
  // This thread's (grows once, then reused); threads below read it through the reference.
  static thread_local std::vector<float> mix_storage;
  std::vector<float>& mix = mix_storage;
  HcMixes(p.h, p.m, width, p.fn, p.hc, p.norm_eps, &mix);
#pragma omp parallel for schedule(static) if (p.m * width >= (1 << 16))
  for (int64_t t = 0; t < p.m; ++t) {
    static thread_local std::vector<float> pre;
    pre.assign(size_t(p.hc), 0.0f);
    for (int64_t j = 0; j < p.hc; ++j) {
      pre[j] = Sigmoid(mix[t * p.hc + j] * p.scale[0] + p.base[j]) + p.hc_eps;
    }
    Collapse(p.h + t * width, pre.data(), p.hc, p.d, p.y + t * p.d);
  }
}

}  // namespace flotilla::kernels
