// Small device ops of the attention (attention_ops.h).
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/cuda/attention_ops.h"
#include "kernels/cuda/indexer.h"
#include "kernels/cuda/kv_paging.h"

namespace flotilla::kernels::cuda {
namespace {

__device__ __forceinline__ void Record(DeviceError* error, int32_t code, int64_t position,
                                       int64_t value, int64_t limit) {
  if (atomicCAS(&error->code, 0, code) == 0) {
    error->position = position;
    error->value = value;
    error->limit = limit;
  }
}

__global__ void __launch_bounds__(kAttentionOpThreads)
    EntryPositionsKernel(int64_t* entry_pos, int64_t entries, int64_t first, int64_t ratio) {
  for (int64_t e = int64_t(blockIdx.x) * kAttentionOpThreads + threadIdx.x; e < entries;
       e += int64_t(gridDim.x) * kAttentionOpThreads) {
    entry_pos[e] = (first + e) * ratio;
  }
}

// One block: clear, mark, then an ordered compaction (each thread a contiguous range of the
// visible entries; a scan of the per-thread counts gives each its first slot).
__global__ void __launch_bounds__(kPickedEntriesThreads)
    PickedEntriesKernel(PickedEntriesParams p) {
  __shared__ int32_t counts[kPickedEntriesThreads];
  const int t = threadIdx.x;
  for (int64_t j = t; j < p.visible; j += kPickedEntriesThreads) p.entry_slot[j] = -1;
  __syncthreads();
  for (int64_t i = t; i < p.rows * p.top_k; i += kPickedEntriesThreads) {
    const int64_t r = i / p.top_k;
    const int64_t have = p.num_picks[r];
    if (have < 0 || have > p.top_k) {
      if (i % p.top_k == 0) Record(p.error, kDeviceErrorPickCount, r, have, p.top_k + 1);
      continue;
    }
    if (i % p.top_k >= have) continue;
    const int64_t j = p.picks[i];
    if (j < 0 || j >= p.visible) {
      Record(p.error, kDeviceErrorPickIndex, i, j, p.visible);
      continue;
    }
    p.entry_slot[j] = 0;
  }
  __syncthreads();
  const int64_t per = (p.visible + kPickedEntriesThreads - 1) / kPickedEntriesThreads;
  const int64_t j0 = t * per < p.visible ? t * per : p.visible;
  const int64_t j1 = j0 + per < p.visible ? j0 + per : p.visible;
  int32_t mine = 0;
  for (int64_t j = j0; j < j1; ++j) mine += p.entry_slot[j] == 0;
  counts[t] = mine;
  __syncthreads();
  for (int stride = 1; stride < kPickedEntriesThreads; stride *= 2) {  // inclusive scan
    const int32_t add = t >= stride ? counts[t - stride] : 0;
    __syncthreads();
    counts[t] += add;
    __syncthreads();
  }
  int32_t next = counts[t] - mine;
  const int32_t total = counts[kPickedEntriesThreads - 1];
  for (int64_t j = j0; j < j1; ++j) {
    if (p.entry_slot[j] != 0) continue;
    if (next >= p.max_entries) {
      p.entry_slot[j] = -1;
      continue;
    }
    p.entry_slot[j] = next;
    p.entry_idx[next++] = int32_t(j);
  }
  if (t == 0) {
    if (total > p.max_entries) Record(p.error, kDeviceErrorPickCount, -1, total, p.max_entries + 1);
    *p.count = int32_t(total < p.max_entries ? total : p.max_entries);
  }
}

// A block per row; threads over its elements.
__global__ void __launch_bounds__(kAttentionOpThreads) KvUnpackPagedKernel(KvUnpackPagedParams p) {
  const int64_t n = *p.count;
  if (n < 0 || n > p.max_rows) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
      Record(p.error, kDeviceErrorPagedCount, 0, n, p.max_rows + 1);
    }
    return;
  }
  const int64_t dim = p.nope + p.rope;
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int64_t u = p.units[i];
    const int64_t page = u / p.per_page;
    const int64_t id = u >= 0 && page < p.table_pages ? p.page_ids[page] : -1;
    if (id < 0 || id >= p.pool_pages) {
      if (threadIdx.x == 0) {
        Record(p.error, kDeviceErrorPagedUnit, i, u, p.table_pages * p.per_page);
      }
      continue;
    }
    const uint8_t* e = p.pool + id * p.page_bytes + (u % p.per_page) * p.entry_bytes;
    for (int64_t c = threadIdx.x; c < dim; c += kAttentionOpThreads) {
      p.x[i * p.ldx + c] = KvEntryValue(e, c, p.nope, p.rope);
    }
  }
}

// IndexerTopK: a block per row (attention_ops.h).
__global__ void __launch_bounds__(kIndexerTopKThreads) IndexerTopKKernel(IndexerTopKParams p) {
  extern __shared__ float smem[];
  const int64_t r = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t b0 = p.first_key;
  const int64_t e1 = min((p.start_pos + r + 1) / p.ratio, b0 + p.n_keys);
  if (e1 <= b0) return;
  const int64_t have = p.num_picks[r], count = e1 - b0, n = have + count;
  if (have < 0 || have > p.top_k) {
    if (tid == 0) Record(p.error, kDeviceErrorTopKCount, r, have, p.top_k + 1);
    return;
  }
  const int64_t hd = p.num_heads * p.dim;
  float* q = smem;                  // [num_heads * dim]
  float* w = q + hd;                // [num_heads]
  float* scores = w + p.num_heads;  // [n_keys]
  const int64_t words = (hd + p.num_heads + p.n_keys + 1) / 2 * 2;
  unsigned long long* keys = reinterpret_cast<unsigned long long*>(smem + words);
  int size = 1;
  while (size < p.top_k) size <<= 1;
  float* kept = reinterpret_cast<float*>(keys + size);  // the winners' scores
  __shared__ unsigned hist[256];
  __shared__ unsigned long long prefix, mask;
  __shared__ long long remaining;
  __shared__ unsigned taken;

  const bf16* qr = p.q + r * hd;
  for (int64_t i = tid; i < hd; i += kIndexerTopKThreads) q[i] = Bf16ToF32(qr[i]);
  for (int64_t h = tid; h < p.num_heads; h += kIndexerTopKThreads) {
    w[h] = RoundBf16(__fmul_rn(Bf16ToF32(p.w[r * p.num_heads + h]), p.w_scale));
  }
  __syncthreads();
  // The block's keys this row sees, scored as IndexerScoresKernel scores them, rounded to bf16.
  for (int64_t j = tid; j < count; j += kIndexerTopKThreads) {
    const bf16* key = p.keys + j * p.dim;
    float acc = 0.0f;
    for (int64_t h = 0; h < p.num_heads; ++h) {
      const float* qh = q + h * p.dim;
      float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t k0 = 0;
      for (; k0 + 8 <= p.dim; k0 += 8) {
#pragma unroll
        for (int l = 0; l < 8; ++l) s[l] = __fmaf_rn(qh[k0 + l], Bf16ToF32(key[k0 + l]), s[l]);
      }
#pragma unroll
      for (int l = 0; l < 8; ++l) {
        if (k0 + l < p.dim) s[l] = __fmaf_rn(qh[k0 + l], Bf16ToF32(key[k0 + l]), s[l]);
      }
      const float dot = __fadd_rn(__fadd_rn(__fadd_rn(s[0], s[4]), __fadd_rn(s[2], s[6])),
                                  __fadd_rn(__fadd_rn(s[1], s[5]), __fadd_rn(s[3], s[7])));
      const float d = RoundBf16(dot);
      const float relu = d > 0.0f ? d : 0.0f;
      acc = __fadd_rn(acc, RoundBf16(__fmul_rn(relu, w[h])));
    }
    scores[j] = RoundBf16(acc);
  }
  int32_t* row_picks = p.picks + r * p.top_k;
  float* row_scores = p.pick_scores + r * p.top_k;
  const int64_t k = min(p.top_k, n);
  if (tid == 0) {
    prefix = 0;
    mask = 0;
    remaining = k;
    taken = 0;
  }
  __syncthreads();
  // Candidate i: a pick so far (i < have) or block key i - have; its key orders it.
#define FLOTILLA_CANDIDATE(i, score, index)                          \
  const float score = (i) < have ? row_scores[i] : scores[(i)-have]; \
  const uint32_t index = uint32_t((i) < have ? row_picks[i] : b0 + (i)-have)
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int d = tid; d < 256; d += kIndexerTopKThreads) hist[d] = 0;
    __syncthreads();
    const unsigned long long pre = prefix, msk = mask;
    for (int64_t i = tid; i < n; i += kIndexerTopKThreads) {
      FLOTILLA_CANDIDATE(i, score, index);
      const unsigned long long key = TopKKey(score, index);
      if ((key & msk) == pre) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (tid == 0) {
      long long above = 0;
      for (int d = 255; d >= 0; --d) {
        if (above + hist[d] >= remaining) {
          remaining -= above;
          prefix |= (unsigned long long)d << shift;
          mask |= 255ull << shift;
          break;
        }
        above += hist[d];
      }
    }
    __syncthreads();
  }
  const unsigned long long kth = prefix;
  for (int64_t i = tid; i < n; i += kIndexerTopKThreads) {
    FLOTILLA_CANDIDATE(i, score, index);
    const unsigned long long key = TopKKey(score, index);
    if (key >= kth) {
      const unsigned slot = atomicAdd(&taken, 1u);  // exactly k of them
      keys[slot] = key;
      kept[slot] = score;
    }
  }
#undef FLOTILLA_CANDIDATE
  __syncthreads();
  for (int i = int(k) + tid; i < size; i += kIndexerTopKThreads) keys[i] = 0;
  // Bitonic sort, descending, the scores moving with their keys.
  for (int block = 2; block <= size; block <<= 1) {
    for (int stride = block / 2; stride > 0; stride >>= 1) {
      __syncthreads();
      for (int i = tid; i < size; i += kIndexerTopKThreads) {
        const int j = i ^ stride;
        if (j <= i) continue;
        const bool descending = (i & block) == 0;
        const unsigned long long a = keys[i], b = keys[j];
        if (descending ? a < b : a > b) {
          keys[i] = b;
          keys[j] = a;
          const float t = kept[i];
          kept[i] = kept[j];
          kept[j] = t;
        }
      }
    }
  }
  __syncthreads();
  for (int i = tid; i < k; i += kIndexerTopKThreads) {
    row_picks[i] = int32_t(~uint32_t(keys[i]));
    row_scores[i] = kept[i];
  }
  if (tid == 0) p.num_picks[r] = int32_t(k);
}

int64_t Blocks(int64_t n) {
  return std::min<int64_t>(
      std::max<int64_t>((n + kAttentionOpThreads - 1) / kAttentionOpThreads, 1), 65536);
}

}  // namespace

int LaunchEntryPositions(int64_t* entry_pos, int64_t entries, int64_t start_pos, int64_t ratio,
                         CUstream_st* stream) {
  if (entries <= 0) return 0;
  EntryPositionsKernel<<<unsigned(Blocks(entries)), kAttentionOpThreads, 0, stream>>>(
      entry_pos, entries, start_pos / ratio, ratio);
  return int(cudaGetLastError());
}

int LaunchPickedEntries(const PickedEntriesParams& p, CUstream_st* stream) {
  PickedEntriesKernel<<<1, kPickedEntriesThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

int LaunchIndexerTopK(const IndexerTopKParams& p, CUstream_st* stream) {
  if (p.rows == 0 || p.n_keys == 0) return 0;
  const size_t smem = IndexerTopKSharedBytes(p);
  const cudaError_t e = cudaFuncSetAttribute(
      IndexerTopKKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return int(e);
  IndexerTopKKernel<<<unsigned(p.rows), kIndexerTopKThreads, smem, stream>>>(p);
  return int(cudaGetLastError());
}

int LaunchKvUnpackPaged(const KvUnpackPagedParams& p, CUstream_st* stream) {
  if (p.max_rows <= 0) return 0;
  KvUnpackPagedKernel<<<unsigned(KvUnpackPagedBlocks(p)), kAttentionOpThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace flotilla::kernels::cuda
