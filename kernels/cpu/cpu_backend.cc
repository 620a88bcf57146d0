#include "kernels/cpu/cpu_backend.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend_internal.h"
#include "kernels/ops.h"

namespace flotilla::kernels {
namespace {

constexpr int64_t kCpuAlignment = 64;  // a cache line; every AVX2 load is unaligned-safe anyway


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

}  // namespace flotilla::kernels
