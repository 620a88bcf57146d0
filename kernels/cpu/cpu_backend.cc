#include "kernels/cpu/cpu_backend.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/ops.h"

namespace flotilla::kernels {
namespace {

constexpr int64_t kCpuAlignment = 64;  // a cache line; every AVX2 load is unaligned-safe anyway

template <typename T>
T* Ptr(const DeviceSpan<T>& s) {
  return s.arena() == nullptr ? nullptr : BackendAccess::Address(s);
}

// Work issued on a CPU queue has run when the call returns: events are done once recorded.
class CpuQueue final : public Queue {
 public:
  explicit CpuQueue(const CpuBackend* backend) : backend_(backend) {}
  const CpuBackend* backend() const { return backend_; }

  Event Record() override { return Event{this, ++issued_}; }
  BackendResult<bool> Done(const Event& event) const override {
    if (event.queue == nullptr) {
      return BackendStatus::Error("Queue::Done: the event was never recorded");
    }
    return true;
  }
  BackendStatus WaitFor(const Event& event) override {
    if (event.queue == nullptr) {
      return BackendStatus::Error("Queue::WaitFor: the event was never recorded");
    }
    return BackendStatus::Ok();
  }
  BackendStatus Synchronize() override { return BackendStatus::Ok(); }

 private:
  const CpuBackend* backend_;
  uint64_t issued_ = 0;
};

void ReleaseHost(uintptr_t base, int64_t) { std::free(reinterpret_cast<void*>(base)); }

int64_t PhysicalMemory() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? int64_t(pages) * int64_t(page) : int64_t(1) << 40;
}

}  // namespace

#define FLOTILLA_CPU_QUEUE(queue, op)                                  \
  do {                                                                 \
    if (BackendStatus s_ = CheckQueue(queue, op); !s_.ok()) return s_; \
  } while (0)

CpuBackend::CpuBackend(int64_t max_arena_bytes) {
  memory_.name = "cpu";
  memory_.alignment = kCpuAlignment;
  memory_.max_arena_bytes = max_arena_bytes > 0 ? max_arena_bytes : PhysicalMemory();
  memory_.owner = static_cast<const Backend*>(this);
}

BackendResult<std::unique_ptr<Arena>> CpuBackend::NewArena(const std::string& name, int64_t bytes) {
  if (bytes < 0 || bytes > memory_.max_arena_bytes) {
    return BackendStatus::Error("NewArena '" + name + "': " + std::to_string(bytes) +
                                " bytes; expected 0 to " + std::to_string(memory_.max_arena_bytes) +
                                " (the cpu limit)");
  }
  const int64_t rounded = (bytes + kCpuAlignment - 1) / kCpuAlignment * kCpuAlignment;
  void* memory =
      std::aligned_alloc(kCpuAlignment, size_t(std::max<int64_t>(rounded, kCpuAlignment)));
  if (memory == nullptr) {
    return BackendStatus::Error("NewArena '" + name + "': the host has no " +
                                std::to_string(bytes) + " bytes to give");
  }
  return std::make_unique<Arena>(name, memory_, reinterpret_cast<uintptr_t>(memory), bytes,
                                 &ReleaseHost);
}

BackendResult<std::unique_ptr<Arena>> CpuBackend::ImportHost(const std::string& name,
                                                             const void* host, int64_t bytes) {
  if (bytes < 0 || (host == nullptr && bytes > 0)) {
    return BackendStatus::Error("ImportHost '" + name + "': " + std::to_string(bytes) +
                                " bytes at " + (host == nullptr ? "null" : "an address") +
                                "; expected memory of at least 0 bytes");
  }
  // Host memory is this backend's memory: the ops read it in place.
  return std::make_unique<Arena>(name, memory_, reinterpret_cast<uintptr_t>(host), bytes, nullptr,
                                 /*imported=*/true);
}

std::unique_ptr<Queue> CpuBackend::NewQueue() { return std::make_unique<CpuQueue>(this); }

BackendStatus CpuBackend::CheckQueue(const Queue& queue, const char* op) const {
  const auto* q = dynamic_cast<const CpuQueue*>(&queue);
  if (q == nullptr || q->backend() != this) {
    return BackendStatus::Error(std::string(op) + ": the queue is not one of this cpu " +
                                "backend's queues");
  }
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoUpload(Queue& queue, const void* host, uintptr_t dst, int64_t bytes) {
  FLOTILLA_CPU_QUEUE(queue, "Upload");
  if (bytes > 0) std::memcpy(reinterpret_cast<void*>(dst), host, size_t(bytes));
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoDownload(Queue& queue, uintptr_t src, void* host, int64_t bytes) {
  FLOTILLA_CPU_QUEUE(queue, "Download");
  if (bytes > 0) std::memcpy(host, reinterpret_cast<const void*>(src), size_t(bytes));
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoCopy(Queue& queue, uintptr_t src, uintptr_t dst, int64_t bytes) {
  FLOTILLA_CPU_QUEUE(queue, "Copy");
  if (bytes > 0)
    std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), size_t(bytes));
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoFill(Queue& queue, uintptr_t dst, int64_t count, int64_t element_bytes,
                                 uint64_t pattern) {
  FLOTILLA_CPU_QUEUE(queue, "Fill");
  auto* out = reinterpret_cast<unsigned char*>(dst);
  if (count <= 0) return BackendStatus::Ok();
  if (pattern == 0) {  // zeroing (the step workspace's Use): memset's speed
    std::memset(out, 0, size_t(count * element_bytes));
    return BackendStatus::Ok();
  }
  auto fill = [&](auto value) {
    using T = decltype(value);
    std::memcpy(&value, &pattern, sizeof(T));
    T* typed = reinterpret_cast<T*>(out);
    for (int64_t i = 0; i < count; ++i) typed[i] = value;
  };
  switch (element_bytes) {
    case 1:
      fill(uint8_t{});
      break;
    case 2:
      fill(uint16_t{});
      break;
    case 4:
      fill(uint32_t{});
      break;
    case 8:
      fill(uint64_t{});
      break;
    default:
      for (int64_t i = 0; i < count; ++i) {
        std::memcpy(out + i * element_bytes, &pattern, size_t(element_bytes));
      }
  }
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoActQuantFp8(Queue& queue, const ActQuantArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "ActQuantFp8");
  ActQuantParams p;
  p.x = Ptr(a.x);
  p.ldx = a.ldx;
  p.m = a.m;
  p.k = a.k;
  p.block = a.block;
  p.q = Ptr(a.q);
  p.scale = Ptr(a.scale);
  kernels::ActQuantFp8(p);
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoFp8SimulateInPlace(Queue& queue, const QuantSimulateArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "Fp8SimulateInPlace");
  kernels::Fp8SimulateInPlace(Ptr(a.x), a.rows, a.ld, a.n, a.block);
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoFp4SimulateInPlace(Queue& queue, const QuantSimulateArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "Fp4SimulateInPlace");
  kernels::Fp4SimulateInPlace(Ptr(a.x), a.rows, a.ld, a.n, a.block);
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoGemmFp8(Queue& queue, const GemmFp8Args& a) {
  FLOTILLA_CPU_QUEUE(queue, "GemmFp8");
  GemmFp8Params p;
  p.a = Ptr(a.a);
  p.a_scale = Ptr(a.a_scale);
  p.w = Ptr(a.w);
  p.w_scale = Ptr(a.w_scale);
  p.w_scale_f32 = Ptr(a.w_scale_f32);
  p.c = Ptr(a.c);
  p.ldc = a.ldc;
  p.m = a.m;
  p.n = a.n;
  p.k = a.k;
  kernels::GemmFp8(p);
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoGemmFp8Fp4(Queue& queue, const GemmFp8Fp4Args& a) {
  FLOTILLA_CPU_QUEUE(queue, "GemmFp8Fp4");
  GemmFp8Fp4Params p;
  p.a = Ptr(a.a);
  p.a_scale = Ptr(a.a_scale);
  p.w = Ptr(a.w);
  p.w_scale = Ptr(a.w_scale);
  p.c = Ptr(a.c);
  p.ldc = a.ldc;
  p.m = a.m;
  p.n = a.n;
  p.k = a.k;
  kernels::GemmFp8Fp4(p);
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoGemmBf16(Queue& queue, const GemmBf16Args& a) {
  FLOTILLA_CPU_QUEUE(queue, "GemmBf16");
  GemmBf16Params p;
  p.a = Ptr(a.a);
  p.lda = a.lda;
  p.w = Ptr(a.w);
  p.ldw = a.ldw;
  p.c = Ptr(a.c);
  p.c_f32 = Ptr(a.c_f32);
  p.ldc = a.ldc;
  p.m = a.m;
  p.n = a.n;
  p.k = a.k;
  kernels::GemmBf16(p);
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoGemmF32(Queue& queue, const GemmF32Args& a) {
  FLOTILLA_CPU_QUEUE(queue, "GemmF32");
  GemmF32Params p;
  p.a = Ptr(a.a);
  p.a_bf16 = Ptr(a.a_bf16);
  p.lda = a.lda;
  p.w = Ptr(a.w);
  p.w_bf16 = Ptr(a.w_bf16);
  p.ldw = a.ldw;
  p.c = Ptr(a.c);
  p.ldc = a.ldc;
  p.m = a.m;
  p.n = a.n;
  p.k = a.k;
  kernels::GemmF32(p);
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoRmsNorm(Queue& queue, const RmsNormArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "RmsNorm");
  kernels::RmsNorm(Ptr(a.x), a.ldx, Ptr(a.w), a.m, a.d, a.eps, Ptr(a.y), a.ldy);
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoHeadRmsNormBf16(Queue& queue, const HeadRmsNormArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "HeadRmsNormBf16");
  kernels::HeadRmsNormBf16(Ptr(a.q), a.rows, a.dim, a.eps);
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoRopeFrequencies(Queue& queue, const RopeFrequenciesArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "RopeFrequencies");
  kernels::RopeFrequencies(a.rope_dim, a.base, a.yarn, a.factor, a.original_max_position,
                           a.beta_fast, a.beta_slow, Ptr(a.freqs));
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoApplyRope(Queue& queue, const RopeArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "ApplyRope");
  RopeParams p;
  p.x = Ptr(a.x);
  p.ld = a.ld;
  p.head_stride = a.head_stride;
  p.num_tokens = a.num_tokens;
  p.num_heads = a.num_heads;
  p.rope_offset = a.rope_offset;
  p.rope_dim = a.rope_dim;
  p.positions = Ptr(a.positions);
  p.freqs = Ptr(a.freqs);
  p.inverse = a.inverse;
  kernels::ApplyRope(p);
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoHcPre(Queue& queue, const HcPreArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "HcPre");
  HcPreParams p;
  p.h = Ptr(a.h);
  p.fn = Ptr(a.fn);
  p.scale = Ptr(a.scale);
  p.base = Ptr(a.base);
  p.m = a.m;
  p.hc = a.hc;
  p.d = a.d;
  p.sinkhorn_iters = a.sinkhorn_iters;
  p.norm_eps = a.norm_eps;
  p.hc_eps = a.hc_eps;
  p.x = Ptr(a.x);
  p.post = Ptr(a.post);
  p.comb = Ptr(a.comb);
  kernels::HcPre(p);
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoHcPost(Queue& queue, const HcPostArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "HcPost");
  HcPostParams p;
  p.x = Ptr(a.x);
  p.res = Ptr(a.res);
  p.post = Ptr(a.post);
  p.comb = Ptr(a.comb);
  p.m = a.m;
  p.hc = a.hc;
  p.d = a.d;
  p.h_out = Ptr(a.h_out);
  kernels::HcPost(p);
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoHcHead(Queue& queue, const HcHeadArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "HcHead");
  HcHeadParams p;
  p.h = Ptr(a.h);
  p.fn = Ptr(a.fn);
  p.scale = Ptr(a.scale);
  p.base = Ptr(a.base);
  p.m = a.m;
  p.hc = a.hc;
  p.d = a.d;
  p.norm_eps = a.norm_eps;
  p.hc_eps = a.hc_eps;
  p.y = Ptr(a.y);
  kernels::HcHead(p);
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoCompressPool(Queue& queue, const CompressPoolArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "CompressPool");
  const float* kv = Ptr(a.kv);
  const float* score = Ptr(a.score);
  const int64_t* offsets = Ptr(a.slot_offsets);
  float* out = Ptr(a.out);
  // Grown once to the largest slot count, then reused: steady-state calls do not allocate.
  static thread_local std::vector<const float*> k_rows, g_rows;
  k_rows.resize(size_t(a.n_slots));
  g_rows.resize(size_t(a.n_slots));
  for (int64_t e = 0; e < a.num_entries; ++e) {
    for (int64_t s = 0; s < a.n_slots; ++s) {
      const int64_t off = offsets[e * a.n_slots + s];
      if (off < 0 || off > a.kv.size() - a.d) {
        return BackendStatus::Error(
            "CompressPool: slot_offsets[" + std::to_string(e * a.n_slots + s) +
            "] = " + std::to_string(off) + "; expected 0 to " + std::to_string(a.kv.size() - a.d) +
            " (d channels inside kv / score)");
      }
      k_rows[s] = kv + off;
      g_rows[s] = score + off;
    }
    kernels::CompressPool(k_rows.data(), g_rows.data(), a.n_slots, a.d, out + e * a.d);
  }
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoHadamardRotateBf16(Queue& queue, const HadamardArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "HadamardRotateBf16");
  kernels::HadamardRotateBf16(Ptr(a.x), a.rows, a.dim);
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoIndexerScores(Queue& queue, const IndexerScoreArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "IndexerScores");
  IndexerScoreParams p;
  p.q = Ptr(a.q);
  p.w = Ptr(a.w);
  p.keys = Ptr(a.keys);
  p.ldk = a.ldk;
  p.n = a.n;
  p.num_heads = a.num_heads;
  p.dim = a.dim;
  p.scores = Ptr(a.scores);
  kernels::IndexerScores(p);
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoTopK(Queue& queue, const TopKArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "TopK");
  const float* scores = Ptr(a.scores);
  int32_t* idx = Ptr(a.idx);
  for (int64_t r = 0; r < a.rows; ++r) {
    kernels::TopK(scores + r * a.ld_scores, a.n, a.k, idx + r * a.k);
  }
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoSparseAttention(Queue& queue, const SparseAttentionArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "SparseAttention");
  const int64_t rows1 = a.kv.size() / a.dim, rows2 = a.kv2.size() / a.dim;
  const bf16* kv = Ptr(a.kv);
  const bf16* kv2 = Ptr(a.kv2);
  const int32_t* idx = Ptr(a.row_idx);
  static thread_local std::vector<const bf16*> list;  // grows once, then reused
  list.resize(size_t(a.n));
  for (int64_t i = 0; i < a.n; ++i) {
    const int64_t j = idx[i];
    if (j < -1 || j >= rows1 + rows2 || (i == 0 && j == -1)) {
      return BackendStatus::Error(
          "SparseAttention: row_idx[" + std::to_string(i) + "] = " + std::to_string(j) +
          "; expected " + (i == 0 ? "0" : "-1") + " to " + std::to_string(rows1 + rows2 - 1) +
          " (kv rows then kv2 rows" + (i == 0 ? "; the first entry may not be empty)" : ")"));
    }
    list[i] = j < 0 ? nullptr : j < rows1 ? kv + j * a.dim : kv2 + (j - rows1) * a.dim;
  }
  SparseAttentionParams p;
  p.q = Ptr(a.q);
  p.rows = list.data();
  p.n = a.n;
  p.sink = Ptr(a.sink);
  p.num_heads = a.num_heads;
  p.dim = a.dim;
  p.scale = a.scale;
  p.out = Ptr(a.out);
  kernels::SparseAttention(p);
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoRoute(Queue& queue, const RouteArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "Route");
  RouterParams p;
  p.logits = Ptr(a.logits);
  p.bias = Ptr(a.bias);
  p.hash_ids = Ptr(a.hash_ids);
  p.ld_hash = a.ld_hash;
  p.m = a.m;
  p.num_experts = a.num_experts;
  p.top_k = a.top_k;
  p.route_scale = a.route_scale;
  p.expert_idx = Ptr(a.expert_idx);
  p.weights = Ptr(a.weights);
  kernels::Route(p);
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoSwiGlu(Queue& queue, const SwiGluArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "SwiGlu");
  SwiGluParams p;
  p.gate = Ptr(a.gate);
  p.up = Ptr(a.up);
  p.ld_in = a.ld_in;
  p.row_weight = Ptr(a.row_weight);
  p.m = a.m;
  p.inter = a.inter;
  p.limit = a.limit;
  p.out = Ptr(a.out);
  p.ld_out = a.ld_out;
  kernels::SwiGlu(p);
  return BackendStatus::Ok();
}

namespace {

KvPackParams PackParams(const KvPackArgs& a) {
  KvPackParams p;
  p.rows = a.rows;
  p.nope = a.nope;
  p.rope = a.rope;
  p.entry_bytes = a.entry_bytes;
  p.x = Ptr(a.x);
  p.ldx = a.ldx;
  p.entries = Ptr(a.entries);
  return p;
}

KvUnpackParams UnpackParams(const KvUnpackArgs& a) {
  KvUnpackParams p;
  p.rows = a.rows;
  p.nope = a.nope;
  p.rope = a.rope;
  p.entry_bytes = a.entry_bytes;
  p.entries = Ptr(a.entries);
  p.x = Ptr(a.x);
  p.ldx = a.ldx;
  return p;
}

}  // namespace

BackendStatus CpuBackend::DoMoePermute(Queue& queue, const MoePermuteArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "MoePermute");
  MoePermuteParams p;
  p.expert_idx = Ptr(a.expert_idx);
  p.n = a.n;
  p.k = a.k;
  p.first_expert = a.first_expert;
  p.num_experts = a.num_experts;
  p.offsets = Ptr(a.offsets);
  p.order = Ptr(a.order);
  kernels::MoePermute(p);
  return BackendStatus::Ok();
}

namespace {

// Checks index[i] / divisor against the rows `indexed` holds (row_bytes at stride ld), then
// fills the kernel's parameters.
BackendResult<RowCopyParams> RowCopy(const char* op, const RowCopyArgs& a, int64_t indexed_bytes,
                                     int64_t ld) {
  const int64_t indexed_rows =
      indexed_bytes < a.row_bytes ? 0 : (indexed_bytes - a.row_bytes) / ld + 1;
  const int32_t* index = Ptr(a.index);
  for (int64_t i = 0; i < a.rows; ++i) {
    if (index[i] < 0 || int64_t(index[i]) / a.divisor >= indexed_rows) {
      return BackendStatus::Error(std::string(op) + ": index[" + std::to_string(i) +
                                  "] = " + std::to_string(index[i]) + " (row " +
                                  std::to_string(int64_t(index[i]) / a.divisor) +
                                  "); expected rows 0 to " + std::to_string(indexed_rows - 1));
    }
  }
  RowCopyParams p;
  p.src = Ptr(a.src);
  p.ld_src = a.ld_src;
  p.index = index;
  p.rows = a.rows;
  p.divisor = a.divisor;
  p.row_bytes = a.row_bytes;
  p.dst = Ptr(a.dst);
  p.ld_dst = a.ld_dst;
  return p;
}

}  // namespace

BackendStatus CpuBackend::DoGatherRows(Queue& queue, const RowCopyArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "GatherRows");
  BackendResult<RowCopyParams> p = RowCopy("GatherRows", a, a.src.size(), a.ld_src);
  if (!p.ok()) return p.status();
  kernels::GatherRows(p.value());
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoScatterRows(Queue& queue, const RowCopyArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "ScatterRows");
  BackendResult<RowCopyParams> p = RowCopy("ScatterRows", a, a.dst.size(), a.ld_dst);
  if (!p.ok()) return p.status();
  kernels::ScatterRows(p.value());
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoMoeCombine(Queue& queue, const MoeCombineArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "MoeCombine");
  MoeCombineParams p;
  p.expert_idx = Ptr(a.expert_idx);
  p.routed = Ptr(a.routed);
  p.shared = Ptr(a.shared);
  p.n = a.n;
  p.k = a.k;
  p.d = a.d;
  p.out = Ptr(a.out);
  kernels::MoeCombine(p);
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoPackKvEntries(Queue& queue, const KvPackArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "PackKvEntries");
  kernels::PackKvEntries(PackParams(a));
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoUnpackKvEntries(Queue& queue, const KvUnpackArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "UnpackKvEntries");
  kernels::UnpackKvEntries(UnpackParams(a));
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoPackIndexerKeys(Queue& queue, const KvPackArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "PackIndexerKeys");
  kernels::PackIndexerKeys(PackParams(a));
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoUnpackIndexerKeys(Queue& queue, const KvUnpackArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "UnpackIndexerKeys");
  kernels::UnpackIndexerKeys(UnpackParams(a));
  return BackendStatus::Ok();
}

// ---------------------------------------------------------------- model ops

BackendStatus CpuBackend::DoEmbedRows(Queue& queue, const EmbedRowsArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "EmbedRows");
  const bf16* table = Ptr(a.table);
  const int32_t* tokens = Ptr(a.tokens);
  bf16* out = Ptr(a.out);
#pragma omp parallel for schedule(static) if (a.n * a.d > (1 << 16))
  for (int64_t r = 0; r < a.n; ++r) {
    const int64_t row = int64_t(tokens[r]) - a.first;
    if (row >= 0 && row < a.num_rows) {
      std::memcpy(out + r * a.d, table + row * a.d, size_t(a.d) * sizeof(bf16));
    } else {
      std::memset(out + r * a.d, 0, size_t(a.d) * sizeof(bf16));
    }
  }
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoRepeatRows(Queue& queue, const RepeatRowsArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "RepeatRows");
  const bf16* x = Ptr(a.x);
  bf16* out = Ptr(a.out);
#pragma omp parallel for schedule(static) if (a.n * a.copies * a.d > (1 << 16))
  for (int64_t r = 0; r < a.n; ++r) {
    for (int64_t j = 0; j < a.copies; ++j) {
      std::memcpy(out + (r * a.copies + j) * a.d, x + r * a.d, size_t(a.d) * sizeof(bf16));
    }
  }
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoBroadcastAdd(Queue& queue, const BroadcastAddArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "BroadcastAdd");
  const bf16* x = Ptr(a.a);
  const bf16* y = Ptr(a.b);
  bf16* out = Ptr(a.out);
#pragma omp parallel for schedule(static) if (a.n * a.copies * a.d > (1 << 16))
  for (int64_t rj = 0; rj < a.n * a.copies; ++rj) {
    const bf16* xr = x + (rj / a.copies) * a.d;
    for (int64_t col = 0; col < a.d; ++col) {
      out[rj * a.d + col] = F32ToBf16(Bf16ToF32(xr[col]) + Bf16ToF32(y[rj * a.d + col]));
    }
  }
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoConvertBf16ToF32(Queue& queue, const ConvertBf16ToF32Args& a) {
  FLOTILLA_CPU_QUEUE(queue, "ConvertBf16ToF32");
  const bf16* x = Ptr(a.x);
  float* y = Ptr(a.y);
#pragma omp parallel for schedule(static) if (a.count > (1 << 18))
  for (int64_t i = 0; i < a.count; ++i) y[i] = Bf16ToF32(x[i]);
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoConvertF32ToBf16(Queue& queue, const ConvertF32ToBf16Args& a) {
  FLOTILLA_CPU_QUEUE(queue, "ConvertF32ToBf16");
  const float* x = Ptr(a.x);
  bf16* y = Ptr(a.y);
#pragma omp parallel for schedule(static) if (a.count > (1 << 18))
  for (int64_t i = 0; i < a.count; ++i) y[i] = F32ToBf16(x[i]);
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoInterleaveRows(Queue& queue, const InterleaveRowsArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "InterleaveRows");
  const uint8_t* src = Ptr(a.src);
  uint8_t* dst = Ptr(a.dst);
  for (int64_t i = 0; i < a.rows; ++i) {
    for (int64_t b = 0; b < a.blocks; ++b) {
      std::memcpy(dst + (i * a.blocks + b) * a.row_bytes, src + (b * a.rows + i) * a.row_bytes,
                  size_t(a.row_bytes));
    }
  }
  return BackendStatus::Ok();
}

// ---- MoE ops

BackendStatus CpuBackend::DoRoutePerRowK(Queue& queue, const RoutePerRowKArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "RoutePerRowK");
  const float* logits = Ptr(a.logits);
  const int64_t* hash_ids = Ptr(a.hash_ids);
  const int32_t* row_top_k = Ptr(a.row_top_k);
  int32_t* expert_idx = Ptr(a.expert_idx);
  float* weights = Ptr(a.weights);
  for (int64_t t = 0; t < a.m; ++t) {
    const int64_t kt = row_top_k[t];
    if (kt < 1 || kt > a.top_k) {
      return BackendStatus::Error("RoutePerRowK: row_top_k[" + std::to_string(t) +
                                  "] = " + std::to_string(kt) + "; expected 1 to " +
                                  std::to_string(a.top_k));
    }
    // The row alone, as a model with kt experts per token routes it (routing is per row).
    int32_t row_idx[64] = {};
    float row_weights[64] = {};
    RouterParams p;
    p.logits = logits + t * a.num_experts;
    p.bias = Ptr(a.bias);
    p.hash_ids = hash_ids == nullptr ? nullptr : hash_ids + t * a.ld_hash;
    p.ld_hash = a.ld_hash;
    p.m = 1;
    p.num_experts = a.num_experts;
    p.top_k = kt;
    p.route_scale = a.route_scale;
    p.expert_idx = row_idx;
    p.weights = row_weights;
    kernels::Route(p);
    for (int64_t s = 0; s < a.top_k; ++s) {
      expert_idx[t * a.top_k + s] = s < kt ? row_idx[s] : row_idx[0];
      weights[t * a.top_k + s] = s < kt ? row_weights[s] : 0.0f;
    }
  }
  return BackendStatus::Ok();
}

namespace {

// Runs `run(g, first, count)` for the rows of each group g inside the window [row_begin,
// row_begin + rows), first relative to row_begin, after checking the offsets as it reads them.
template <typename Run>
BackendStatus ForEachGroup(const char* op, const In<int64_t>& offsets_span, size_t num_groups,
                           int64_t row_begin, int64_t rows, Run run) {
  const int64_t* offsets = Ptr(offsets_span);
  for (size_t g = 0; g <= num_groups; ++g) {
    const int64_t prev = g == 0 ? 0 : offsets[g - 1];
    if (offsets[g] < prev || (g == 0 && offsets[0] != 0)) {
      return BackendStatus::Error(
          std::string(op) + ": offsets[" + std::to_string(g) + "] = " + std::to_string(offsets[g]) +
          "; expected " +
          (g == 0 ? std::string("0")
                  : ">= offsets[" + std::to_string(g - 1) + "] = " + std::to_string(prev)));
    }
  }
  for (size_t g = 0; g < num_groups; ++g) {
    const int64_t lo = std::clamp<int64_t>(offsets[g] - row_begin, 0, rows);
    const int64_t hi = std::clamp<int64_t>(offsets[g + 1] - row_begin, 0, rows);
    if (hi > lo) run(g, lo, hi - lo);
  }
  return BackendStatus::Ok();
}

}  // namespace

BackendStatus CpuBackend::DoGroupedGemmFp8Fp4(Queue& queue, const GroupedGemmFp8Fp4Args& a) {
  FLOTILLA_CPU_QUEUE(queue, "GroupedGemmFp8Fp4");
  return ForEachGroup("GroupedGemmFp8Fp4", a.offsets, a.w.size(), a.row_begin, a.rows,
                      [&](size_t g, int64_t first, int64_t count) {
                        GemmFp8Fp4Params p;
                        p.a = Ptr(a.a) + first * a.k;
                        p.a_scale = Ptr(a.a_scale) + first * (a.k / 128);
                        p.w = Ptr(a.w[g]);
                        p.w_scale = Ptr(a.w_scale[g]);
                        p.c = Ptr(a.c) + first * a.ldc;
                        p.ldc = a.ldc;
                        p.m = count;
                        p.n = a.n;
                        p.k = a.k;
                        kernels::GemmFp8Fp4(p);
                      });
}

BackendStatus CpuBackend::DoGroupedGemmFp8(Queue& queue, const GroupedGemmFp8Args& a) {
  FLOTILLA_CPU_QUEUE(queue, "GroupedGemmFp8");
  return ForEachGroup("GroupedGemmFp8", a.offsets, a.w.size(), a.row_begin, a.rows,
                      [&](size_t g, int64_t first, int64_t count) {
                        GemmFp8Params p;
                        p.a = Ptr(a.a) + first * a.k;
                        p.a_scale = Ptr(a.a_scale) + first * (a.k / 128);
                        p.w = Ptr(a.w[g]);
                        p.w_scale = a.w_scale.empty() ? nullptr : Ptr(a.w_scale[g]);
                        p.w_scale_f32 = a.w_scale_f32.empty() ? nullptr : Ptr(a.w_scale_f32[g]);
                        p.c = Ptr(a.c) + first * a.ldc;
                        p.ldc = a.ldc;
                        p.m = count;
                        p.n = a.n;
                        p.k = a.k;
                        kernels::GemmFp8(p);
                      });
}

BackendStatus CpuBackend::DoGroupedGemmBf16(Queue& queue, const GroupedGemmBf16Args& a) {
  FLOTILLA_CPU_QUEUE(queue, "GroupedGemmBf16");
  return ForEachGroup("GroupedGemmBf16", a.offsets, a.w.size(), a.row_begin, a.rows,
                      [&](size_t g, int64_t first, int64_t count) {
                        GemmBf16Params p;
                        p.a = Ptr(a.a) + first * a.lda;
                        p.lda = a.lda;
                        p.w = Ptr(a.w[g]);
                        p.ldw = a.k;
                        p.c = Ptr(a.c) + first * a.ldc;
                        p.ldc = a.ldc;
                        p.m = count;
                        p.n = a.n;
                        p.k = a.k;
                        kernels::GemmBf16(p);
                      });
}

// ---- attention ops

namespace {

// Per-thread scratch of the attention ops. Each call reserves, on every thread it uses, what
// the call may need (rounded up to a power of two), before any row runs: the vectors grow a few
// times while contexts grow, and steady-state calls allocate nothing.
struct AttentionScratch {
  std::vector<float> scores;
  std::vector<int32_t> idx, order, sel;
  std::vector<bf16> w;
  std::vector<const bf16*> list;
  std::vector<const float*> k_rows, g_rows;
};

AttentionScratch& Scratch() {
  static thread_local AttentionScratch scratch;
  return scratch;
}

template <typename T>
void Reserve(std::vector<T>& v, int64_t n) {
  if (int64_t(v.capacity()) < n) v.reserve(std::bit_ceil(size_t(n)));
}

// fn(r) for rows [0, n): several rows in parallel; a single row on the calling thread, so that
// the kernels it calls use the threads (an inactive region around them would make their regions
// nest and take a new team per call). prepare() runs first on every thread that takes rows.
template <typename Prepare, typename Fn>
void ForEachRow(int64_t n, Prepare prepare, Fn fn) {
  if (n <= 0) return;
  if (n == 1) {
    prepare();
    fn(int64_t(0));
    return;
  }
#pragma omp parallel
  {
    prepare();
#pragma omp for schedule(dynamic, 1)
    for (int64_t r = 0; r < n; ++r) fn(r);
  }
}

// The first error rows report (rows run in parallel).
class RowErrors {
 public:
  void Set(std::string message) {
    bool expected = false;
    if (failed_.compare_exchange_strong(expected, true)) message_ = std::move(message);
  }
  BackendStatus Status() const {
    return failed_.load() ? BackendStatus::Error(message_) : BackendStatus::Ok();
  }

 private:
  std::atomic<bool> failed_{false};
  std::string message_;
};

}  // namespace

BackendStatus CpuBackend::DoCompressorUpdate(Queue& queue, const CompressorUpdateArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "CompressorUpdate");
  const int64_t m = a.ratio, width = a.width, d = a.d;
  const float* k = Ptr(a.k);
  const float* g = Ptr(a.g);
  const float* ape = Ptr(a.ape);
  float* kv = Ptr(a.state_kv);
  float* score = Ptr(a.state_score);
  float* pooled = Ptr(a.pooled);
  int64_t* entry_pos = Ptr(a.entry_pos);
  AttentionScratch& t = Scratch();
  Reserve(t.k_rows, 2 * m);
  Reserve(t.g_rows, 2 * m);
  t.k_rows.resize(size_t(a.overlap ? 2 * m : m));
  t.g_rows.resize(t.k_rows.size());
  int64_t e = 0;
  for (int64_t i = 0; i < a.n; ++i) {
    const int64_t p = a.start_pos + i;
    const int64_t slot = (a.overlap ? m : 0) + p % m;
    float* kv_slot = kv + slot * width;
    float* sc_slot = score + slot * width;
    const float* ape_row = ape + (p % m) * width;
    for (int64_t c = 0; c < width; ++c) {
      kv_slot[c] = k[i * width + c];
      sc_slot[c] = g[i * width + c] + ape_row[c];
    }
    if ((p + 1) % m != 0) continue;
    for (int64_t s = 0; s < m; ++s) {
      t.k_rows[size_t(s)] = kv + s * width;
      t.g_rows[size_t(s)] = score + s * width;
      if (a.overlap) {  // A-half of the previous block, B-half of this one
        t.k_rows[size_t(m + s)] = kv + (m + s) * width + d;
        t.g_rows[size_t(m + s)] = score + (m + s) * width + d;
      }
    }
    kernels::CompressPool(t.k_rows.data(), t.g_rows.data(), int64_t(t.k_rows.size()), d,
                          pooled + e * d);
    if (entry_pos != nullptr) entry_pos[e] = p / m * m;
    ++e;
    if (a.overlap) {  // the finished block becomes "previous"
      std::copy(kv + m * width, kv + 2 * m * width, kv);
      std::copy(score + m * width, score + 2 * m * width, score);
    }
  }
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoIndexerTopK(Queue& queue, const IndexerTopKArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "IndexerTopK");
  if (a.rows == 0 || a.n_keys == 0) return BackendStatus::Ok();
  const int64_t heads = a.num_heads, dim = a.dim, topk = a.top_k;
  const int64_t b0 = a.first_key, b1 = a.first_key + a.n_keys;
  const bf16* q = Ptr(a.q);
  const bf16* w = Ptr(a.w);
  const bf16* keys = Ptr(a.keys);
  int32_t* picks = Ptr(a.picks);
  float* pick_scores = Ptr(a.pick_scores);
  int32_t* num_picks = Ptr(a.num_picks);
  RowErrors errors;
  ForEachRow(
      a.rows,
      [&] {
        AttentionScratch& t = Scratch();
        const int64_t keys = std::max(a.n_keys, a.max_keys);
        Reserve(t.scores, topk + keys);
        Reserve(t.idx, topk + keys);
        Reserve(t.order, topk);
        Reserve(t.sel, topk);
        Reserve(t.w, heads);
      },
      [&](int64_t r) {
        AttentionScratch& t = Scratch();
        const int64_t e1 = std::min((a.start_pos + r + 1) / a.ratio, b1);
        if (e1 <= b0) return;
        const int64_t have = num_picks[r], count = e1 - b0;
        if (have < 0 || have > topk) {
          errors.Set("IndexerTopK: num_picks[" + std::to_string(r) + "] = " + std::to_string(have) +
                     "; expected 0 to top_k " + std::to_string(topk));
          return;
        }
        // The row's picks so far in index order, then this block's keys: candidates in index
        // order, so TopK's ties by position are ties by key index.
        int32_t* row_picks = picks + r * topk;
        float* row_scores = pick_scores + r * topk;
        t.order.resize(size_t(have));
        for (int64_t i = 0; i < have; ++i) t.order[size_t(i)] = int32_t(i);
        std::sort(t.order.begin(), t.order.end(),
                  [&](int32_t x, int32_t y) { return row_picks[x] < row_picks[y]; });
        t.scores.resize(size_t(have + count));
        t.idx.resize(size_t(have + count));
        for (int64_t i = 0; i < have; ++i) {
          t.idx[size_t(i)] = row_picks[t.order[size_t(i)]];
          t.scores[size_t(i)] = row_scores[t.order[size_t(i)]];
        }
        t.w.resize(size_t(heads));
        for (int64_t h = 0; h < heads; ++h) {
          t.w[size_t(h)] = F32ToBf16(Bf16ToF32(w[r * heads + h]) * a.w_scale);
        }
        IndexerScoreParams sp;
        sp.q = q + r * heads * dim;
        sp.w = t.w.data();
        sp.keys = keys;
        sp.ldk = dim;
        sp.n = count;
        sp.num_heads = heads;
        sp.dim = dim;
        sp.scores = t.scores.data() + have;
        kernels::IndexerScores(sp);
        for (int64_t j = 0; j < count; ++j) {
          t.scores[size_t(have + j)] = RoundBf16(t.scores[size_t(have + j)]);
          t.idx[size_t(have + j)] = int32_t(b0 + j);
        }
        const int64_t k = std::min(topk, have + count);
        t.sel.resize(size_t(k));
        kernels::TopK(t.scores.data(), have + count, k, t.sel.data());
        for (int64_t i = 0; i < k; ++i) {
          row_picks[i] = t.idx[size_t(t.sel[size_t(i)])];
          row_scores[i] = t.scores[size_t(t.sel[size_t(i)])];
        }
        num_picks[r] = int32_t(k);
      });
  return errors.Status();
}

BackendStatus CpuBackend::DoPickedEntries(Queue& queue, const PickedEntriesArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "PickedEntries");
  const int32_t* picks = Ptr(a.picks);
  const int32_t* num_picks = Ptr(a.num_picks);
  int32_t* slot = Ptr(a.entry_slot);
  int32_t* idx = Ptr(a.entry_idx);
  for (int64_t j = 0; j < a.visible; ++j) slot[j] = -1;
  for (int64_t r = 0; r < a.rows; ++r) {
    if (num_picks[r] < 0 || num_picks[r] > a.top_k) {
      return BackendStatus::Error("PickedEntries: num_picks[" + std::to_string(r) +
                                  "] = " + std::to_string(num_picks[r]) + "; expected 0 to top_k " +
                                  std::to_string(a.top_k));
    }
    for (int32_t i = 0; i < num_picks[r]; ++i) {
      const int32_t j = picks[r * a.top_k + i];
      if (j < 0 || j >= a.visible) {
        return BackendStatus::Error("PickedEntries: picks[" + std::to_string(r * a.top_k + i) +
                                    "] = " + std::to_string(j) + "; expected 0 to visible - 1 (" +
                                    std::to_string(a.visible - 1) + ")");
      }
      slot[j] = 0;
    }
  }
  int32_t count = 0;
  for (int64_t j = 0; j < a.visible; ++j) {
    if (slot[j] < 0) continue;
    if (count == a.max_entries) {
      return BackendStatus::Error("PickedEntries: more than max_entries (" +
                                  std::to_string(a.max_entries) + ") entries picked");
    }
    slot[j] = count;
    idx[count++] = int32_t(j);
  }
  Ptr(a.count)[0] = count;
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoUnpackKvEntriesPaged(Queue& queue, const KvUnpackPagedArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "UnpackKvEntriesPaged");
  const int64_t n = Ptr(a.count)[0];
  if (n < 0 || n > a.max_rows) {
    return BackendStatus::Error("UnpackKvEntriesPaged: count " + std::to_string(n) +
                                "; expected 0 to max_rows " + std::to_string(a.max_rows));
  }
  const uint8_t* pool = Ptr(a.pool);
  const int32_t* ids = Ptr(a.page_ids);
  const int32_t* units = Ptr(a.units);
  const int64_t pages = a.pool.size() / a.page_bytes;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t u = units[i];
    const int64_t page = u / a.per_page;
    if (u < 0 || page >= a.page_ids.size() || ids[page] < 0 || ids[page] >= pages) {
      return BackendStatus::Error(
          "UnpackKvEntriesPaged: units[" + std::to_string(i) + "] = " + std::to_string(u) +
          (u < 0 || page >= a.page_ids.size()
               ? "; expected 0 to " + std::to_string(a.page_ids.size() * a.per_page - 1)
               : " lies in page " + std::to_string(ids[page]) + "; expected 0 to " +
                     std::to_string(pages - 1)));
    }
  }
  // Rows are independent: one kernel call each, in parallel when there is enough to share.
#pragma omp parallel for schedule(static) if (n * a.entry_bytes >= (1 << 18))
  for (int64_t i = 0; i < n; ++i) {
    const int64_t u = units[i];
    KvUnpackParams p;
    p.rows = 1;
    p.nope = a.nope;
    p.rope = a.rope;
    p.entry_bytes = a.entry_bytes;
    p.entries =
        pool + int64_t(ids[u / a.per_page]) * a.page_bytes + (u % a.per_page) * a.entry_bytes;
    p.x = Ptr(a.x) + i * a.ldx;
    p.ldx = a.ldx;
    kernels::UnpackKvEntries(p);
  }
  return BackendStatus::Ok();
}

BackendStatus CpuBackend::DoChunkAttention(Queue& queue, const ChunkAttentionArgs& a) {
  FLOTILLA_CPU_QUEUE(queue, "ChunkAttention");
  const int64_t dim = a.dim, window = a.window, topk = a.top_k;
  const bf16* fresh = Ptr(a.fresh);
  const bf16* ring = Ptr(a.ring);
  const bf16* entries = Ptr(a.entries);
  const int32_t* picks = Ptr(a.picks);
  const int32_t* num_picks = Ptr(a.num_picks);
  const int32_t* entry_slot = Ptr(a.entry_slot);
  const int64_t entry_rows = a.entries.size() / dim;
  const int64_t visible = a.ratio > 0 ? (a.start_pos + a.rows) / a.ratio : 0;
  const int64_t most = window + std::max(picks != nullptr ? topk : visible, a.max_compressed);
  RowErrors errors;
  ForEachRow(
      a.rows, [&] { Reserve(Scratch().list, most); },
      [&](int64_t r) {
        std::vector<const bf16*>& list = Scratch().list;
        const int64_t p = a.start_pos + r;
        list.clear();
        for (int64_t t = std::max<int64_t>(0, p - window + 1); t <= p; ++t) {
          list.push_back(t >= a.start_pos ? fresh + (t - a.start_pos) * dim
                                          : ring + (t % window) * dim);
        }
        list.resize(size_t(window), nullptr);  // reference layout: window part is always W wide
        if (picks != nullptr) {
          const int64_t have = num_picks[r];
          if (have < 0 || have > topk) {
            errors.Set("ChunkAttention: num_picks[" + std::to_string(r) + "] = " +
                       std::to_string(have) + "; expected 0 to top_k " + std::to_string(topk));
            return;
          }
          for (int64_t i = 0; i < have; ++i) {
            const int64_t j = picks[r * topk + i];
            const int64_t e = j >= 0 && j < visible ? entry_slot[j] : -1;
            if (e < 0 || e >= entry_rows) {
              errors.Set("ChunkAttention: row " + std::to_string(r) + " picks entry " +
                         std::to_string(j) + " (slot " + std::to_string(e) +
                         "); expected a picked entry of the " + std::to_string(visible) +
                         " visible, in the " + std::to_string(entry_rows) + " entry rows");
              return;
            }
            list.push_back(entries + e * dim);
          }
        } else if (a.ratio > 0) {
          const int64_t row_visible = (p + 1) / a.ratio;
          for (int64_t j = 0; j < row_visible; ++j) list.push_back(entries + j * dim);
        }
        SparseAttentionParams ap;
        ap.q = Ptr(a.q) + r * a.ldq;
        ap.rows = list.data();
        ap.n = int64_t(list.size());
        ap.sink = Ptr(a.sink);
        ap.num_heads = a.num_heads;
        ap.dim = dim;
        ap.scale = a.scale;
        ap.out = Ptr(a.out) + r * a.ldo;
        kernels::SparseAttention(ap);
      });
  return errors.Status();
}

}  // namespace flotilla::kernels
