// FP8 activations x packed FP4 (E2M1) weights (spec §2.4, routed experts).
//
// Per output: for each 32-wide K slice, the lane-order dot P of the decoded values,
// acc += (P * sa[k/128]) * sw[slice] in slice order, one rounding to bf16.
// The AVX2 M = 1 path turns each nibble into the int8 value 2w placed in the top byte of a dword
// (one table shuffle), converts with cvtdq2ps (exact: value 2w * 2^24) and removes the 2^25 from
// the finished dot: all products and partial sums are exact multiples of 2^15 below 2^39, so the
// scaled lane-order dot equals P * 2^25 bit for bit. M >= 2 decodes each 32 x 128 weight tile once
// to exact f32 values and reuses it for all activation rows.
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

inline float Fp4At(const uint8_t* row, int64_t k) {
  const uint8_t b = row[k >> 1];
  return Fp4ToF32((k & 1) ? uint8_t(b >> 4) : uint8_t(b & 0xf));
}

// ------------------------------------------------------------------ scalar path

void GemmFp8Fp4Scalar(const GemmFp8Fp4Params& p) {
  const float* lut = cpu::Fp8Values().value;
  const int64_t slices = p.k / 32, kblocks = p.k / 128;
#pragma omp parallel for schedule(static) if (p.n * p.m * p.k >= (1 << 16))
  for (int64_t n = 0; n < p.n; ++n) {
    const uint8_t* w = p.w + n * (p.k / 2);
    for (int64_t m = 0; m < p.m; ++m) {
      const fp8* a = p.a + m * p.k;
      float acc = 0.0f;
      for (int64_t q = 0; q < slices; ++q) {
        float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t t = 0; t < 32; ++t) {
          const int64_t k = q * 32 + t;
          s[t & 7] = std::fmaf(lut[a[k]], Fp4At(w, k), s[t & 7]);
        }
        float dot = cpu::CombineLanes(s);
        if (std::isnan(dot)) dot = CanonicalNan();
        acc = ScaleAndAdd(acc, dot, E8m0ToF32(p.a_scale[m * kblocks + q / 4]),
                          E8m0ToF32(p.w_scale[n * slices + q]));
      }
      p.c[m * p.ldc + n] = F32ToBf16(acc);
    }
  }
}

// ------------------------------------------------------------------ AVX2 path

// int8 value 2w of each E2M1 code.
FLOTILLA_AVX2_INLINE __m256i Fp4DoubledTable() {
  return _mm256_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12,  //
                          0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
}

// Scale bytes (low byte of each dword) -> f32 (2^(b-127); 0 -> 2^-127, 0xff -> NaN, as
// E8m0ToF32), 8 at a time.
FLOTILLA_AVX2_INLINE __m256 E8m0x8(__m256i dwords) {
  const __m256i b = _mm256_and_si256(dwords, _mm256_set1_epi32(0xff));
  const __m256i special = _mm256_or_si256(_mm256_cmpeq_epi32(b, _mm256_setzero_si256()),
                                          _mm256_cmpeq_epi32(b, _mm256_set1_epi32(0xff)));
  return _mm256_castsi256_ps(_mm256_or_si256(
      _mm256_slli_epi32(b, 23), _mm256_and_si256(special, _mm256_set1_epi32(0x00400000))));
}

// Step t of a slice: dword j of lane 0 takes byte 4t + j of lane 0 (the even element 8t + 2j),
// lane 1 the same byte of lane 1 (the odd element 8t + 2j + 1), into its top byte: pi order.
FLOTILLA_AVX2_INLINE __m256i SpreadControl(int t) {
  const char z = -128, b = static_cast<char>(4 * t);
  return _mm256_setr_epi8(
      z, z, z, b, z, z, z, char(b + 1), z, z, z, char(b + 2), z, z, z, char(b + 3),  //
      z, z, z, b, z, z, z, char(b + 1), z, z, z, char(b + 2), z, z, z, char(b + 3));
}

// M = 1: 8 rows per block, one 32-wide slice of each per step.
FLOTILLA_AVX2 void GemmFp4RowAvx2(const GemmFp8Fp4Params& p, const float* a_pi) {
  const int64_t slices = p.k / 32, ldw = p.k / 2;
  const int64_t blocks = (p.n + 7) / 8;
#pragma omp parallel for schedule(static) if (p.n * p.k >= (1 << 16))
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t n0 = b * 8;
    const uint8_t* w[8];
    int32_t scale_offset[8];  // of each row's scales from row n0's, gathered per slice
    for (int r = 0; r < 8; ++r) {
      const int64_t n = std::min(n0 + r, p.n - 1);
      w[r] = p.w + n * ldw;
      scale_offset[r] = static_cast<int32_t>((n - n0) * slices);
    }
    const __m256i gather_index = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(scale_offset));
    const int* scale_base = reinterpret_cast<const int*>(p.w_scale + n0 * slices);
    const char* next = reinterpret_cast<const char*>(p.w + std::min(n0 + 8, p.n - 1) * ldw);
    const char* next_end = reinterpret_cast<const char*>(p.w + p.n * ldw);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t q = 0; q < slices; ++q) {
      const char* pf = next + 8 * 16 * q;  // in step with this block's progress
      if (pf + 64 < next_end) {
        _mm_prefetch(pf, _MM_HINT_T0);
        _mm_prefetch(pf + 64, _MM_HINT_T0);
      }
      const float* aq = a_pi + 32 * q;
      __m256 s[8];
      // Two groups of 4 rows, step-major inside a group (independent FMAs back to back).
      for (int h = 0; h < 2; ++h) {
        __m256i v[4];
        for (int r = 0; r < 4; ++r) {
          const __m256i x = _mm256_broadcastsi128_si256(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(w[4 * h + r] + 16 * q)));
          // Lane 0: low nibbles, lane 1: high nibbles, as int8 2w.
          v[r] = _mm256_shuffle_epi8(
              Fp4DoubledTable(),
              _mm256_and_si256(_mm256_srlv_epi32(x, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)),
                               _mm256_set1_epi8(0x0f)));
          s[4 * h + r] = _mm256_setzero_ps();
        }
        for (int t = 0; t < 4; ++t) {
          const __m256 av = _mm256_loadu_ps(aq + 8 * t);
          for (int r = 0; r < 4; ++r) {
            s[4 * h + r] = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(_mm256_shuffle_epi8(v[r], SpreadControl(t))), av, s[4 * h + r]);
          }
        }
      }
      const __m256 dot =
          _mm256_mul_ps(cpu::avx2::CombinePi8(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
                        _mm256_set1_ps(0x1p-25f));
      const __m256 sa = _mm256_set1_ps(E8m0ToF32(p.a_scale[q / 4]));
      // 4-byte gathers that always cover bytes [q - back, q - back + 3] of a row's scales (a row
      // has >= 4 of them), so no read leaves the row; the wanted byte is then shifted down.
      const int back = static_cast<int>(std::min<int64_t>(q, 3));
      const __m256i raw = _mm256_i32gather_epi32(
          reinterpret_cast<const int*>(reinterpret_cast<const char*>(scale_base) + q - back),
          gather_index, 1);
      const __m256 sw = E8m0x8(_mm256_srlv_epi32(raw, _mm256_set1_epi32(8 * back)));
      acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_mul_ps(dot, sa), sw));
    }
    alignas(16) bf16 out[8];
    _mm_store_si128(reinterpret_cast<__m128i*>(out), cpu::avx2::F32ToBf16x8(acc));
    for (int r = 0; r < 8 && n0 + r < p.n; ++r) p.c[n0 + r] = out[r];
  }
}

constexpr int64_t kTileRows = 32;

// 64 packed bytes (128 elements) -> 128 exact f32 values in natural order.
FLOTILLA_AVX2_INLINE void DecodeFp4x128(const uint8_t* src, float* dst) {
  const __m256i table = Fp4DoubledTable();
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  const __m256 half = _mm256_set1_ps(0.5f);
  for (int h = 0; h < 2; ++h) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32 * h));
    const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(x, low4));
    const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(x, 4), low4));
    // Interleave: bytes 0-7 | 16-23 and 8-15 | 24-31 of the source, as element pairs.
    const __m256i e0 = _mm256_unpacklo_epi8(lo, hi), e1 = _mm256_unpackhi_epi8(lo, hi);
    alignas(32) int8_t v[64];  // elements 0-15 | 32-47, 16-31 | 48-63
    _mm256_store_si256(reinterpret_cast<__m256i*>(v), e0);
    _mm256_store_si256(reinterpret_cast<__m256i*>(v + 32), e1);
    static constexpr int kOffset[8] = {0,  8,  32, 40,
                                       16, 24, 48, 56};  // element 8g lives at v[kOffset[g]]
    for (int g = 0; g < 8; ++g) {
      const __m256i i32 =
          _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(v + kOffset[g])));
      _mm256_storeu_ps(dst + 64 * h + 8 * g, _mm256_mul_ps(_mm256_cvtepi32_ps(i32), half));
    }
  }
}

// M >= 2: decode a 32x128 weight tile once, reuse for every activation row.
FLOTILLA_AVX2 void GemmFp4TileAvx2(const GemmFp8Fp4Params& p, const float* a) {
  const int64_t slices = p.k / 32, kblocks = p.k / 128, ldw = p.k / 2;
  const int64_t tiles = (p.n + kTileRows - 1) / kTileRows;
#pragma omp parallel
  {
    std::vector<float> wt(kTileRows * 128), swt(4 * kTileRows), accbuf(p.m * kTileRows);
#pragma omp for schedule(static)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t n0 = tile * kTileRows;
      const int64_t rows = std::min(kTileRows, p.n - n0);
      float* acc = accbuf.data();
      std::fill(acc, acc + p.m * kTileRows, 0.0f);
      for (int64_t kb = 0; kb < kblocks; ++kb) {
        for (int64_t r = 0; r < kTileRows; ++r) {
          const int64_t n = n0 + std::min(r, rows - 1);
          DecodeFp4x128(p.w + n * ldw + kb * 64, wt.data() + r * 128);
          for (int q = 0; q < 4; ++q)
            swt[q * kTileRows + r] = E8m0ToF32(p.w_scale[n * slices + kb * 4 + q]);
        }
        for (int64_t i = 0; i < p.m; i += 2) {
          const bool pair = i + 1 < p.m;
          const float* a0 = a + i * p.k + kb * 128;
          const float* a1 = pair ? a0 + p.k : a0;
          const float sa0 = E8m0ToF32(p.a_scale[i * kblocks + kb]);
          const float sa1 = pair ? E8m0ToF32(p.a_scale[(i + 1) * kblocks + kb]) : sa0;
          const __m256 sav = _mm256_setr_ps(sa0, sa0, sa0, sa0, sa1, sa1, sa1, sa1);
          float* acc0 = acc + i * kTileRows;
          float* acc1 = pair ? acc0 + kTileRows : acc0;
          for (int64_t c0 = 0; c0 < kTileRows; c0 += 4) {
            const float* w0 = wt.data() + c0 * 128;
            __m128 r0 = _mm_loadu_ps(acc0 + c0), r1 = _mm_loadu_ps(acc1 + c0);
            for (int q = 0; q < 4; ++q) {
              __m256 s[8];
              for (int j = 0; j < 8; ++j) s[j] = _mm256_setzero_ps();
              for (int t = 0; t < 4; ++t) {
                const int64_t off = 32 * q + 8 * t;
                const __m256 av0 = _mm256_loadu_ps(a0 + off), av1 = _mm256_loadu_ps(a1 + off);
                for (int c = 0; c < 4; ++c) {
                  const __m256 wv = _mm256_loadu_ps(w0 + c * 128 + off);
                  s[c] = _mm256_fmadd_ps(av0, wv, s[c]);
                  s[4 + c] = _mm256_fmadd_ps(av1, wv, s[4 + c]);
                }
              }
              const __m128 sw4 = _mm_loadu_ps(swt.data() + q * kTileRows + c0);
              const __m256 swv = _mm256_set_m128(sw4, sw4);
              const __m256 x =
                  _mm256_mul_ps(_mm256_mul_ps(cpu::avx2::CombineNatural8(s), sav), swv);
              r0 = _mm_add_ps(r0, _mm256_castps256_ps128(x));
              r1 = _mm_add_ps(r1, _mm256_extractf128_ps(x, 1));
            }
            _mm_storeu_ps(acc0 + c0, r0);
            if (pair) _mm_storeu_ps(acc1 + c0, r1);
          }
        }
      }
      for (int64_t i = 0; i < p.m; ++i) {
        for (int64_t r = 0; r < rows; ++r)
          p.c[i * p.ldc + n0 + r] = F32ToBf16(acc[i * kTileRows + r]);
      }
    }
  }
}

}  // namespace

void GemmFp8Fp4(const GemmFp8Fp4Params& p) {
  if (p.m <= 0 || p.n <= 0) return;
  if (!cpu::UseAvx2()) {
    GemmFp8Fp4Scalar(p);
    return;
  }
  std::vector<float> a;
  if (p.m == 1) {
    cpu::DecodeFp8Rows(p.a, 1, p.k, /*pi=*/true, &a);
    GemmFp4RowAvx2(p, a.data());
  } else {
    cpu::DecodeFp8Rows(p.a, p.m, p.k, /*pi=*/false, &a);
    GemmFp4TileAvx2(p, a.data());
  }
}

}  // namespace flotilla::kernels
