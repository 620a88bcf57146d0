#include "kernels/cpu/gemm_dense.h"

#include <omp.h>

#include <algorithm>

#include "kernels/cpu/avx2_util.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/lane_order.h"
#include "kernels/ops.h"

namespace flotilla::kernels::cpu {
namespace {

constexpr int64_t kChunkK = 512;  // W tile chunk: 8 rows x 512 f32 = 16 KiB (L1)

// ------------------------------------------------------------------ scalar path

void DenseTileScalar(const DenseA& a, int64_t i0, int64_t i1, const DenseOperand& w, int64_t n0,
                     int64_t n1, float* out, int64_t ldo) {
  const DenseOperand& src = a.source();
  const int64_t k = a.k();
  for (int64_t i = i0; i < i1; ++i) {
    for (int64_t j = n0; j < n1; ++j) {
      float v;
      if (src.f32 && w.f32) {
        v = DotLanes(src.f32 + i * src.ld, w.f32 + j * w.ld, k);
      } else if (src.f32) {
        v = DotLanes(src.f32 + i * src.ld, w.b16 + j * w.ld, k);
      } else if (w.f32) {
        v = DotLanes(src.b16 + i * src.ld, w.f32 + j * w.ld, k);
      } else {
        v = DotLanes(src.b16 + i * src.ld, w.b16 + j * w.ld, k);
      }
      out[(i - i0) * ldo + (j - n0)] = v;
    }
  }
}

// ------------------------------------------------------------------ AVX2 path

FLOTILLA_AVX2 void ConvertRowBf16(const bf16* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, avx2::LoadBf16(src + i));
  for (; i < n; ++i) dst[i] = Bf16ToF32(src[i]);
}

// acc[r][c] += a_r . w_c over `steps` groups of 8 (natural lanes).
template <int MR, int NR>
FLOTILLA_AVX2_INLINE void MicroKernel(const float* const* a, const float* const* w, int64_t steps,
                                      float* const* acc) {
  __m256 s[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) s[r][c] = _mm256_loadu_ps(acc[r * NR + c]);
  for (int64_t t = 0; t < steps; ++t) {
    __m256 av[MR];
    for (int r = 0; r < MR; ++r) av[r] = _mm256_loadu_ps(a[r] + 8 * t);
    for (int c = 0; c < NR; ++c) {
      const __m256 wv = _mm256_loadu_ps(w[c] + 8 * t);
      for (int r = 0; r < MR; ++r) s[r][c] = _mm256_fmadd_ps(av[r], wv, s[r][c]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) _mm256_storeu_ps(acc[r * NR + c], s[r][c]);
}

// One or two A rows against W used straight from memory (bf16 rows are converted in registers;
// no f32 copy of W): memory bound. acc[r][c] is the lane-order accumulator of A row r and W row c,
// the same FMA sequence per lane as the chunked path, so the bits are the same. NR W rows advance
// together, each one FMA chain. `next` (may be null): the rows of the tile that comes next,
// prefetched into L2 in step with these (short bf16 rows are too short for the hardware prefetcher
// to ramp up; into L2 measured a little faster than into L1).
template <int MR, int NR, class W>
FLOTILLA_AVX2_INLINE void DirectKernel(const float* const* a, const W* const* w,
                                       const W* const* next, int64_t steps, __m256 (&s)[MR][NR]) {
  constexpr int kStepBytes = 8 * sizeof(W);
  int64_t t = 0;
  for (; t + 4 <= steps; t += 4) {  // 4 steps = 64 (bf16) or 128 (f32) bytes of each W row
    if (next) {
      for (int c = 0; c < NR; ++c) {
        const char* line = reinterpret_cast<const char*>(next[c] + 8 * t);
        for (int b = 0; b < 4 * kStepBytes; b += 64) _mm_prefetch(line + b, _MM_HINT_T1);
      }
    }
    for (int u = 0; u < 4; ++u) {
      __m256 av[MR];
      for (int r = 0; r < MR; ++r) av[r] = _mm256_loadu_ps(a[r] + 8 * (t + u));
      for (int c = 0; c < NR; ++c) {
        const __m256 wv = avx2::Load8<W>(w[c] + 8 * (t + u));
        for (int r = 0; r < MR; ++r) s[r][c] = _mm256_fmadd_ps(av[r], wv, s[r][c]);
      }
    }
  }
  for (; t < steps; ++t) {
    __m256 av[MR];
    for (int r = 0; r < MR; ++r) av[r] = _mm256_loadu_ps(a[r] + 8 * t);
    for (int c = 0; c < NR; ++c) {
      const __m256 wv = avx2::Load8<W>(w[c] + 8 * t);
      for (int r = 0; r < MR; ++r) s[r][c] = _mm256_fmadd_ps(av[r], wv, s[r][c]);
    }
  }
}

// W rows h .. h + NR - 1 of the tile into acc[.][h ..].
template <int MR, int NR, class W>
FLOTILLA_AVX2_INLINE void DirectPart(const float* const* a, const W* const* w, const W* const* next,
                                     int64_t steps, int h, __m256 (&acc)[MR][8]) {
  __m256 s[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) s[r][c] = _mm256_setzero_ps();
  DirectKernel<MR, NR, W>(a, w + h, next ? next + h : nullptr, steps, s);
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) acc[r][h + c] = s[r][c];
}

// Rows i0 .. i0 + MR - 1 of A (MR = 1 or 2) against W rows n0 .. n1 - 1 (n1 - n0 <= 8);
// next_n0 .. next_n1 - 1: the W rows to prefetch (none when equal).
template <int MR, class W>
FLOTILLA_AVX2 void DenseTileDirect(const DenseA& a, int64_t i0, const W* w_base, int64_t ldw,
                                   int64_t n0, int64_t n1, int64_t next_n0, int64_t next_n1,
                                   float* out, int64_t ldo) {
  const int64_t k = a.k();
  const int64_t k8 = k / 8 * 8;
  const int nt = static_cast<int>(n1 - n0);
  const W* wp[8];  // rows past n1 repeat the last row; their results are dropped
  const W* np[8];
  for (int c = 0; c < 8; ++c) {
    wp[c] = w_base + std::min(n0 + c, n1 - 1) * ldw;
    np[c] = w_base + std::min(next_n0 + c, next_n1 - 1) * ldw;
  }
  // f32 rows are prefetched by the hardware alone as fast (measured); bf16 rows are not.
  const W* const* next = sizeof(W) == 2 && next_n1 > next_n0 ? np : nullptr;
  const float* ap[MR];
  for (int r = 0; r < MR; ++r) ap[r] = a.Row(i0 + r);
  __m256 acc[MR][8];
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < 8; ++c) acc[r][c] = _mm256_setzero_ps();
  // Two rows (or a tile of at most 4) run in parts of 4 W rows, so that the accumulators stay in
  // registers and no W row is read twice.
  if (MR == 1 && nt > 4) {
    DirectPart<MR, 8, W>(ap, wp, next, k8 / 8, 0, acc);
  } else {
    for (int h = 0; h < nt; h += 4) DirectPart<MR, 4, W>(ap, wp, next, k8 / 8, h, acc);
  }
  if (k8 < k) {  // tail group: only lanes 0 .. k-k8-1 take a step
    const int rem = static_cast<int>(k - k8);
    const __m256 mask = _mm256_castsi256_ps(avx2::FirstLanesMask(rem));
    for (int c = 0; c < nt; ++c) {
      const __m256 wv = avx2::LoadPartial8(wp[c] + k8, rem);
      for (int r = 0; r < MR; ++r) {
        const __m256 av = avx2::LoadPartial8(ap[r] + k8, rem);
        acc[r][c] = _mm256_blendv_ps(acc[r][c], _mm256_fmadd_ps(av, wv, acc[r][c]), mask);
      }
    }
  }
  for (int r = 0; r < MR; ++r) {
    alignas(32) float res[8];
    _mm256_store_ps(res, avx2::CombineNatural8(acc[r]));
    std::copy(res, res + nt, out + r * ldo);
  }
}

// Rows i0 .. i0 + rows - 1 (rows = 1 or 2) of A against W rows n0 .. n1 - 1 (see DenseTileDirect).
void DenseRowsDirect(const DenseA& a, int64_t i0, int64_t rows, const DenseOperand& w, int64_t n0,
                     int64_t n1, int64_t next_n0, int64_t next_n1, float* out, int64_t ldo) {
  if (w.b16) {
    if (rows == 1) {
      DenseTileDirect<1>(a, i0, w.b16, w.ld, n0, n1, next_n0, next_n1, out, ldo);
    } else {
      DenseTileDirect<2>(a, i0, w.b16, w.ld, n0, n1, next_n0, next_n1, out, ldo);
    }
  } else {
    if (rows == 1) {
      DenseTileDirect<1>(a, i0, w.f32, w.ld, n0, n1, next_n0, next_n1, out, ldo);
    } else {
      DenseTileDirect<2>(a, i0, w.f32, w.ld, n0, n1, next_n0, next_n1, out, ldo);
    }
  }
}

struct TileScratch {
  std::vector<float> w;    // [8][kChunkK]
  std::vector<float> acc;  // [rows][8 W rows][8 lanes]
};

TileScratch& Scratch() {
  static thread_local TileScratch scratch;
  return scratch;
}

FLOTILLA_AVX2 void DenseTileAvx2(const DenseA& a, int64_t i0, int64_t i1, const DenseOperand& w,
                                 int64_t n0, int64_t n1, float* out, int64_t ldo) {
  const int64_t k = a.k();
  const int64_t k8 = k / 8 * 8;
  const int64_t rows = i1 - i0;
  const int nt = static_cast<int>(n1 - n0);
  if (rows <= 2) {
    DenseRowsDirect(a, i0, rows, w, n0, n1, n0, n0, out, ldo);
    return;
  }
  TileScratch& scratch = Scratch();
  if (w.b16 && scratch.w.size() < size_t(8 * kChunkK)) scratch.w.resize(8 * kChunkK);
  if (scratch.acc.size() < size_t(rows * 64)) scratch.acc.resize(rows * 64);
  float* acc = scratch.acc.data();
  std::fill(acc, acc + rows * 64, 0.0f);

  // Rows past n1 repeat the last row (valid memory); their results are dropped.
  int64_t wrow[8];
  for (int c = 0; c < 8; ++c) wrow[c] = n0 + std::min(c, nt - 1);

  for (int64_t c0 = 0; c0 < k8; c0 += kChunkK) {
    const int64_t len = std::min(kChunkK, k8 - c0);
    const float* wp[8];
    for (int c = 0; c < 8; ++c) {
      if (w.f32) {
        wp[c] = w.f32 + wrow[c] * w.ld + c0;
      } else if (c < nt) {
        ConvertRowBf16(w.b16 + wrow[c] * w.ld + c0, len, scratch.w.data() + c * kChunkK);
        wp[c] = scratch.w.data() + c * kChunkK;
      } else {
        wp[c] = wp[nt - 1];
      }
    }
    int64_t i = 0;
    for (; i + 2 <= rows; i += 2) {
      const float* ap[2] = {a.Row(i0 + i) + c0, a.Row(i0 + i + 1) + c0};
      for (int h = 0; h < 2; ++h) {
        float* t[8];
        for (int r = 0; r < 2; ++r)
          for (int c = 0; c < 4; ++c) t[r * 4 + c] = acc + ((i + r) * 8 + 4 * h + c) * 8;
        MicroKernel<2, 4>(ap, wp + 4 * h, len / 8, t);
      }
    }
    if (i < rows) {
      const float* ap[1] = {a.Row(i0 + i) + c0};
      float* t[8];
      for (int c = 0; c < 8; ++c) t[c] = acc + (i * 8 + c) * 8;
      MicroKernel<1, 8>(ap, wp, len / 8, t);
    }
  }

  if (k8 < k) {  // tail group: only lanes 0 .. k-k8-1 take a step
    const int r = static_cast<int>(k - k8);
    const __m256 mask = _mm256_castsi256_ps(avx2::FirstLanesMask(r));
    __m256 wv[8];
    for (int c = 0; c < 8; ++c) {
      wv[c] = w.f32 ? avx2::LoadPartial8(w.f32 + wrow[c] * w.ld + k8, r)
                    : avx2::LoadPartial8(w.b16 + wrow[c] * w.ld + k8, r);
    }
    for (int64_t i = 0; i < rows; ++i) {
      const __m256 av = avx2::LoadPartial8(a.Row(i0 + i) + k8, r);
      for (int c = 0; c < 8; ++c) {
        float* p = acc + (i * 8 + c) * 8;
        const __m256 s = _mm256_loadu_ps(p);
        _mm256_storeu_ps(p, _mm256_blendv_ps(s, _mm256_fmadd_ps(av, wv[c], s), mask));
      }
    }
  }

  for (int64_t i = 0; i < rows; ++i) {
    __m256 v[8];
    for (int c = 0; c < 8; ++c) v[c] = _mm256_loadu_ps(acc + (i * 8 + c) * 8);
    alignas(32) float res[8];
    _mm256_store_ps(res, avx2::CombineNatural8(v));
    std::copy(res, res + nt, out + i * ldo);
  }
}

}  // namespace

DenseA::DenseA(const DenseOperand& a, int64_t m, int64_t k)
    : source_(a), avx2_(UseAvx2()), m_(m), k_(k) {
  if (!avx2_) return;
  if (a.f32) {
    base_ = a.f32;
    ld_ = a.ld;
    return;
  }
  ld_ = (k + 7) / 8 * 8;
  static thread_local std::vector<float> storage;  // grows once per thread, then reused
  packed_ = &storage;
  packed_->assign(size_t(m * ld_), 0.0f);
  float* packed = packed_->data();
#pragma omp parallel for schedule(static) if (m * k >= (1 << 18))
  for (int64_t i = 0; i < m; ++i) ConvertRowBf16(a.b16 + i * a.ld, k, packed + i * ld_);
  base_ = packed;
}

void DenseTile(const DenseA& a, int64_t i0, int64_t i1, const DenseOperand& w, int64_t n0,
               int64_t n1, float* out, int64_t ldo) {
  if (i1 <= i0 || n1 <= n0) return;
  if (a.avx2()) {
    DenseTileAvx2(a, i0, i1, w, n0, n1, out, ldo);
  } else {
    DenseTileScalar(a, i0, i1, w, n0, n1, out, ldo);
  }
}

void DenseGemm(const DenseOperand& a, int64_t m, const DenseOperand& w, int64_t n, int64_t k,
               float* c, bf16* c_bf16, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  const DenseA prepared(a, m, k);
  const int64_t n_tiles = (n + kDenseTileN - 1) / kDenseTileN;
  // Split rows only when W tiles alone cannot feed the threads.
  const int64_t threads = omp_get_max_threads();
  const int64_t m_chunk =
      n_tiles >= 4 * threads ? std::max<int64_t>(m, 1) : std::max<int64_t>(8, (m + 3) / 4);
  const int64_t m_chunks = (m + m_chunk - 1) / m_chunk;
  const int64_t items = n_tiles * m_chunks;
  const bool parallel = items > 1 && m * n * k >= (1 << 16);
  if (prepared.avx2() && m <= 2) {
    // One or two rows (decode): W streams once from memory; each tile prefetches the next. Few
    // tiles are split in half so that the threads share them evenly.
    const int64_t tile_n = n_tiles >= 4 * threads || threads == 1 ? kDenseTileN : kDenseTileN / 2;
    const int64_t tiles = (n + tile_n - 1) / tile_n;
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t n0 = tile * tile_n, n1 = std::min(n, n0 + tile_n);
      const int64_t n2 = std::min(n, n1 + tile_n);
      float tmp[2 * kDenseTileN];
      float* out = c_bf16 ? tmp : c + n0;
      const int64_t ldo = c_bf16 ? kDenseTileN : ldc;
      DenseRowsDirect(prepared, 0, m, w, n0, n1, n1, n2, out, ldo);
      if (c_bf16 == nullptr) continue;
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = n0; j < n1; ++j)
          c_bf16[i * ldc + j] = F32ToBf16(tmp[i * kDenseTileN + j - n0]);
      }
    }
    return;
  }
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t tile = item % n_tiles, mc = item / n_tiles;
    const int64_t n0 = tile * kDenseTileN, n1 = std::min(n, n0 + kDenseTileN);
    const int64_t i0 = mc * m_chunk, i1 = std::min(m, i0 + m_chunk);
    if (c_bf16 == nullptr) {
      DenseTile(prepared, i0, i1, w, n0, n1, c + i0 * ldc + n0, ldc);
      continue;
    }
    static thread_local std::vector<float> tmp;
    tmp.resize((i1 - i0) * kDenseTileN);
    DenseTile(prepared, i0, i1, w, n0, n1, tmp.data(), kDenseTileN);
    for (int64_t i = i0; i < i1; ++i) {
      for (int64_t j = n0; j < n1; ++j) {
        c_bf16[i * ldc + j] = F32ToBf16(tmp[(i - i0) * kDenseTileN + (j - n0)]);
      }
    }
  }
}

}  // namespace flotilla::kernels::cpu

namespace flotilla::kernels {

void GemmBf16(const GemmBf16Params& p) {
  const cpu::DenseOperand a{nullptr, p.a, p.lda};
  const cpu::DenseOperand w{nullptr, p.w, p.ldw};
  cpu::DenseGemm(a, p.m, w, p.n, p.k, p.c_f32, p.c_f32 ? nullptr : p.c, p.ldc);
}

void GemmF32(const GemmF32Params& p) {
  const cpu::DenseOperand a{p.a, p.a_bf16, p.lda};
  const cpu::DenseOperand w{p.w, p.w_bf16, p.ldw};
  cpu::DenseGemm(a, p.m, w, p.n, p.k, p.c, nullptr, p.ldc);
}

}  // namespace flotilla::kernels
