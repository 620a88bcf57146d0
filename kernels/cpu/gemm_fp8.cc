// FP8 x FP8 GEMM with 128x128 weight block scales (spec §2.4).
//
// Per output: 128-wide lane-order dots P of decoded E4M3 values, acc += (P * sa) * sw in kb
// order, one rounding to bf16. Any NaN code in a 128-block makes that block's P the canonical
// NaN. The AVX2 paths decode weights to power-of-two multiples of their values (exact bit maps,
// see DecodeFp8x32 and DecodeFp8x8Tiny) and pre-scale the activations so that every product and
// partial sum stays a normal f32: the scaled dot is then P times a power of two, exactly, and the
// evaluation order is the contract's. M = 1 streams the weights once (memory bound); M >= 2 decodes
// each 32 x 128 weight tile once and reuses it for all activation rows.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/avx2_util.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/gemm_quant_util.h"
#include "kernels/cpu/lane_order.h"
#include "kernels/ops.h"

namespace flotilla::kernels {
namespace {

using cpu::CanonicalNan;
using cpu::ScaleAndAdd;

inline float WeightScale(const GemmFp8Params& p, int64_t n, int64_t kb) {
  const int64_t idx = (n / 128) * (p.k / 128) + kb;
  return p.w_scale ? E8m0ToF32(p.w_scale[idx]) : p.w_scale_f32[idx];
}

// ------------------------------------------------------------------ scalar path

// The contract for one output, element by element.
float OutputScalar(const GemmFp8Params& p, const float* lut, int64_t m, int64_t n) {
  const int64_t kblocks = p.k / 128;
  const fp8* a = p.a + m * p.k;
  const fp8* w = p.w + n * p.k;
  float acc = 0.0f;
  for (int64_t kb = 0; kb < kblocks; ++kb) {
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t t = 0; t < 128; ++t) {
      const int64_t k = kb * 128 + t;
      s[t & 7] = std::fmaf(lut[a[k]], lut[w[k]], s[t & 7]);
    }
    float dot = cpu::CombineLanes(s);
    if (std::isnan(dot)) dot = CanonicalNan();
    acc = ScaleAndAdd(acc, dot, E8m0ToF32(p.a_scale[m * kblocks + kb]), WeightScale(p, n, kb));
  }
  return acc;
}

void GemmFp8Scalar(const GemmFp8Params& p) {
  const float* lut = cpu::Fp8Values().value;
#pragma omp parallel for schedule(static) if (p.n * p.m * p.k >= (1 << 16))
  for (int64_t n = 0; n < p.n; ++n) {
    for (int64_t m = 0; m < p.m; ++m) p.c[m * p.ldc + n] = F32ToBf16(OutputScalar(p, lut, m, n));
  }
}

// ------------------------------------------------------------------ AVX2 path

// 32 weight bytes -> 4 x 8 f32 (value * 2^-8, natural order) via fp16; `nan` gathers max(c & 0x7f).
FLOTILLA_AVX2_INLINE void DecodeFp8x32(const fp8* src, __m256* out, __m256i* nan) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
  *nan = _mm256_max_epu8(*nan, _mm256_and_si256(v, _mm256_set1_epi8(0x7f)));
  const __m256i zero = _mm256_setzero_si256();
  const __m256i mask = _mm256_set1_epi16(static_cast<int16_t>(0xbf80));
  // Words c << 8; arithmetic >> 1 puts c & 0x7f at bits 7..13 and copies the sign into bit 14,
  // which the mask clears.
  const __m256i lo = _mm256_and_si256(_mm256_srai_epi16(_mm256_unpacklo_epi8(zero, v), 1), mask);
  const __m256i hi = _mm256_and_si256(_mm256_srai_epi16(_mm256_unpackhi_epi8(zero, v), 1), mask);
  alignas(32) uint16_t h[32];  // [bytes 0-7 | 16-23] [8-15 | 24-31]
  _mm256_store_si256(reinterpret_cast<__m256i*>(h), lo);
  _mm256_store_si256(reinterpret_cast<__m256i*>(h + 16), hi);
  out[0] = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(h)));
  out[1] = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(h + 16)));
  out[2] = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(h + 8)));
  out[3] = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(h + 24)));
}

FLOTILLA_AVX2_INLINE bool HasNanCode(__m256i nan) {
  return _mm256_movemask_epi8(_mm256_cmpeq_epi8(nan, _mm256_set1_epi8(0x7f))) != 0;
}

// P' (= P * 2^-8) of 8 accumulators -> P, NaN lanes (bit i of nan_bits) -> canonical NaN.
FLOTILLA_AVX2_INLINE __m256 FinishDots(const __m256* acc, int nan_bits) {
  __m256 dot = _mm256_mul_ps(cpu::avx2::CombineNatural8(acc), _mm256_set1_ps(256.0f));
  if (nan_bits) {
    const __m256i bits = _mm256_and_si256(_mm256_set1_epi32(nan_bits),
                                          _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128));
    const __m256 is_nan = _mm256_castsi256_ps(_mm256_cmpgt_epi32(bits, _mm256_setzero_si256()));
    dot = _mm256_blendv_ps(dot, _mm256_set1_ps(CanonicalNan()), is_nan);
  }
  // Activation NaNs already arrive as the canonical NaN through the decoded values.
  return dot;
}

// 8 weight bytes -> 8 f32 with the bits sign | (c & 0x7f) << 20, i.e. the value e4m3(c) * 2^-120
// (the E4M3 exponent field lands in the f32 exponent field; E4M3 subnormals become f32
// subnormals). NaN codes decode to finite values and are caught separately.
FLOTILLA_AVX2_INLINE __m256 DecodeFp8x8Tiny(const fp8* src) {
  const __m256i b = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src)));
  return _mm256_castsi256_ps(
      _mm256_and_si256(_mm256_slli_epi32(b, 20), _mm256_set1_epi32(static_cast<int>(0x87f00000u))));
}

// Activations for the M = 1 path carry 2^64, so every product a * w * 2^-56 and every partial sum
// is a normal f32 (|.| >= 2^-74) and the lane-order dot is exactly P * 2^-56.
constexpr float kRowActScale = 0x1p64f;
constexpr float kRowDotUnscale = 0x1p56f;

// M = 1: weights stream once from memory, 8 rows per block, one accumulator per row; the rows'
// FMA chains are interleaved step by step. A block that holds a weight NaN code is redone by
// the scalar statement (same bits, NaN where the contract puts it).
FLOTILLA_AVX2 void GemmFp8RowAvx2(const GemmFp8Params& p, const float* a) {
  const int64_t kblocks = p.k / 128;
  const int64_t blocks = (p.n + 7) / 8;
  const float* lut = cpu::Fp8Values().value;
#pragma omp parallel if (p.n * p.k >= (1 << 16))
  {
    const cpu::avx2::ScopedIeeeMxcsr ieee;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t n0 = b * 8;
      const fp8* w[8];
      for (int r = 0; r < 8; ++r) w[r] = p.w + std::min(n0 + r, p.n - 1) * p.k;
      __m256 acc = _mm256_setzero_ps();
      __m256i nan = _mm256_setzero_si256();
      const __m256i low7 = _mm256_set1_epi8(0x7f);
      // The 8 rows of a block are one contiguous range; the next block's range is prefetched
      // in step with this one (short rows are too short for the hardware prefetcher).
      const char* next = reinterpret_cast<const char*>(p.w + std::min(n0 + 8, p.n - 1) * p.k);
      const char* next_end = reinterpret_cast<const char*>(p.w + p.n * p.k);
      for (int64_t kb = 0; kb < kblocks; ++kb) {
        __m256 s[8];
        for (int r = 0; r < 8; ++r) s[r] = _mm256_setzero_ps();
        for (int q = 0; q < 4; ++q) {
          const int64_t off = kb * 128 + 32 * q;
          for (int l = 0; l < 4; ++l) {
            const char* pf = next + 8 * off + 64 * l;
            if (pf < next_end) _mm_prefetch(pf, _MM_HINT_T1);
          }
          for (int r = 0; r < 8; ++r) {
            const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[r] + off));
            nan = _mm256_max_epu8(nan, _mm256_and_si256(raw, low7));
          }
          // Step-major: consecutive FMAs belong to different rows, hiding the FMA latency.
          for (int g = 0; g < 4; ++g) {
            const __m256 av = _mm256_loadu_ps(a + off + 8 * g);
            for (int r = 0; r < 8; ++r)
              s[r] = _mm256_fmadd_ps(DecodeFp8x8Tiny(w[r] + off + 8 * g), av, s[r]);
          }
        }
        const __m256 dot =
            _mm256_mul_ps(cpu::avx2::CombineNatural8(s), _mm256_set1_ps(kRowDotUnscale));
        const __m256 sa = _mm256_set1_ps(E8m0ToF32(p.a_scale[kb]));
        const __m256 sw = _mm256_set1_ps(WeightScale(p, n0, kb));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_mul_ps(dot, sa), sw));
      }
      alignas(32) float res[8];
      _mm256_store_ps(res, acc);
      if (HasNanCode(nan)) {
        for (int r = 0; r < 8 && n0 + r < p.n; ++r) res[r] = OutputScalar(p, lut, 0, n0 + r);
      }
      for (int r = 0; r < 8 && n0 + r < p.n; ++r) p.c[n0 + r] = F32ToBf16(res[r]);
    }
  }
}

constexpr int64_t kTileRows = 32;  // divides 128: a tile never straddles a weight-scale row

struct Fp8TileScratch {
  std::vector<float> w;    // [kTileRows][128] decoded weights (x 2^-8)
  std::vector<float> acc;  // [m][kTileRows]
};

// M >= 2: each 32x128 weight tile is decoded once to f32 and reused by every activation row.
FLOTILLA_AVX2 void GemmFp8TileAvx2(const GemmFp8Params& p, const float* a) {
  const int64_t kblocks = p.k / 128;
  const int64_t tiles = (p.n + kTileRows - 1) / kTileRows;
#pragma omp parallel
  {
    static thread_local Fp8TileScratch scratch;  // grows once per thread, then reused
    scratch.w.assign(kTileRows * 128, {});
    scratch.acc.assign(p.m * kTileRows, {});
#pragma omp for schedule(static)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t n0 = tile * kTileRows;
      const int64_t rows = std::min(kTileRows, p.n - n0);
      float* wt = scratch.w.data();
      float* acc = scratch.acc.data();
      std::fill(acc, acc + p.m * kTileRows, 0.0f);
      for (int64_t kb = 0; kb < kblocks; ++kb) {
        uint32_t nan_rows = 0;
        for (int64_t r = 0; r < kTileRows; ++r) {
          const fp8* src = p.w + (n0 + std::min(r, rows - 1)) * p.k + kb * 128;
          __m256i nan = _mm256_setzero_si256();
          for (int q = 0; q < 4; ++q) {
            __m256 f[4];
            DecodeFp8x32(src + 32 * q, f, &nan);
            for (int g = 0; g < 4; ++g) _mm256_storeu_ps(wt + r * 128 + 32 * q + 8 * g, f[g]);
          }
          if (HasNanCode(nan)) nan_rows |= 1u << r;
        }
        const float sw = WeightScale(p, n0, kb);
        const __m256 swv = _mm256_set1_ps(sw);
        int64_t i = 0;
        for (; i < p.m; i += 2) {
          const bool pair = i + 1 < p.m;
          const float* a0 = a + i * p.k + kb * 128;
          const float* a1 = pair ? a0 + p.k : a0;
          const float sa0 = E8m0ToF32(p.a_scale[i * kblocks + kb]);
          const float sa1 = pair ? E8m0ToF32(p.a_scale[(i + 1) * kblocks + kb]) : sa0;
          const __m256 sav = _mm256_setr_ps(sa0, sa0, sa0, sa0, sa1, sa1, sa1, sa1);
          for (int64_t c0 = 0; c0 < kTileRows; c0 += 4) {
            __m256 s[8];
            for (int j = 0; j < 8; ++j) s[j] = _mm256_setzero_ps();
            const float* w0 = wt + c0 * 128;
            for (int t = 0; t < 16; ++t) {
              const __m256 av0 = _mm256_loadu_ps(a0 + 8 * t);
              const __m256 av1 = _mm256_loadu_ps(a1 + 8 * t);
              for (int c = 0; c < 4; ++c) {
                const __m256 wv = _mm256_loadu_ps(w0 + c * 128 + 8 * t);
                s[c] = _mm256_fmadd_ps(av0, wv, s[c]);
                s[4 + c] = _mm256_fmadd_ps(av1, wv, s[4 + c]);
              }
            }
            const int nan4 = (nan_rows >> c0) & 0xf;
            const __m256 dot = FinishDots(s, nan4 | (nan4 << 4));
            const __m256 x = _mm256_mul_ps(_mm256_mul_ps(dot, sav), swv);
            float* acc0 = acc + i * kTileRows + c0;
            float* acc1 = pair ? acc0 + kTileRows : acc0;
            alignas(32) float xs[8];
            _mm256_store_ps(xs, x);
            const __m128 r0 = _mm_add_ps(_mm_loadu_ps(acc0), _mm_load_ps(xs));
            _mm_storeu_ps(acc0, r0);
            if (pair) _mm_storeu_ps(acc1, _mm_add_ps(_mm_loadu_ps(acc1), _mm_load_ps(xs + 4)));
          }
        }
      }
      for (int64_t i = 0; i < p.m; ++i) {
        for (int64_t r = 0; r < rows; ++r) {
          p.c[i * p.ldc + n0 + r] = F32ToBf16(acc[i * kTileRows + r]);
        }
      }
    }
  }
}

}  // namespace

void GemmFp8(const GemmFp8Params& p) {
  if (p.m <= 0 || p.n <= 0) return;
  if (!cpu::UseAvx2()) {
    GemmFp8Scalar(p);
    return;
  }
  static thread_local std::vector<float> a;  // grows once per thread, then reused
  if (p.m == 1) {
    cpu::DecodeFp8Rows(p.a, 1, p.k, &a, kRowActScale);
    GemmFp8RowAvx2(p, a.data());
  } else {
    cpu::DecodeFp8Rows(p.a, p.m, p.k, &a);
    GemmFp8TileAvx2(p, a.data());
  }
}

}  // namespace flotilla::kernels
