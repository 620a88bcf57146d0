// Sparse attention over the packed FP8 KV pages (sparse_attention.h). mma.sync m16n8k16 bf16 with
// f32 accumulation, fragment layouts of the PTX ISA ("Matrix Fragments for mma.m16n8k16",
// floating-point types):
//   lane = 4 * group + tig;
//   A (16x16, row): a0 = row group, k 2tig..2tig+1; a1 = row group+8, same k;
//                   a2 = row group, k 2tig+8..+9;   a3 = row group+8, k 2tig+8..+9
//   B (16x8, col):  b0 = k 2tig..2tig+1, column group; b1 = k 2tig+8..+9, column group
//   C (16x8 f32):   c0, c1 = row group, columns 2tig, 2tig+1; c2, c3 = row group+8
// (each 32-bit register holds two bf16, the lower k in the low half).
//
// Chunk kernel, one block of 16 warps per (token, chunk); per block of 64 list entries:
//   1. every thread dequantises 8-element pieces of the entries into shared memory (bf16, the
//      exact values UnpackKvEntries gives; empty slots as zeros);
//   2. S = q·kᵀ: warp w takes n tile w % 8 (8 entries) and m tiles w / 8, w / 8 + 2 (16 heads
//      each), the whole dim as k; s = acc * scale, -inf for empty slots;
//   3. thread h (< num_heads) runs head h's online-softmax step in list order;
//   4. P·V: warp w owns dim / 16 output columns for every head, k = the 64 entries; the block's
//      sum is formed from zero, then O = O·α + blk (rounded products, no contraction).
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/kv_paging.h"
#include "kernels/cuda/sparse_attention.h"

namespace flotilla::kernels::cuda {
namespace {

constexpr int kWarps = kSparseAttentionThreads / 32;
constexpr int kBlock = int(kSparseAttentionBlock);
constexpr int kScoreStride = kBlock + 4;  // f32
constexpr int kProbStride = kBlock + 8;   // bf16
constexpr int kLoadBatch = 4;             // entry pieces a thread loads before converting

__device__ __forceinline__ void MmaBf16(const uint32_t (&a)[4], const uint32_t (&b)[2],
                                        float (&c)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ uint32_t Load32(const bf16* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

struct Smem {
  bf16* q;          // [rows][stride]
  bf16* kv;         // [64][stride]
  float* score;     // [rows][kScoreStride]
  bf16* prob;       // [rows][kProbStride]
  float* alpha;     // [rows]
  int64_t* offset;  // [64] pool byte offset of each entry, -1 empty
};

__device__ Smem CarveSmem(char* base, int rows, int stride) {
  Smem s;
  s.q = reinterpret_cast<bf16*>(base);
  s.kv = s.q + rows * stride;
  s.score = reinterpret_cast<float*>(s.kv + kBlock * stride);
  s.prob = reinterpret_cast<bf16*>(s.score + rows * kScoreStride);
  s.alpha = reinterpret_cast<float*>(s.prob + rows * kProbStride);
  s.offset = reinterpret_cast<int64_t*>(s.alpha + rows);
  return s;
}

// 8 consecutive elements [c, c + 8) of an entry (c % 8 == 0; never straddling nope / rope or a
// scale group): the raw bytes (8 FP8 codes in x, y and their group's scale, or 8 bf16 RoPE
// values), loaded first so that a thread has several loads in flight, then converted.
struct RawPiece {
  uint4 bits;
  uint32_t scale;  // 0x100: RoPE piece (bf16 as stored); 0x200: empty slot (zeros)
};

__device__ __forceinline__ RawPiece LoadPiece(const uint8_t* pool, int64_t off, int c, int nope,
                                              int rope) {
  RawPiece r;
  if (off < 0) {
    r.bits = make_uint4(0, 0, 0, 0);
    r.scale = 0x200;
    return r;
  }
  const uint8_t* e = pool + off;
  if (c < nope) {
    const uint2 codes = *reinterpret_cast<const uint2*>(e + c);
    r.bits = make_uint4(codes.x, codes.y, 0, 0);
    r.scale = e[nope + 2 * rope + c / 64];
  } else {
    const uint8_t* v = e + nope + 2 * (c - nope);
    const uint2 lo = *reinterpret_cast<const uint2*>(v);
    const uint2 hi = *reinterpret_cast<const uint2*>(v + 8);
    r.bits = make_uint4(lo.x, lo.y, hi.x, hi.y);
    r.scale = 0x100;
  }
  return r;
}

// The piece as 8 bf16 into dst: KvEntryValue's arithmetic (UnpackKvEntries' values).
__device__ __forceinline__ void StorePiece(const RawPiece& r, bf16* dst) {
  uint4 out = r.bits;  // RoPE values and empty slots as they are
  if (r.scale < 0x100) {
    const uint32_t w[2] = {r.bits.x, r.bits.y};
    uint32_t o[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t word = w[i / 2] >> (16 * (i % 2));
      bf16 lo, hi;
      if (r.scale == 0xff) {
        lo = hi = kKvNanBf16;
      } else {
        const float sf = E8m0ToF32(e8m0(r.scale));
        lo = F32ToBf16(Fp8ToF32(fp8(word & 0xff)) * sf);
        hi = F32ToBf16(Fp8ToF32(fp8((word >> 8) & 0xff)) * sf);
      }
      o[i] = uint32_t(lo) | uint32_t(hi) << 16;
    }
    out = make_uint4(o[0], o[1], o[2], o[3]);
  }
  *reinterpret_cast<uint4*>(dst) = out;
}

template <int kMTiles>
__global__ void __launch_bounds__(kSparseAttentionThreads)
    SparseAttentionChunkKernel(SparseAttentionParams p, float* partial) {
  extern __shared__ __align__(16) char smem_raw[];
  constexpr int rows = 16 * kMTiles;
  const int dim = int(p.nope + p.rope), stride = dim + 8;
  const int nope = int(p.nope), rope = int(p.rope);
  const Smem sm = CarveSmem(smem_raw, rows, stride);
  const int64_t token = blockIdx.x, chunk = blockIdx.y;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int group = lane >> 2, tig = lane & 3;
  const int heads = int(p.num_heads);
  const int64_t chunks = gridDim.y;

  // q of this token, heads past num_heads as zeros.
  const bf16* q = p.q + token * p.ldq;
  for (int i = tid; i < rows * (dim / 2); i += kSparseAttentionThreads) {
    const int h = i / (dim / 2), c = 2 * (i % (dim / 2));
    *reinterpret_cast<uint32_t*>(sm.q + h * stride + c) =
        h < heads ? Load32(q + int64_t(h) * dim + c) : 0u;
  }

  KvListTables tables;
  tables.window_ids = p.page_ids + p.window_begin[token];
  tables.compressed_ids = p.page_ids + p.compressed_begin[token];
  tables.window_entries = p.window_entries;
  tables.entries_per_page = p.entries_per_page;
  tables.page_bytes = p.page_bytes;
  tables.entry_bytes = p.entry_bytes;
  const int32_t* idx = p.idx + token * p.list_len;

  // Head `tid`'s running max and sum (threads < heads).
  float m_run = -__int_as_float(0x7f800000), l_run = 0.0f;
  // This warp's output columns: n tiles of 8 starting at col0.
  const int cols = dim / kWarps, col0 = warp * cols, ntiles = cols / 8;
  float o[kMTiles][4][4];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) o[mt][nt][i] = 0.0f;

  const int64_t begin = chunk * kSparseAttentionChunk;
  const int64_t end =
      begin + kSparseAttentionChunk < p.list_len ? begin + kSparseAttentionChunk : p.list_len;
  for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
    const int count = int(end - b0 < kBlock ? end - b0 : kBlock);
    __syncthreads();  // the previous block's P·V is done with kv and prob
    if (tid < kBlock) sm.offset[tid] = tid < count ? KvListEntryOffset(tables, idx[b0 + tid]) : -1;
    __syncthreads();
    // 1. Dequantise the block's entries, kLoadBatch pieces per thread at a time.
    const int pieces = dim / 8, total = kBlock * pieces;
    for (int i0 = tid; i0 < total; i0 += kLoadBatch * kSparseAttentionThreads) {
      RawPiece raw[kLoadBatch];
#pragma unroll
      for (int j = 0; j < kLoadBatch; ++j) {
        const int i = i0 + j * kSparseAttentionThreads;
        const int e = i / pieces, c = 8 * (i % pieces);
        raw[j] = LoadPiece(p.pool, i < total ? sm.offset[e] : -1, c, nope, rope);
      }
#pragma unroll
      for (int j = 0; j < kLoadBatch; ++j) {
        const int i = i0 + j * kSparseAttentionThreads;
        if (i < total) StorePiece(raw[j], sm.kv + (i / pieces) * stride + 8 * (i % pieces));
      }
    }
    __syncthreads();
    // 2. Scores.
    {
      const int nt = warp % 8;
      for (int mt = warp / 8; mt < kMTiles; mt += kWarps / 8) {
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        const bf16* qa = sm.q + (mt * 16 + group) * stride + 2 * tig;
        const bf16* kb = sm.kv + (nt * 8 + group) * stride + 2 * tig;
        for (int k0 = 0; k0 < dim; k0 += 16) {
          const uint32_t a[4] = {Load32(qa + k0), Load32(qa + 8 * stride + k0), Load32(qa + k0 + 8),
                                 Load32(qa + 8 * stride + k0 + 8)};
          const uint32_t b[2] = {Load32(kb + k0), Load32(kb + k0 + 8)};
          MmaBf16(a, b, acc);
        }
        const int e0 = nt * 8 + 2 * tig;
        const float neg_inf = -__int_as_float(0x7f800000);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int e = e0 + (i & 1), r = mt * 16 + group + 8 * (i >> 1);
          sm.score[r * kScoreStride + e] = sm.offset[e] < 0 ? neg_inf : __fmul_rn(acc[i], p.scale);
        }
      }
    }
    __syncthreads();
    // 3. Online softmax, one thread per head, list order.
    if (tid < rows) {
      const float* s = sm.score + tid * kScoreStride;
      bf16* pr = sm.prob + tid * kProbStride;
      if (tid < heads) {
        float block_max = -__int_as_float(0x7f800000);
        for (int i = 0; i < count; ++i) block_max = fmaxf(block_max, s[i]);
        const float m_new = fmaxf(m_run, block_max);
        float alpha = 1.0f, sum = 0.0f;
        if (m_new != -__int_as_float(0x7f800000)) {  // else: nothing seen yet, p = 0
          alpha = expf(m_run - m_new);
          for (int i = 0; i < count; ++i) {
            const float pi = expf(s[i] - m_new);
            sum = __fadd_rn(sum, pi);
            pr[i] = F32ToBf16(pi);
          }
        } else {
          for (int i = 0; i < count; ++i) pr[i] = 0;
        }
        for (int i = count; i < kBlock; ++i) pr[i] = 0;
        l_run = __fadd_rn(__fmul_rn(l_run, alpha), sum);
        m_run = m_new;
        sm.alpha[tid] = alpha;
      } else {
        for (int i = 0; i < kBlock; ++i) pr[i] = 0;
        sm.alpha[tid] = 1.0f;
      }
    }
    __syncthreads();
    // 4. O = O·α + P·V.
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
      const bf16* pa = sm.prob + (mt * 16 + group) * kProbStride + 2 * tig;
      uint32_t a[4][4];
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) {
        const int k0 = ks * 16;
        a[ks][0] = Load32(pa + k0);
        a[ks][1] = Load32(pa + 8 * kProbStride + k0);
        a[ks][2] = Load32(pa + k0 + 8);
        a[ks][3] = Load32(pa + 8 * kProbStride + k0 + 8);
      }
      const float alpha0 = sm.alpha[mt * 16 + group], alpha1 = sm.alpha[mt * 16 + group + 8];
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        if (nt >= ntiles) break;
        const int col = col0 + nt * 8 + group;
        float blk[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) {
          const bf16* v = sm.kv + (ks * 16 + 2 * tig) * stride + col;
          const uint32_t b[2] = {uint32_t(v[0]) | uint32_t(v[stride]) << 16,
                                 uint32_t(v[8 * stride]) | uint32_t(v[9 * stride]) << 16};
          MmaBf16(a[ks], b, blk);
        }
        float* c = o[mt][nt];
        c[0] = __fadd_rn(__fmul_rn(c[0], alpha0), blk[0]);
        c[1] = __fadd_rn(__fmul_rn(c[1], alpha0), blk[1]);
        c[2] = __fadd_rn(__fmul_rn(c[2], alpha1), blk[2]);
        c[3] = __fadd_rn(__fmul_rn(c[3], alpha1), blk[3]);
      }
    }
  }

  // Partials: O [heads][dim], then M and L [heads], per (token, chunk).
  float* out = partial + (token * chunks + chunk) * int64_t(heads) * (dim + 2);
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      if (nt >= ntiles) break;
      const int col = col0 + nt * 8 + 2 * tig;
      const int r0 = mt * 16 + group, r1 = r0 + 8;
      if (r0 < heads) {
        out[r0 * dim + col] = o[mt][nt][0];
        out[r0 * dim + col + 1] = o[mt][nt][1];
      }
      if (r1 < heads) {
        out[r1 * dim + col] = o[mt][nt][2];
        out[r1 * dim + col + 1] = o[mt][nt][3];
      }
    }
  }
  if (tid < heads) {
    out[int64_t(heads) * dim + tid] = m_run;
    out[int64_t(heads) * dim + heads + tid] = l_run;
  }
}

// One block per token: merges the chunks of every head, adds the sink, writes bf16.
__global__ void __launch_bounds__(256)
    SparseAttentionMergeKernel(SparseAttentionParams p, const float* partial, int64_t chunks) {
  const int64_t token = blockIdx.x;
  const int heads = int(p.num_heads), dim = int(p.nope + p.rope);
  const int64_t per_chunk = int64_t(heads) * (dim + 2);
  const float* base = partial + token * chunks * per_chunk;
  bf16* out = p.out + token * p.ldo;
  for (int i = threadIdx.x; i < heads * dim; i += blockDim.x) {
    const int h = i / dim, c = i % dim;
    float m = -__int_as_float(0x7f800000);
    for (int64_t ch = 0; ch < chunks; ++ch) m = fmaxf(m, base[ch * per_chunk + heads * dim + h]);
    float l = 0.0f, o = 0.0f;
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const float* part = base + ch * per_chunk;
      const float mc = part[heads * dim + h];
      if (mc == -__int_as_float(0x7f800000)) continue;  // a chunk of empty slots only
      const float w = expf(mc - m);
      l = __fadd_rn(l, __fmul_rn(part[heads * dim + heads + h], w));
      o = __fadd_rn(o, __fmul_rn(part[h * dim + c], w));
    }
    l = __fadd_rn(l, expf(p.sink[h] - m));
    out[h * dim + c] = F32ToBf16(__fdiv_rn(o, l));
  }
}

template <int kMTiles>
int LaunchChunks(const SparseAttentionParams& p, float* partial, CUstream_st* stream) {
  const size_t smem = SparseAttentionSharedBytes(p.num_heads, p.nope + p.rope);
  cudaError_t e = cudaFuncSetAttribute(SparseAttentionChunkKernel<kMTiles>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return int(e);
  const dim3 grid(uint32_t(p.tokens), uint32_t(SparseAttentionChunks(p.list_len)));
  SparseAttentionChunkKernel<kMTiles><<<grid, kSparseAttentionThreads, smem, stream>>>(p, partial);
  return int(cudaGetLastError());
}

}  // namespace

int LaunchSparseAttention(const SparseAttentionParams& p, void* workspace, CUstream_st* stream) {
  if (p.tokens == 0) return 0;
  float* partial = static_cast<float*>(workspace);
  const int m_tiles = int((p.num_heads + 15) / 16);
  int e = 0;
  switch (m_tiles) {
    case 1:
      e = LaunchChunks<1>(p, partial, stream);
      break;
    case 2:
      e = LaunchChunks<2>(p, partial, stream);
      break;
    case 3:
      e = LaunchChunks<3>(p, partial, stream);
      break;
    default:
      e = LaunchChunks<4>(p, partial, stream);
      break;
  }
  if (e != 0) return e;
  SparseAttentionMergeKernel<<<dim3(uint32_t(p.tokens)), 256, 0, stream>>>(
      p, partial, SparseAttentionChunks(p.list_len));
  return int(cudaGetLastError());
}

}  // namespace flotilla::kernels::cuda
