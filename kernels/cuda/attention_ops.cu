// Small device ops of the attention (attention_ops.h).
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/cuda/attention_ops.h"
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

__global__ void __launch_bounds__(kAttentionOpThreads)
    RoundToBf16Kernel(const float* x, int64_t n, bf16* y) {
  for (int64_t i = int64_t(blockIdx.x) * kAttentionOpThreads + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kAttentionOpThreads) {
    y[i] = F32ToBf16(x[i]);
  }
}

// One block: clear, mark, then an ordered compaction (each thread a contiguous range of the
// visible entries; a scan of the per-thread counts gives each its first slot).
__global__ void __launch_bounds__(kPickedEntriesThreads) PickedEntriesKernel(PickedEntriesParams p) {
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

int64_t Blocks(int64_t n) {
  return std::min<int64_t>(std::max<int64_t>((n + kAttentionOpThreads - 1) / kAttentionOpThreads, 1),
                           65536);
}

}  // namespace

int LaunchEntryPositions(int64_t* entry_pos, int64_t entries, int64_t start_pos, int64_t ratio,
                         CUstream_st* stream) {
  if (entries <= 0) return 0;
  EntryPositionsKernel<<<unsigned(Blocks(entries)), kAttentionOpThreads, 0, stream>>>(
      entry_pos, entries, start_pos / ratio, ratio);
  return int(cudaGetLastError());
}

int LaunchRoundToBf16(const float* x, int64_t n, bf16* y, CUstream_st* stream) {
  if (n <= 0) return 0;
  RoundToBf16Kernel<<<unsigned(Blocks(n)), kAttentionOpThreads, 0, stream>>>(x, n, y);
  return int(cudaGetLastError());
}

int LaunchPickedEntries(const PickedEntriesParams& p, CUstream_st* stream) {
  PickedEntriesKernel<<<1, kPickedEntriesThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

int LaunchKvUnpackPaged(const KvUnpackPagedParams& p, CUstream_st* stream) {
  if (p.max_rows <= 0) return 0;
  KvUnpackPagedKernel<<<unsigned(KvUnpackPagedBlocks(p)), kAttentionOpThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace flotilla::kernels::cuda
