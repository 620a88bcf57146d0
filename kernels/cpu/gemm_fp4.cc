// FP8 activations x packed FP4 (E2M1) weights (spec §2.4, routed experts).
//
// Per output: for each 32-wide K slice, the exact dot of the decoded values rounded once to f32
// (P), acc += (P * sa[k/128]) * sw[slice] in slice order, one rounding to bf16 (kernels/ops.h).
// The exact dot is an integer: every E4M3 value is A * 2^-9 with |A| <= 229376 and every E2M1
// value is W * 2^-1 with |W| <= 12, so the slice dot is D * 2^-10 with |D| < 2^27, and
// P = f32(D) * 2^-10 (the int -> f32 conversion rounds to nearest even).
//
// The AVX2 path computes D with vpmaddubsw / vpmaddwd: the weights as unsigned bytes W + 12
// (0 .. 24, one table shuffle per 32 nibbles), the activations as signed bytes, and 12 Σ A of the
// slice subtracted at the end. Each activation row is prepared once per call: the elements are
// taken in the pairs vpmaddubsw sums into one 16-bit word, and a pair whose values share a
// power-of-two unit 2^u (both multiples of 2^u, both |A| / 2^u <= 127) goes into one word with
// the multiplier 2^u for vpmaddwd; a pair that does not is split over a second vector, each
// element with its own unit (|A| = M * 2^x with M < 16 always fits alone). No 16-bit word
// saturates (2 * 24 * 127 < 2^15) and every 32-bit sum is exact (32 * 24 * 229376 < 2^31), so the
// result is the exact D whatever the split. Per block of 8 weight rows, an integer pass stores
// D + 12 Σ A for every slice, then an f32 pass applies the scales in slice order.
#include <algorithm>
#include <cstdlib>
#include <cstring>
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

// Per E4M3 code: A = value * 2^9 (an integer; 0 for the NaN codes), whether it is NaN, and for the
// AVX2 path's pairing the smallest unit 2^u with |A| / 2^u <= 127 and the number of trailing zero
// bits of |A| (31 for zero, so that it pairs with anything).
struct Fp8Integers {
  int32_t value[256];
  bool nan[256];
  uint8_t min_unit[256], zeros[256];
  Fp8Integers() {
    for (int c = 0; c < 256; ++c) {
      nan[c] = (c & 0x7f) == 0x7f;
      value[c] = nan[c] ? 0 : static_cast<int32_t>(Fp8ToF32(fp8(c)) * 512.0f);
      const uint32_t mag = static_cast<uint32_t>(std::abs(value[c]));
      min_unit[c] = 0;
      while ((mag >> min_unit[c]) > 127) ++min_unit[c];
      zeros[c] = mag == 0 ? 31 : static_cast<uint8_t>(__builtin_ctz(mag));
    }
  }
};
const Fp8Integers& Fp8Ints() {
  static const Fp8Integers table;
  return table;
}

// W = 2 * E2M1 value of each code.
constexpr int8_t kFp4Doubled[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

inline int Nibble(const uint8_t* row, int64_t k) {
  const uint8_t b = row[k >> 1];
  return (k & 1) ? (b >> 4) : (b & 0xf);
}

// P of one slice: f32(D) * 2^-10, or the canonical NaN when an activation code is NaN.
inline float SliceDot(int32_t d, bool nan) {
  return nan ? CanonicalNan() : static_cast<float>(d) * 0x1p-10f;
}

// ------------------------------------------------------------------ scalar path

void GemmFp8Fp4Scalar(const GemmFp8Fp4Params& p) {
  const Fp8Integers& ints = Fp8Ints();
  const int64_t slices = p.k / 32, kblocks = p.k / 128;
#pragma omp parallel for schedule(static) if (p.n * p.m * p.k >= (1 << 16))
  for (int64_t n = 0; n < p.n; ++n) {
    const uint8_t* w = p.w + n * (p.k / 2);
    for (int64_t m = 0; m < p.m; ++m) {
      const fp8* a = p.a + m * p.k;
      float acc = 0.0f;
      for (int64_t q = 0; q < slices; ++q) {
        int32_t d = 0;
        bool nan = false;
        for (int64_t k = q * 32; k < q * 32 + 32; ++k) {
          d += ints.value[a[k]] * kFp4Doubled[Nibble(w, k)];
          nan |= ints.nan[a[k]];
        }
        acc = ScaleAndAdd(acc, SliceDot(d, nan), E8m0ToF32(p.a_scale[m * kblocks + q / 4]),
                          E8m0ToF32(p.w_scale[n * slices + q]));
      }
      p.c[m * p.ldc + n] = F32ToBf16(acc);
    }
  }
}

// ------------------------------------------------------------------ prepared activations

// The AVX2 path multiplies the weights as unsigned bytes W + 12 (0 .. 24) with signed activation
// bytes, and subtracts 12 * Σ A of the slice afterwards.
constexpr int kWeightOffset = 12;

// Two consecutive slices (2p, 2p + 1) of one activation row, laid out like the weight decode:
// a 32-byte load of a weight row covers both slices (lane 0: slice 2p, lane 1: slice 2p + 1);
// half 0 pairs with the low nibbles (even elements: byte j of a lane is element 2j), half 1 with
// the high nibbles (element 2j + 1). 16-bit word i of a lane pairs bytes 2i and 2i + 1. Per lane,
// Σ_half Σ_vec Σ_words unit * (pair dot of value with W + 12) - offset_sum = D of that slice.
struct alignas(32) PreparedPair {
  int8_t value[2][2][32];  // [half][vec]: A / unit of its word, 0 if in the other vector
  int16_t unit[2][2][16];  // [half][vec]: 2^u per word, 0 where the word is empty
};
static_assert(sizeof(PreparedPair) == 256);

// `a`: the 64 elements of slices 2p and 2p + 1. Writes their layout, nan[t] (whether slice
// 2p + t has a NaN code) and offset_sum[t] = 12 * Σ A over slice 2p + t.
void PreparePair(const fp8* a, PreparedPair* s, uint8_t* nan, int32_t* offset_sum) {
  const Fp8Integers& codes = Fp8Ints();
  for (int t = 0; t < 2; ++t) {
    int32_t sum = 0;
    uint8_t any_nan = 0;
    for (int e = 32 * t; e < 32 * t + 32; ++e) {
      sum += codes.value[a[e]];
      any_nan |= codes.nan[a[e]];
    }
    nan[t] = any_nan;
    offset_sum[t] = kWeightOffset * sum;
  }
  for (int half = 0; half < 2; ++half) {
    for (int word = 0; word < 16; ++word) {
      // Bytes 2 * word and 2 * word + 1 of lane word / 8: elements 4i + half and 4i + 2 + half
      // of slice 2p + lane, i = word % 8.
      const fp8 c0 = a[32 * (word / 8) + 4 * (word % 8) + half];
      const fp8 c1 = a[32 * (word / 8) + 4 * (word % 8) + 2 + half];
      const int m0 = codes.min_unit[c0], m1 = codes.min_unit[c1];
      const int u = std::max(m0, m1);
      // Together in vector 0 with one unit when both are multiples of it; otherwise element 0
      // in vector 0 and element 1 in vector 1, each with its own minimum unit (|A| = M * 2^x
      // with M < 16 is always a multiple of that).
      const bool together = u <= codes.zeros[c0] && u <= codes.zeros[c1];
      const int u0 = together ? u : m0, u1 = together ? u : m1;
      // Exact shifts: each value is a multiple of its unit.
      const int8_t v0 = static_cast<int8_t>(codes.value[c0] >> u0);
      const int8_t v1 = static_cast<int8_t>(codes.value[c1] >> u1);
      s->value[half][0][2 * word] = v0;
      s->value[half][0][2 * word + 1] = together ? v1 : int8_t{0};
      s->value[half][1][2 * word] = 0;
      s->value[half][1][2 * word + 1] = together ? int8_t{0} : v1;
      s->unit[half][0][word] = static_cast<int16_t>(1 << u0);
      s->unit[half][1][word] = together ? int16_t{0} : static_cast<int16_t>(1 << u1);
    }
  }
}

// ------------------------------------------------------------------ AVX2 path

// W + 12 of each E2M1 code (W = 2w), as unsigned bytes, in both lanes.
FLOTILLA_AVX2_INLINE __m256i Fp4OffsetTable() {
  return _mm256_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0,  //
                          12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0);
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

// A prepared slice pair in registers.
struct PairRegs {
  __m256i value[2][2], unit[2][2];
};
FLOTILLA_AVX2_INLINE PairRegs LoadPair(const PreparedPair& s) {
  PairRegs r;
  for (int half = 0; half < 2; ++half) {
    for (int vec = 0; vec < 2; ++vec) {
      r.value[half][vec] = _mm256_load_si256(reinterpret_cast<const __m256i*>(s.value[half][vec]));
      r.unit[half][vec] = _mm256_load_si256(reinterpret_cast<const __m256i*>(s.unit[half][vec]));
    }
  }
  return r;
}

// D + 12 Σ A partials of one weight row for a slice pair: lane 0 slice 2p, lane 1 slice 2p + 1.
FLOTILLA_AVX2_INLINE __m256i PairPartials(const uint8_t* w, const PairRegs& s) {
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  __m256i d = _mm256_setzero_si256();
  for (int half = 0; half < 2; ++half) {
    const __m256i wv = _mm256_shuffle_epi8(
        Fp4OffsetTable(), _mm256_and_si256(half ? _mm256_srli_epi16(x, 4) : x, low4));
    for (int vec = 0; vec < 2; ++vec) {
      d = _mm256_add_epi32(d, _mm256_madd_epi16(_mm256_maddubs_epi16(wv, s.value[half][vec]),
                                                s.unit[half][vec]));
    }
  }
  return d;
}

// Lane sums of two rows' partials: [x0+x2, y0+y2, x1+x3, y1+y3 | same for lane 1].
FLOTILLA_AVX2_INLINE __m256i Fold2(__m256i x, __m256i y) {
  return _mm256_add_epi32(_mm256_unpacklo_epi32(x, y), _mm256_unpackhi_epi32(x, y));
}
// [r0 r1 r2 r3 | r0' r1' r2' r3'] (lane sums) from two Fold2 results of rows (0,1) and (2,3).
FLOTILLA_AVX2_INLINE __m256i Fold4(__m256i a01, __m256i a23) {
  return _mm256_add_epi32(_mm256_unpacklo_epi64(a01, a23), _mm256_unpackhi_epi64(a01, a23));
}

constexpr int64_t kBlockRows = 8;

// Rows [n0, n0 + 8) of C at a time (rows past p.n repeat row p.n - 1 and are not stored). For each
// activation row: one integer pass over the slice pairs writes D + 12 Σ A of the 8 rows for every
// slice, then an f32 pass turns them into P and accumulates in slice order.
FLOTILLA_AVX2 void GemmFp4Avx2(const GemmFp8Fp4Params& p, const PreparedPair* act,
                               const uint8_t* act_nan, const int32_t* act_offset) {
  const int64_t slices = p.k / 32, pairs = p.k / 64, kblocks = p.k / 128, ldw = p.k / 2;
  const int64_t blocks = (p.n + kBlockRows - 1) / kBlockRows;
#pragma omp parallel if (p.n * p.m * p.k >= (1 << 16))
  {
    static thread_local std::vector<int32_t> dots;   // [slice][row]: D + 12 Σ A
    static thread_local std::vector<float> w_scale;  // [slice][row]: sw
    dots.assign(size_t(8 * slices), 0);              // grow once per thread, then reused
    w_scale.assign(size_t(8 * slices), 0.0f);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t n0 = b * kBlockRows;
      const uint8_t* w[kBlockRows];
      const e8m0* sw_row[kBlockRows];
      for (int r = 0; r < kBlockRows; ++r) {
        const int64_t n = std::min(n0 + r, p.n - 1);
        w[r] = p.w + n * ldw;
        sw_row[r] = p.w_scale + n * slices;
      }
      for (int64_t kb = 0; kb < kblocks; ++kb) {
        // Scale bytes of slices 4kb .. 4kb+3, one dword per row (k % 128 == 0: in bounds).
        int32_t bytes[kBlockRows];
        for (int r = 0; r < kBlockRows; ++r) std::memcpy(&bytes[r], sw_row[r] + 4 * kb, 4);
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes));
        for (int t = 0; t < 4; ++t) {
          _mm256_storeu_ps(&w_scale[8 * (4 * kb + t)], E8m0x8(_mm256_srli_epi32(v, 8 * t)));
        }
      }
      // The next block's rows (contiguous), fetched in step with this block's first pass.
      const char* next = reinterpret_cast<const char*>(p.w + std::min(n0 + 8, p.n - 1) * ldw);
      const char* next_end = reinterpret_cast<const char*>(p.w + p.n * ldw);
      for (int64_t i = 0; i < p.m; ++i) {
        const PreparedPair* a = act + i * pairs;
        for (int64_t pr = 0; pr < pairs; ++pr) {
          if (i == 0) {
            const char* pf = next + 256 * pr;
            for (int l = 0; l < 256; l += 64) {
              if (pf + l < next_end) _mm_prefetch(pf + l, _MM_HINT_T0);
            }
          }
          const int64_t off = 32 * pr;
          const PairRegs ap = LoadPair(a[pr]);
          const __m256i a01 = Fold2(PairPartials(w[0] + off, ap), PairPartials(w[1] + off, ap));
          const __m256i a23 = Fold2(PairPartials(w[2] + off, ap), PairPartials(w[3] + off, ap));
          const __m256i b0 = Fold4(a01, a23);
          const __m256i a45 = Fold2(PairPartials(w[4] + off, ap), PairPartials(w[5] + off, ap));
          const __m256i a67 = Fold2(PairPartials(w[6] + off, ap), PairPartials(w[7] + off, ap));
          const __m256i b1 = Fold4(a45, a67);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(&dots[16 * pr]),
                              _mm256_permute2x128_si256(b0, b1, 0x20));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(&dots[16 * pr + 8]),
                              _mm256_permute2x128_si256(b0, b1, 0x31));
        }
        const uint8_t* nan = act_nan + i * slices;
        const int32_t* offset = act_offset + i * slices;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t kb = 0; kb < kblocks; ++kb) {
          const __m256 sa = _mm256_set1_ps(E8m0ToF32(p.a_scale[i * kblocks + kb]));
          for (int64_t q = 4 * kb; q < 4 * kb + 4; ++q) {
            const __m256i d =
                _mm256_sub_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(&dots[8 * q])),
                                 _mm256_set1_epi32(offset[q]));
            __m256 dot = _mm256_mul_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(0x1p-10f));
            if (nan[q]) dot = _mm256_set1_ps(CanonicalNan());
            acc = _mm256_add_ps(
                acc, _mm256_mul_ps(_mm256_mul_ps(dot, sa), _mm256_loadu_ps(&w_scale[8 * q])));
          }
        }
        alignas(16) bf16 out[8];
        _mm_store_si128(reinterpret_cast<__m128i*>(out), cpu::avx2::F32ToBf16x8(acc));
        for (int r = 0; r < kBlockRows && n0 + r < p.n; ++r) p.c[i * p.ldc + n0 + r] = out[r];
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
  const int64_t pairs = p.m * p.k / 64;
  // This thread's (grow once, then reused); threads below use them by reference.
  static thread_local std::vector<PreparedPair> act_storage;
  static thread_local std::vector<uint8_t> act_nan_storage;
  static thread_local std::vector<int32_t> act_offset_storage;
  std::vector<PreparedPair>& act = act_storage;
  std::vector<uint8_t>& act_nan = act_nan_storage;
  std::vector<int32_t>& act_offset = act_offset_storage;
  act.assign(size_t(pairs), PreparedPair{});
  act_nan.assign(size_t(2 * pairs), 0);
  act_offset.assign(size_t(2 * pairs), 0);
#pragma omp parallel for schedule(static) if (pairs >= 512)
  for (int64_t i = 0; i < pairs; ++i)
    PreparePair(p.a + 64 * i, &act[i], &act_nan[2 * i], &act_offset[2 * i]);
  GemmFp4Avx2(p, act.data(), act_nan.data(), act_offset.data());
}

}  // namespace flotilla::kernels
