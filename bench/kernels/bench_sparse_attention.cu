// Sparse attention decode over the packed FP8 KV pages (kernels/cuda/sparse_attention.h) at
// V4-Flash shapes and contexts of 64k to 1M tokens, against the device's measured read
// bandwidth: one decode token per sequence, 1 or 32 sequences, 64 heads (one rank holding all
// of them) or 16 (tensor parallel 4). A CSA layer reads the 128 window rows and its top-512
// compressed entries whatever the context; an HCA layer (m = 128) reads the window and every
// compressed entry, context / 128 of them. Figure: KV entry bytes read (each selected entry once)
// plus q and out, per second.
//   bench_sparse_attention
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "bench/kernels/bench_util.cuh"
#include "kernels/cuda/sparse_attention.h"

namespace {

using flotilla::bf16;
using flotilla::bench::TimeMs;
namespace fk = flotilla::kernels::cuda;

constexpr int64_t kPageBytes = 65536, kEntryBytes = 584, kPerPage = kPageBytes / kEntryBytes;
constexpr int64_t kNope = 448, kRope = 64, kDim = 512, kWindow = 128;

struct Case {
  const char* layer;
  int64_t context, sequences, heads;
};

}  // namespace

int main() {
  cudaDeviceProp prop;
  BENCH_CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  const double read_gbs = flotilla::bench::MeasureReadBandwidth(prop.multiProcessorCount);
  std::printf("ceiling: read bandwidth %.0f GB/s (4 GiB stream)\n", read_gbs);
  std::printf("%-4s %8s %5s %5s %6s %10s %8s %s\n", "kind", "context", "seqs", "heads", "list",
              "time", "GB/s", "of read bandwidth");
  std::vector<Case> cases;
  for (int64_t ctx : {65536, 262144, 1048576}) {
    for (const char* layer : {"CSA", "HCA"}) {
      for (int64_t seqs : {1, 32}) {
        for (int64_t heads : {64, 16}) cases.push_back({layer, ctx, seqs, heads});
      }
    }
  }
  std::mt19937 rng(3);
  for (const Case& c : cases) {
    const bool csa = c.layer[0] == 'C';
    const int64_t entries = csa ? c.context / 4 : c.context / 128;
    const int64_t list_len = kWindow + (csa ? std::min<int64_t>(512, entries) : entries);
    const int64_t wp = (kWindow + kPerPage - 1) / kPerPage,
                  cp = (entries + kPerPage - 1) / kPerPage;
    const int64_t pages = c.sequences * (wp + cp);
    std::vector<int32_t> ids(pages);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    std::vector<int64_t> wb(c.sequences), cb(c.sequences);
    for (int64_t s = 0; s < c.sequences; ++s) wb[s] = s * (wp + cp), cb[s] = wb[s] + wp;
    std::vector<int32_t> idx;
    for (int64_t s = 0; s < c.sequences; ++s) {
      for (int32_t i = 0; i < kWindow; ++i) idx.push_back(i);
      std::vector<int32_t> pick(entries);
      std::iota(pick.begin(), pick.end(), 0);
      if (csa) std::shuffle(pick.begin(), pick.end(), rng);
      for (int64_t i = 0; i < list_len - kWindow; ++i) idx.push_back(int32_t(kWindow + pick[i]));
    }
    uint8_t* pool;
    int32_t *d_ids, *d_idx;
    int64_t *d_wb, *d_cb;
    bf16 *q, *out;
    float* sink;
    BENCH_CUDA_OK(cudaMalloc(&pool, pages * kPageBytes));
    BENCH_CUDA_OK(cudaMemset(pool, 0x11, pages * kPageBytes));
    BENCH_CUDA_OK(cudaMalloc(&d_ids, ids.size() * 4));
    BENCH_CUDA_OK(cudaMemcpy(d_ids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    BENCH_CUDA_OK(cudaMalloc(&d_idx, idx.size() * 4));
    BENCH_CUDA_OK(cudaMemcpy(d_idx, idx.data(), idx.size() * 4, cudaMemcpyHostToDevice));
    BENCH_CUDA_OK(cudaMalloc(&d_wb, wb.size() * 8));
    BENCH_CUDA_OK(cudaMemcpy(d_wb, wb.data(), wb.size() * 8, cudaMemcpyHostToDevice));
    BENCH_CUDA_OK(cudaMalloc(&d_cb, cb.size() * 8));
    BENCH_CUDA_OK(cudaMemcpy(d_cb, cb.data(), cb.size() * 8, cudaMemcpyHostToDevice));
    BENCH_CUDA_OK(cudaMalloc(&q, c.sequences * c.heads * kDim * 2));
    BENCH_CUDA_OK(cudaMemset(q, 0x3c, c.sequences * c.heads * kDim * 2));
    BENCH_CUDA_OK(cudaMalloc(&out, c.sequences * c.heads * kDim * 2));
    BENCH_CUDA_OK(cudaMalloc(&sink, c.heads * 4));
    BENCH_CUDA_OK(cudaMemset(sink, 0, c.heads * 4));
    fk::SparseAttentionParams p;
    p.q = q, p.ldq = c.heads * kDim;
    p.pool = pool, p.page_bytes = kPageBytes, p.entry_bytes = kEntryBytes;
    p.entries_per_page = kPerPage, p.nope = kNope, p.rope = kRope;
    p.page_ids = d_ids, p.window_begin = d_wb, p.compressed_begin = d_cb;
    p.window_entries = kWindow;
    p.idx = d_idx, p.list_len = list_len, p.tokens = c.sequences;
    p.sink = sink, p.num_heads = c.heads, p.scale = 0.04419417f;
    p.out = out, p.ldo = c.heads * kDim;
    if (const char* err = fk::CheckSparseAttention(p)) {
      std::fprintf(stderr, "%s\n", err);
      return 1;
    }
    void* ws;
    BENCH_CUDA_OK(cudaMalloc(&ws, std::max<size_t>(16, fk::SparseAttentionWorkspaceBytes(p))));
    const float ms =
        TimeMs([&] { BENCH_CUDA_OK(cudaError_t(fk::LaunchSparseAttention(p, ws, nullptr))); }, 10);
    const double bytes = double(c.sequences) * (list_len * kEntryBytes + 2.0 * c.heads * kDim * 2);
    const double gbs = bytes / (ms * 1e-3) / 1e9;
    std::printf("%-4s %7lldk %5lld %5lld %6lld %7.3f ms %8.0f %5.0f%%\n", c.layer,
                (long long)(c.context / 1024), (long long)c.sequences, (long long)c.heads,
                (long long)list_len, ms, gbs, 100 * gbs / read_gbs);
    for (void* ptr :
         {static_cast<void*>(pool), static_cast<void*>(d_ids), static_cast<void*>(d_idx),
          static_cast<void*>(d_wb), static_cast<void*>(d_cb), static_cast<void*>(q),
          static_cast<void*>(out), static_cast<void*>(sink), ws}) {
      BENCH_CUDA_OK(cudaFree(ptr));
    }
  }
  return 0;
}
