// The CUDA backend against the CPU backend, op by op through the Backend interface (label cuda;
// each test skips itself without a GPU): the same inputs uploaded to both, the same args, the
// outputs downloaded and compared bit for bit, a NaN matching any NaN (every op here is one whose
// contract is bitwise; the FP8 x FP4 GEMM is fed values whose 32-wide partials are exact, where
// it is bitwise too).
// Inputs are random plus the edge values the ops must survive: NaN and infinities, ±448, zero
// and extreme scales, empty groups and empty calls. Also the backend itself: arenas, copies,
// fills, events across queues, errors found on the device, and the op refused in this build.
#include "kernels/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "common/dtype.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace flotilla::kernels::cuda {
namespace {

using testing::HaveGpu;
using testing::RandomBf16;

constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<float> RandomF32(size_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// A tensor held by both backends.
template <typename T>
struct Both {
  DeviceSpan<T> c, g;
};

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
    BackendResult<std::unique_ptr<CudaBackend>> g = CudaBackend::Create(0);
    ASSERT_TRUE(g.ok()) << g.status().message();
    gpu_ = std::move(g.value());
    auto ca = cpu_.NewArena("cpu", int64_t(512) << 20);
    auto ga = gpu_->NewArena("gpu", int64_t(512) << 20);
    ASSERT_TRUE(ca.ok() && ga.ok()) << ca.status().message() << ga.status().message();
    cpu_arena_ = std::move(ca.value());
    gpu_arena_ = std::move(ga.value());
    cq_ = cpu_.NewQueue();
    gq_ = gpu_->NewQueue();
    ASSERT_NE(gq_, nullptr);
  }

  template <typename T>
  Both<T> Make(const std::vector<T>& host) {
    const int64_t n = int64_t(host.size());
    auto c = cpu_arena_->Allocate<T>(n);
    auto g = gpu_arena_->Allocate<T>(n);
    EXPECT_TRUE(c.ok() && g.ok());
    EXPECT_TRUE(cpu_.Upload(*cq_, std::span<const T>(host), c.value()).ok());
    EXPECT_TRUE(gpu_->Upload(*gq_, std::span<const T>(host), g.value()).ok());
    EXPECT_TRUE(gq_->Synchronize().ok());  // `host` may be a temporary (the Upload contract)
    return {c.value(), g.value()};
  }
  template <typename T>
  Both<T> Filled(int64_t n, T value) {
    return Make(std::vector<T>(size_t(n), value));
  }

  // Runs `f(backend, queue, pick)` on the CPU then on the GPU (pick(both) is that side's span)
  // and waits for the GPU.
  template <typename F>
  void RunBoth(F f) {
    const auto cpu_side = [](const auto& b) { return b.c; };
    const auto gpu_side = [](const auto& b) { return b.g; };
    const BackendStatus c = f(static_cast<Backend&>(cpu_), *cq_, cpu_side);
    ASSERT_TRUE(c.ok()) << "cpu: " << c.message();
    const BackendStatus g = f(static_cast<Backend&>(*gpu_), *gq_, gpu_side);
    ASSERT_TRUE(g.ok()) << "cuda: " << g.message();
    const BackendStatus s = gq_->Synchronize();
    ASSERT_TRUE(s.ok()) << s.message();
  }

  template <typename T>
  std::vector<T> Cpu(const Both<T>& b) {
    std::vector<T> out(size_t(b.c.size()));
    EXPECT_TRUE(cpu_.Download(*cq_, DeviceSpan<const T>(b.c), std::span<T>(out)).ok());
    return out;
  }
  template <typename T>
  std::vector<T> Gpu(const Both<T>& b) {
    std::vector<T> out(size_t(b.g.size()));
    EXPECT_TRUE(gpu_->Download(*gq_, DeviceSpan<const T>(b.g), std::span<T>(out)).ok());
    EXPECT_TRUE(gq_->Synchronize().ok());
    return out;
  }

  // Bit for bit, except that two NaNs match whatever their sign and payload: a NaN an operation
  // creates (inf - inf, 0/0) is 0xffc00000 on x86 and 0x7fffffff on the GPU. uint16_t elements
  // are read as bf16 for this (the u16 fill pattern is no NaN).
  template <typename T>
  static bool IsNanBits(T v) {
    if constexpr (std::is_same_v<T, float>) {
      return std::isnan(v);
    } else if constexpr (std::is_same_v<T, uint16_t>) {
      return (v & 0x7fffu) > 0x7f80u;
    } else {
      return false;
    }
  }
  template <typename T>
  void ExpectSame(const Both<T>& b, const std::string& what) {
    const std::vector<T> want = Cpu(b), got = Gpu(b);
    ASSERT_EQ(want.size(), got.size());
    for (size_t i = 0; i < want.size(); ++i) {
      if (IsNanBits(want[i]) && IsNanBits(got[i])) continue;
      if (std::memcmp(&want[i], &got[i], sizeof(T)) != 0) {
        FAIL() << what << ": element " << i << " of " << want.size() << ": cpu " << +want[i]
               << ", cuda " << +got[i];
      }
    }
  }

  CpuBackend cpu_;
  std::unique_ptr<CudaBackend> gpu_;
  std::unique_ptr<Arena> cpu_arena_, gpu_arena_;
  std::unique_ptr<Queue> cq_, gq_;
};

// ---------------------------------------------------------------- the backend itself

TEST(CudaBackendCreate, NamesWhatIsMissing) {
  if (!HaveGpu()) {
    auto b = CudaBackend::Create(0);
    ASSERT_FALSE(b.ok());
    EXPECT_NE(b.status().message().find("CudaBackend: no usable CUDA device"), std::string::npos)
        << b.status().message();
    return;
  }
  int count = 0;
  ASSERT_EQ(cudaGetDeviceCount(&count), cudaSuccess);
  auto b = CudaBackend::Create(count);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("expected 0 to " + std::to_string(count - 1)),
            std::string::npos)
      << b.status().message();
}

TEST_F(CudaBackendTest, ArenasCopiesFillAndEvents) {
  EXPECT_EQ(gpu_->memory().name, "cuda:0");
  EXPECT_EQ(gpu_->memory().alignment, 256);
  auto too_big = gpu_->NewArena("huge", gpu_->memory().max_arena_bytes + 1);
  ASSERT_FALSE(too_big.ok());
  EXPECT_NE(too_big.status().message().find("NewArena 'huge'"), std::string::npos);

  const std::vector<float> host = RandomF32(1000, 1, 1.0f);
  Both<float> a = Make(host);
  auto copy = gpu_arena_->Allocate<float>(1000);
  ASSERT_TRUE(copy.ok());
  ASSERT_TRUE(gpu_->Copy(*gq_, DeviceSpan<const float>(a.g), copy.value()).ok());
  std::vector<float> back(1000);
  ASSERT_TRUE(
      gpu_->Download(*gq_, DeviceSpan<const float>(copy.value()), std::span<float>(back)).ok());
  ASSERT_TRUE(gq_->Synchronize().ok());
  EXPECT_EQ(back, host);

  // Fill of every element size, compared with the CPU backend's fill.
  for (int64_t n : {0, 1, 1000}) {
    Both<uint8_t> b8 = Filled<uint8_t>(n + 1, 0);
    Both<uint16_t> b16 = Filled<uint16_t>(n + 1, 0);
    Both<uint32_t> b32 = Filled<uint32_t>(n + 1, 0);
    Both<uint64_t> b64 = Filled<uint64_t>(n + 1, 0);
    RunBoth([&](Backend& be, Queue& q, auto pick) {
      if (BackendStatus s = be.Fill(q, pick(b8).first(n), uint8_t(0xa5)); !s.ok()) return s;
      if (BackendStatus s = be.Fill(q, pick(b16).first(n), uint16_t(0xbeef)); !s.ok()) return s;
      if (BackendStatus s = be.Fill(q, pick(b32).first(n), 0xdeadbeefu); !s.ok()) return s;
      return be.Fill(q, pick(b64).first(n), uint64_t(0x0123456789abcdefull));
    });
    ExpectSame(b8, "fill u8");
    ExpectSame(b16, "fill u16");
    ExpectSame(b32, "fill u32");
    ExpectSame(b64, "fill u64");
  }

  // Events: queue B waits for queue A's copy; Done turns true once synchronized.
  std::unique_ptr<Queue> other = gpu_->NewQueue();
  ASSERT_NE(other, nullptr);
  auto dst = gpu_arena_->Allocate<float>(1000);
  ASSERT_TRUE(dst.ok());
  ASSERT_TRUE(gpu_->Copy(*gq_, DeviceSpan<const float>(a.g), dst.value()).ok());
  const Event e = gq_->Record();
  ASSERT_TRUE(other->WaitFor(e).ok());
  std::vector<float> seen(1000);
  ASSERT_TRUE(
      gpu_->Download(*other, DeviceSpan<const float>(dst.value()), std::span<float>(seen)).ok());
  ASSERT_TRUE(other->Synchronize().ok());
  EXPECT_EQ(seen, host);
  ASSERT_TRUE(gq_->Synchronize().ok());
  auto done = other->Done(e);
  ASSERT_TRUE(done.ok());
  EXPECT_TRUE(done.value());
  EXPECT_FALSE(gq_->Done(Event{}).ok());  // never recorded

  // A queue of another backend is refused by name.
  SwiGluArgs bad;
  bad.m = 0;
  EXPECT_NE(gpu_->SwiGlu(*cq_, bad).message().find("SwiGlu: the queue is not one of this CUDA"),
            std::string::npos);
}

// The FP8 GEMM through the backend (cuBLASLt, kernels/cuda/fp8_gemm.h): not bitwise, held to
// fp8_gemm.h's bound |gpu - cpu| <= 2^-7 |cpu| + 2^-10 sum_kb sa sw sum_k |a w| (two bf16
// roundings one unit apart at most, partials accurate to 2^-10 of their magnitude), with UE8M0
// and f32 weight scales. A device without block-scaled FP8 (not sm_90) refuses it by name.
TEST_F(CudaBackendTest, GemmFp8WithinTheStatedBound) {
  const int64_t m = 7, n = 256, k = 512, kb = k / 128;
  std::mt19937 rng(81);
  std::vector<fp8> a(size_t(m * k)), w(size_t(n * k));
  for (auto& v : a) v = F32ToFp8(std::ldexp(float(int(rng() % 15) - 7), -int(rng() % 3)));
  for (auto& v : w) v = F32ToFp8(std::ldexp(float(int(rng() % 15) - 7), -int(rng() % 3)));
  std::vector<e8m0> as(size_t(m * kb)), ws(size_t(2 * kb));
  for (auto& s : as) s = e8m0(127 + int(rng() % 9) - 4);
  for (auto& s : ws) s = e8m0(127 + int(rng() % 9) - 4);
  std::vector<float> ws_f32(ws.size());
  for (size_t i = 0; i < ws.size(); ++i) ws_f32[i] = E8m0ToF32(ws[i]) * 1.5f;  // not powers of 2
  Both<fp8> da = Make(a), dw = Make(w);
  Both<e8m0> das = Make(as), dws = Make(ws);
  Both<float> dws32 = Make(ws_f32);
  for (bool f32_scales : {false, true}) {
    Both<bf16> c = Filled<bf16>(m * n, 0);
    GemmFp8Args g;
    g.ldc = n;
    g.m = m;
    g.n = n;
    g.k = k;
    g.a = da.c;
    g.a_scale = das.c;
    g.w = dw.c;
    if (f32_scales) {
      g.w_scale_f32 = dws32.c;
    } else {
      g.w_scale = dws.c;
    }
    g.c = c.c;
    ASSERT_TRUE(cpu_.GemmFp8(*cq_, g).ok());
    g.a = da.g;
    g.a_scale = das.g;
    g.w = dw.g;
    g.w_scale = f32_scales ? In<e8m0>{} : In<e8m0>(dws.g);
    g.w_scale_f32 = f32_scales ? In<float>(dws32.g) : In<float>{};
    g.c = c.g;
    const BackendStatus s = gpu_->GemmFp8(*gq_, g);
    if (!s.ok() && s.message().find("block-scaled FP8") != std::string::npos) {
      GTEST_SKIP() << s.message();
    }
    ASSERT_TRUE(s.ok()) << s.message();
    ASSERT_TRUE(gq_->Synchronize().ok());
    const std::vector<bf16> want = Cpu(c), got = Gpu(c);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double mag = 0.0;
        for (int64_t b = 0; b < kb; ++b) {
          double part = 0.0;
          for (int64_t t = b * 128; t < (b + 1) * 128; ++t) {
            part += std::fabs(double(Fp8ToF32(a[size_t(i * k + t)])) *
                              double(Fp8ToF32(w[size_t(j * k + t)])));
          }
          const double sw = f32_scales ? ws_f32[size_t((j / 128) * kb + b)]
                                       : E8m0ToF32(ws[size_t((j / 128) * kb + b)]);
          mag += double(E8m0ToF32(as[size_t(i * kb + b)])) * sw * part;
        }
        const double cpu = Bf16ToF32(want[size_t(i * n + j)]);
        const double gpu = Bf16ToF32(got[size_t(i * n + j)]);
        ASSERT_LE(std::fabs(gpu - cpu), std::ldexp(std::fabs(cpu), -7) + std::ldexp(mag, -10))
            << "row " << i << " col " << j << (f32_scales ? " (f32 scales)" : "");
      }
    }
  }
}

// No CUDA kernel takes attention over bf16 rows (the CUDA attention reads the packed pool).
TEST_F(CudaBackendTest, RefusesSparseAttentionOverRows) {
  Both<bf16> q = Filled<bf16>(64, 0);
  Both<bf16> kv = Filled<bf16>(64, 0);
  Both<int32_t> row_idx = Make(std::vector<int32_t>{0});
  Both<float> sink = Filled<float>(1, 0.0f);
  Both<bf16> out = Filled<bf16>(64, 0);
  SparseAttentionArgs att;
  att.q = q.g;
  att.kv = kv.g;
  att.row_idx = row_idx.g;
  att.n = 1;
  att.sink = sink.g;
  att.num_heads = 1;
  att.dim = 64;
  att.scale = 0.125f;
  att.out = out.g;
  const BackendStatus t = gpu_->SparseAttention(*gq_, att);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.message().find("SparseAttention: no CUDA kernel takes bf16 KV rows"),
            std::string::npos)
      << t.message();
}

// ---------------------------------------------------------------- QAT round trips, packed KV

// Rows with the edge values of a group: NaN, inf, ±448 and beyond, all zero, tiny (FP8 and FP4
// subnormal ranges), huge (near the bf16 maximum).
std::vector<bf16> EdgeRows(int64_t rows, int64_t ld, uint32_t seed) {
  std::vector<bf16> x = RandomBf16(size_t(rows * ld), seed, 1.0f);
  std::mt19937 rng(seed);
  for (int64_t r = 0; r < rows; ++r) {
    bf16* row = x.data() + r * ld;
    const float scale = std::ldexp(1.0f, int(rng() % 60) - 30);
    for (int64_t i = 0; i < ld; ++i) row[i] = F32ToBf16(Bf16ToF32(row[i]) * scale);
    switch (r % 6) {
      case 0:
        row[3] = F32ToBf16(kNan);
        break;
      case 1:
        row[70] = F32ToBf16(-kInf);
        break;
      case 2:
        row[5] = F32ToBf16(448.0f), row[6] = F32ToBf16(-500.0f);
        break;
      case 3:
        for (int64_t i = 0; i < std::min<int64_t>(ld, 64); ++i) row[i] = 0;
        break;
      case 4:
        for (int64_t i = 0; i < ld; ++i) row[i] = F32ToBf16(Bf16ToF32(row[i]) * 1e-35f);
        break;
      default:
        row[9] = F32ToBf16(3.0e38f);
        break;
    }
  }
  return x;
}

TEST_F(CudaBackendTest, QatRoundTripsBitwise) {
  const int64_t rows = 24, ld = 600, n = 576;  // 9 groups of 64, 18 of 32; a tail past n
  for (int64_t block : {64, 32, 48}) {         // 48: a shorter last group
    for (bool fp4 : {false, true}) {
      Both<bf16> x = Make(EdgeRows(rows, ld, uint32_t(block)));
      RunBoth([&](Backend& be, Queue& q, auto pick) {
        QuantSimulateArgs a;
        a.x = pick(x);
        a.rows = rows;
        a.ld = ld;
        a.n = n;
        a.block = block;
        return fp4 ? be.Fp4SimulateInPlace(q, a) : be.Fp8SimulateInPlace(q, a);
      });
      ExpectSame(x, std::string(fp4 ? "fp4" : "fp8") + " simulate block " + std::to_string(block));
    }
  }
}

TEST_F(CudaBackendTest, PackedKvAndIndexerKeysBitwise) {
  // V4-Flash main entries: 448 nope + 64 rope, 584 bytes; a nope with a short last group too.
  for (const auto& [nope, rope, entry_bytes] : {std::tuple{448, 64, 584}, {100, 6, 128}}) {
    const int64_t rows = 30, ldx = nope + rope + 3;
    Both<bf16> x = Make(EdgeRows(rows, ldx, uint32_t(nope)));
    Both<uint8_t> entries = Filled<uint8_t>(rows * entry_bytes, 0xcd);
    RunBoth([&](Backend& be, Queue& q, auto pick) {
      KvPackArgs a;
      a.rows = rows;
      a.nope = nope;
      a.rope = rope;
      a.entry_bytes = entry_bytes;
      a.x = pick(x);
      a.ldx = ldx;
      a.entries = pick(entries);
      return be.PackKvEntries(q, a);
    });
    ExpectSame(entries, "packed kv entries");
    Both<bf16> back = Filled<bf16>(rows * ldx, 0x1111);
    RunBoth([&](Backend& be, Queue& q, auto pick) {
      KvUnpackArgs a;
      a.rows = rows;
      a.nope = nope;
      a.rope = rope;
      a.entry_bytes = entry_bytes;
      a.entries = pick(entries);
      a.x = pick(back);
      a.ldx = ldx;
      return be.UnpackKvEntries(q, a);
    });
    ExpectSame(back, "unpacked kv entries");
  }
  const int64_t rows = 40, dim = 128, key_bytes = 68;
  Both<bf16> keys = Make(EdgeRows(rows, dim, 99));
  Both<uint8_t> packed = Filled<uint8_t>(rows * key_bytes, 0xcd);
  RunBoth([&](Backend& be, Queue& q, auto pick) {
    KvPackArgs a;
    a.rows = rows;
    a.nope = dim;
    a.entry_bytes = key_bytes;
    a.x = pick(keys);
    a.ldx = dim;
    a.entries = pick(packed);
    return be.PackIndexerKeys(q, a);
  });
  ExpectSame(packed, "packed indexer keys");
  Both<bf16> back = Filled<bf16>(rows * dim, 0x1111);
  RunBoth([&](Backend& be, Queue& q, auto pick) {
    KvUnpackArgs a;
    a.rows = rows;
    a.nope = dim;
    a.entry_bytes = key_bytes;
    a.entries = pick(packed);
    a.x = pick(back);
    a.ldx = dim;
    return be.UnpackIndexerKeys(q, a);
  });
  ExpectSame(back, "unpacked indexer keys");
}

// ---------------------------------------------------------------- RoPE

TEST_F(CudaBackendTest, RopeFrequenciesAndRotationBitwise) {
  const int64_t rope_dim = 64, heads = 8, head_dim = 512, tokens = 9;
  Both<float> freqs = Filled<float>(rope_dim / 2, 0.0f);
  for (bool yarn : {false, true}) {
    RunBoth([&](Backend& be, Queue& q, auto pick) {
      RopeFrequenciesArgs a;
      a.rope_dim = rope_dim;
      a.base = yarn ? 160000.0 : 10000.0;
      a.yarn = yarn;
      a.factor = 16.0;
      a.original_max_position = 65536;
      a.freqs = pick(freqs);
      return be.RopeFrequencies(q, a);
    });
    ExpectSame(freqs, "rope frequencies");
    std::vector<bf16> xs = RandomBf16(tokens * heads * head_dim, 7, 2.0f);
    xs[head_dim - 64] = F32ToBf16(kNan);  // NaN in one rotated pair
    xs[head_dim - 63] = F32ToBf16(448.0f);
    xs[2 * head_dim - 62] = F32ToBf16(-kInf);
    const std::vector<int64_t> pos = {0, 1, 2, 127, 4096, 65535, 1 << 20, 1000000, (1 << 24) - 1};
    Both<int64_t> positions = Make(pos);
    for (bool inverse : {false, true}) {
      Both<bf16> x = Make(xs);
      RunBoth([&](Backend& be, Queue& q, auto pick) {
        RopeArgs a;
        a.x = pick(x);
        a.ld = heads * head_dim;
        a.head_stride = head_dim;
        a.num_tokens = tokens;
        a.num_heads = heads;
        a.rope_offset = head_dim - rope_dim;
        a.rope_dim = rope_dim;
        a.positions = pick(positions);
        a.freqs = pick(freqs);
        a.inverse = inverse;
        return be.ApplyRope(q, a);
      });
      ExpectSame(x, inverse ? "inverse rope" : "rope");
    }
  }
}

// ---------------------------------------------------------------- router, SwiGLU

TEST_F(CudaBackendTest, RouterBitwise) {
  for (const auto& [m, experts, top_k] : {std::tuple{37, 256, 6}, {5, 7, 7}, {3, 384, 8}}) {
    std::vector<float> logits = RandomF32(size_t(m * experts), uint32_t(experts), 4.0f);
    // Edge values in token 0: NaN, ±inf, the z > 20 branch, a very negative logit, ties.
    logits[0] = kNan;
    logits[1] = kInf;
    logits[2] = -kInf;
    logits[3] = 25.0f;
    logits[4] = -100.0f;
    if (experts > 6) logits[5] = logits[6] = 3.0f;
    for (int64_t e = 0; e < experts; ++e) logits[size_t(experts + e)] = 1.5f;  // token 1: all tied
    Both<float> z = Make(logits);
    Both<float> bias = Make(RandomF32(size_t(experts), 3, 0.1f));
    std::vector<int64_t> tid2eid(size_t(m * (top_k + 2)));
    std::mt19937 rng(5);
    for (auto& v : tid2eid) v = int64_t(rng() % uint32_t(experts));
    Both<int64_t> hash = Make(tid2eid);
    for (bool hashed : {false, true}) {
      Both<int32_t> idx = Filled<int32_t>(m * top_k, -7);
      Both<float> w = Filled<float>(m * top_k, 0.0f);
      RunBoth([&](Backend& be, Queue& q, auto pick) {
        RouteArgs a;
        a.logits = pick(z);
        if (hashed) {
          a.hash_ids = pick(hash);
          a.ld_hash = top_k + 2;
        } else {
          a.bias = pick(bias);
        }
        a.m = m;
        a.num_experts = experts;
        a.top_k = top_k;
        a.route_scale = 2.5f;
        a.expert_idx = pick(idx);
        a.weights = pick(w);
        return be.Route(q, a);
      });
      ExpectSame(idx, hashed ? "hash route ids" : "route ids");
      ExpectSame(w, hashed ? "hash route weights" : "route weights");
    }
  }
}

TEST_F(CudaBackendTest, SwiGluBitwise) {
  const int64_t m = 6, inter = 2048, ld_in = 2100, ld_out = 2080;
  std::vector<bf16> gate = RandomBf16(size_t(m * ld_in), 11, 6.0f);
  std::vector<bf16> up = RandomBf16(size_t(m * ld_in), 12, 6.0f);
  gate[0] = F32ToBf16(kNan);
  gate[1] = F32ToBf16(kInf);
  gate[2] = F32ToBf16(-kInf);
  gate[3] = F32ToBf16(448.0f);
  up[4] = F32ToBf16(-448.0f);
  up[5] = F32ToBf16(kNan);
  gate[6] = F32ToBf16(-90.0f);  // e^90 overflows f32: the gate goes to -0
  Both<bf16> g = Make(gate), u = Make(up);
  Both<float> rw = Make(RandomF32(size_t(m), 13, 1.0f));
  for (bool weighted : {false, true}) {
    Both<bf16> out = Filled<bf16>(m * ld_out, 0x1234);
    RunBoth([&](Backend& be, Queue& q, auto pick) {
      SwiGluArgs a;
      a.gate = pick(g);
      a.up = pick(u);
      a.ld_in = ld_in;
      if (weighted) a.row_weight = pick(rw);
      a.m = m;
      a.inter = inter;
      a.limit = 10.0f;
      a.out = pick(out);
      a.ld_out = ld_out;
      return be.SwiGlu(q, a);
    });
    ExpectSame(out, weighted ? "swiglu weighted" : "swiglu");
  }
}

// ---------------------------------------------------------------- hyper-connections

TEST_F(CudaBackendTest, HyperConnectionsBitwise) {
  for (int64_t d : {4096, 13}) {
    const int64_t m = 5, hc = 4, n_mix = (2 + hc) * hc, width = hc * d;
    std::vector<bf16> hs = RandomBf16(size_t(m * width), uint32_t(d), 1.0f);
    for (int64_t i = 0; i < width; ++i) hs[size_t(2 * width + i)] = 0;  // token 2: all zero
    hs[size_t(3 * width)] = F32ToBf16(448.0f);
    Both<bf16> h = Make(hs);
    Both<float> fn = Make(RandomF32(size_t(n_mix * width), 21, 0.02f));
    Both<float> scale = Make(std::vector<float>{0.5f, 0.8f, 1.7f});
    Both<float> base = Make(RandomF32(size_t(n_mix), 22, 1.0f));
    Both<bf16> x = Filled<bf16>(m * d, 0);
    Both<float> post = Filled<float>(m * hc, 0.0f), comb = Filled<float>(m * hc * hc, 0.0f);
    RunBoth([&](Backend& be, Queue& q, auto pick) {
      HcPreArgs a;
      a.h = pick(h);
      a.fn = pick(fn);
      a.scale = pick(scale);
      a.base = pick(base);
      a.m = m;
      a.hc = hc;
      a.d = d;
      a.sinkhorn_iters = 20;
      a.x = pick(x);
      a.post = pick(post);
      a.comb = pick(comb);
      return be.HcPre(q, a);
    });
    ExpectSame(x, "hc_pre x");
    ExpectSame(post, "hc_pre post");
    ExpectSame(comb, "hc_pre comb");

    Both<bf16> xin = Make(RandomBf16(size_t(m * d), 23, 1.0f));
    Both<bf16> h_out = Filled<bf16>(m * width, 0);
    RunBoth([&](Backend& be, Queue& q, auto pick) {
      HcPostArgs a;
      a.x = pick(xin);
      a.res = pick(h);
      a.post = pick(post);
      a.comb = pick(comb);
      a.m = m;
      a.hc = hc;
      a.d = d;
      a.h_out = pick(h_out);
      return be.HcPost(q, a);
    });
    ExpectSame(h_out, "hc_post");

    Both<float> fn_head = Make(RandomF32(size_t(hc * width), 24, 0.02f));
    Both<float> scale_head = Make(std::vector<float>{0.9f});
    Both<float> base_head = Make(RandomF32(size_t(hc), 25, 1.0f));
    Both<bf16> y = Filled<bf16>(m * d, 0);
    RunBoth([&](Backend& be, Queue& q, auto pick) {
      HcHeadArgs a;
      a.h = pick(h);
      a.fn = pick(fn_head);
      a.scale = pick(scale_head);
      a.base = pick(base_head);
      a.m = m;
      a.hc = hc;
      a.d = d;
      a.y = pick(y);
      return be.HcHead(q, a);
    });
    ExpectSame(y, "hc_head");
  }
}

// ---------------------------------------------------------------- compressor

TEST_F(CudaBackendTest, CompressPoolBitwiseAndBadOffsetsReported) {
  const int64_t d = 512, rows = 300, entries = 7;
  std::vector<float> kv = RandomF32(size_t(rows * d), 31, 1.0f);
  std::vector<float> sc = RandomF32(size_t(rows * d), 32, 3.0f);
  for (int64_t c = 0; c < d; ++c) sc[size_t(5 * d + c)] = -kInf;  // row 5: a masked slot
  for (int64_t c = 0; c < d; ++c) sc[size_t(6 * d + c)] = -kInf;  // row 6 too
  sc[7 * d] = kNan;
  sc[8 * d + 1] = 80.0f;  // dominates its channel
  Both<float> state = Make(kv), score = Make(sc);
  for (int64_t n_slots : {4, 128}) {
    std::vector<int64_t> offsets(size_t(entries * n_slots));
    std::mt19937 rng{uint32_t(n_slots)};
    for (auto& o : offsets) o = int64_t(rng() % uint32_t(rows)) * d;
    offsets[0] = 5 * d;  // entry 0 starts with a masked slot
    for (int64_t s = 0; s < std::min<int64_t>(n_slots, 2); ++s) {
      offsets[size_t(n_slots + s)] = (5 + s) * d;  // entry 1: masked slots
    }
    if (n_slots == 4) {
      offsets[size_t(n_slots + 2)] = offsets[size_t(n_slots + 3)] = 5 * d;  // entry 1: all masked
    }
    offsets[size_t(2 * n_slots)] = 7 * d;
    offsets[size_t(3 * n_slots)] = 8 * d;
    offsets[size_t(4 * n_slots)] = 3;  // not row-aligned: any element offset is allowed
    Both<int64_t> off = Make(offsets);
    Both<float> out = Filled<float>(entries * d, 0.0f);
    RunBoth([&](Backend& be, Queue& q, auto pick) {
      CompressPoolArgs a;
      a.kv = pick(state);
      a.score = pick(score);
      a.slot_offsets = pick(off);
      a.num_entries = entries;
      a.n_slots = n_slots;
      a.d = d;
      a.out = pick(out);
      return be.CompressPool(q, a);
    });
    ExpectSame(out, "compress pool n_slots " + std::to_string(n_slots));
  }
  // An offset past the state: the CPU backend refuses it as it reads; the CUDA backend skips the
  // entry and reports it at the next synchronization, and the queue keeps working.
  Both<int64_t> bad = Make(std::vector<int64_t>{0, rows * d});
  Both<float> out = Filled<float>(d, 0.0f);
  CompressPoolArgs a;
  a.kv = state.g;
  a.score = score.g;
  a.slot_offsets = bad.g;
  a.num_entries = 1;
  a.n_slots = 2;
  a.d = d;
  a.out = out.g;
  ASSERT_TRUE(gpu_->CompressPool(*gq_, a).ok());
  const BackendStatus s = gq_->Synchronize();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("CompressPool: slot_offsets[1] = " + std::to_string(rows * d)),
            std::string::npos)
      << s.message();
  EXPECT_TRUE(gq_->Synchronize().ok());  // reported once
}

// ---------------------------------------------------------------- MoE permutation

TEST_F(CudaBackendTest, MoePermuteGatherScatterCombineBitwise) {
  const int64_t n = 37, k = 6, d = 4096;
  std::vector<int32_t> ids(size_t(n * k));
  std::mt19937 rng(41);
  for (auto& e : ids) e = int32_t(rng() % 256);
  for (int64_t s = 0; s < k; ++s) ids[size_t(s)] = 70;  // token 0: one expert in every slot
  Both<int32_t> expert_idx = Make(ids);
  for (const auto& [first, num] : {std::pair{0, 256}, {64, 64}, {250, 10}, {300, 4}}) {
    Both<int64_t> offsets = Filled<int64_t>(num + 1, -1);
    Both<int32_t> order = Filled<int32_t>(n * k, -1);
    RunBoth([&](Backend& be, Queue& q, auto pick) {
      MoePermuteArgs a;
      a.expert_idx = pick(expert_idx);
      a.n = n;
      a.k = k;
      a.first_expert = first;
      a.num_experts = num;
      a.offsets = pick(offsets);
      a.order = pick(order);
      return be.MoePermute(q, a);
    });
    ExpectSame(offsets, "permute offsets");
    ExpectSame(order, "permute order");  // unwritten tail stays -1 on both
  }

  // Gather token rows by assignment (divisor k), 16-byte and byte-wise paths, then scatter back.
  Both<bf16> tokens = Make(RandomBf16(size_t(n * d), 42, 1.0f));
  std::vector<int32_t> flat(size_t(n * k));
  for (size_t i = 0; i < flat.size(); ++i) flat[i] = int32_t((i * 7919) % flat.size());
  Both<int32_t> index = Make(flat);
  Both<bf16> gathered = Filled<bf16>(n * k * d, 0);
  RunBoth([&](Backend& be, Queue& q, auto pick) {
    RowCopyArgs a;
    a.src = pick(tokens).as_bytes();
    a.ld_src = d * 2;
    a.index = pick(index);
    a.rows = n * k;
    a.divisor = k;
    a.row_bytes = d * 2;
    a.dst = pick(gathered).as_writable_bytes();
    a.ld_dst = d * 2;
    return be.GatherRows(q, a);
  });
  ExpectSame(gathered, "gather");
  Both<uint8_t> odd_src = Make(std::vector<uint8_t>(size_t(n * 11), 0));
  {
    std::vector<uint8_t> bytes(size_t(n * 11));
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = uint8_t(i * 31);
    odd_src = Make(bytes);
  }
  Both<uint8_t> odd_dst = Filled<uint8_t>(n * k * 9, 0xee);
  RunBoth([&](Backend& be, Queue& q, auto pick) {
    RowCopyArgs a;
    a.src = pick(odd_src);
    a.ld_src = 11;
    a.index = pick(index);
    a.rows = n * k;
    a.divisor = k;
    a.row_bytes = 7;
    a.dst = pick(odd_dst);
    a.ld_dst = 9;
    return be.GatherRows(q, a);
  });
  ExpectSame(odd_dst, "gather bytes");
  std::vector<int32_t> perm(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) perm[size_t(i)] = int32_t((i * 5) % n);
  Both<int32_t> pidx = Make(perm);
  Both<bf16> scattered = Filled<bf16>(n * d, 0);
  RunBoth([&](Backend& be, Queue& q, auto pick) {
    RowCopyArgs a;
    a.src = pick(tokens).as_bytes();
    a.ld_src = d * 2;
    a.index = pick(pidx);
    a.rows = n;
    a.divisor = 1;
    a.row_bytes = d * 2;
    a.dst = pick(scattered).as_writable_bytes();
    a.ld_dst = d * 2;
    return be.ScatterRows(q, a);
  });
  ExpectSame(scattered, "scatter");

  // A bad index on the device: skipped and reported by name at synchronization.
  Both<int32_t> bad = Make(std::vector<int32_t>{0, int32_t(n * k)});
  RowCopyArgs g;
  g.src = tokens.g.as_bytes();
  g.ld_src = d * 2;
  g.index = bad.g;
  g.rows = 2;
  g.divisor = k;
  g.row_bytes = d * 2;
  g.dst = gathered.g.as_writable_bytes();
  g.ld_dst = d * 2;
  ASSERT_TRUE(gpu_->GatherRows(*gq_, g).ok());
  const BackendStatus s = gq_->Synchronize();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("GatherRows: index[1] names source row " + std::to_string(n)),
            std::string::npos)
      << s.message();

  // Combine: ties between slots of one expert, NaN in a routed row, with and without shared.
  std::vector<bf16> routed = RandomBf16(size_t(n * k * d), 43, 1.0f);
  routed[size_t(3 * d + 5)] = F32ToBf16(kNan);
  routed[size_t(4 * d + 6)] = F32ToBf16(448.0f);
  Both<bf16> r = Make(routed);
  Both<bf16> shared = Make(RandomBf16(size_t(n * d), 44, 1.0f));
  for (bool with_shared : {false, true}) {
    Both<bf16> out = Filled<bf16>(n * d, 0);
    RunBoth([&](Backend& be, Queue& q, auto pick) {
      MoeCombineArgs a;
      a.expert_idx = pick(expert_idx);
      a.routed = pick(r);
      if (with_shared) a.shared = pick(shared);
      a.n = n;
      a.k = k;
      a.d = d;
      a.out = pick(out);
      return be.MoeCombine(q, a);
    });
    ExpectSame(out, with_shared ? "combine + shared" : "combine");
  }
}

// ---------------------------------------------------------------- dense GEMMs

TEST_F(CudaBackendTest, DenseGemmsBitwise) {
  const int64_t m = 3, n = 37, k = 133, ld = 140;
  std::vector<bf16> ab = RandomBf16(size_t(m * ld), 51, 1.0f),
                    wb = RandomBf16(size_t(n * ld), 52, 1.0f);
  ab[7] = F32ToBf16(kNan);
  Both<bf16> a_bf16 = Make(ab), w_bf16 = Make(wb);
  Both<float> a_f32 = Make(RandomF32(size_t(m * ld), 53, 1.0f));
  Both<float> w_f32 = Make(RandomF32(size_t(n * ld), 54, 1.0f));
  for (bool bf16_out : {false, true}) {
    Both<bf16> c = Filled<bf16>(m * n, 0);
    Both<float> c32 = Filled<float>(m * n, 0.0f);
    RunBoth([&](Backend& be, Queue& q, auto pick) {
      GemmBf16Args a;
      a.a = pick(a_bf16);
      a.lda = ld;
      a.w = pick(w_bf16);
      a.ldw = ld;
      if (bf16_out) {
        a.c = pick(c);
      } else {
        a.c_f32 = pick(c32);
      }
      a.ldc = n;
      a.m = m;
      a.n = n;
      a.k = k;
      return be.GemmBf16(q, a);
    });
    ExpectSame(c, "gemm bf16 out");
    ExpectSame(c32, "gemm bf16 f32 out");
  }
  for (int combo = 0; combo < 4; ++combo) {
    Both<float> c = Filled<float>(m * n, 0.0f);
    RunBoth([&](Backend& be, Queue& q, auto pick) {
      GemmF32Args a;
      if (combo & 1) {
        a.a_bf16 = pick(a_bf16);
      } else {
        a.a = pick(a_f32);
      }
      if (combo & 2) {
        a.w_bf16 = pick(w_bf16);
      } else {
        a.w = pick(w_f32);
      }
      a.lda = a.ldw = ld;
      a.c = pick(c);
      a.ldc = n;
      a.m = m;
      a.n = n;
      a.k = k;
      return be.GemmF32(q, a);
    });
    ExpectSame(c, "gemm f32 combo " + std::to_string(combo));
  }
}

// ---------------------------------------------------------------- the earlier kernels, through the
// backend

TEST_F(CudaBackendTest, NormsQuantIndexerThroughTheBackendBitwise) {
  const int64_t m = 9, d = 4096;
  Both<bf16> x = Make(RandomBf16(size_t(m * d), 61, 3.0f));
  Both<bf16> w = Make(RandomBf16(size_t(d), 62, 1.0f));
  Both<bf16> y = Filled<bf16>(m * d, 0);
  RunBoth([&](Backend& be, Queue& q, auto pick) {
    RmsNormArgs a;
    a.x = pick(x);
    a.ldx = d;
    a.w = pick(w);
    a.m = m;
    a.d = d;
    a.y = pick(y);
    a.ldy = d;
    return be.RmsNorm(q, a);
  });
  ExpectSame(y, "rms norm");
  Both<fp8> qv = Filled<fp8>(m * d, 0);
  Both<e8m0> qs = Filled<e8m0>(m * d / 128, 0);
  RunBoth([&](Backend& be, Queue& q, auto pick) {
    ActQuantArgs a;
    a.x = pick(y);
    a.ldx = d;
    a.m = m;
    a.k = d;
    a.q = pick(qv);
    a.scale = pick(qs);
    return be.ActQuantFp8(q, a);
  });
  ExpectSame(qv, "act quant values");
  ExpectSame(qs, "act quant scales");
  const int64_t n = 3000, dim = 128, heads = 64;
  Both<bf16> keys = Make(RandomBf16(size_t(n * dim), 63, 1.0f));
  Both<bf16> iq = Make(RandomBf16(size_t(heads * dim), 64, 1.0f));
  Both<bf16> iw = Make(RandomBf16(size_t(heads), 65, 0.1f));
  RunBoth([&](Backend& be, Queue& q, auto pick) {
    HadamardArgs a;
    a.x = pick(keys);
    a.rows = n;
    a.dim = dim;
    return be.HadamardRotateBf16(q, a);
  });
  ExpectSame(keys, "hadamard");
  Both<float> scores = Filled<float>(3 * n, 0.0f);
  RunBoth([&](Backend& be, Queue& q, auto pick) {
    for (int64_t r = 0; r < 3; ++r) {
      IndexerScoreArgs a;
      a.q = pick(iq);
      a.w = pick(iw);
      a.keys = pick(keys);
      a.ldk = dim;
      a.n = n - r * 100;
      a.num_heads = heads;
      a.dim = dim;
      a.scores = pick(scores).subspan(r * n, n - r * 100);
      if (BackendStatus s = be.IndexerScores(q, a); !s.ok()) return s;
    }
    return BackendStatus::Ok();
  });
  ExpectSame(scores, "indexer scores");
  Both<int32_t> top = Filled<int32_t>(3 * 512, -1);
  RunBoth([&](Backend& be, Queue& q, auto pick) {
    TopKArgs a;
    a.scores = pick(scores);
    a.ld_scores = n;
    a.rows = 3;
    a.n = n - 200;
    a.k = 512;
    a.idx = pick(top);
    return be.TopK(q, a);
  });
  ExpectSame(top, "top-k rows");
}

// The FP8 x FP4 GEMM through the backend, on values whose 32-wide partial sums are small
// integers (exact in the tensor core's accumulator): bitwise.
TEST_F(CudaBackendTest, GemmFp8Fp4ExactPartialsBitwise) {
  const int64_t m = 5, n = 128, k = 256;
  std::mt19937 rng(71);
  std::vector<fp8> a(size_t(m * k));
  for (auto& v : a) v = F32ToFp8(float(int(rng() % 5) - 2));  // -2..2
  std::vector<uint8_t> w(size_t(n * k / 2));
  for (auto& v : w) v = uint8_t(rng());  // any E2M1 pair: ±{0, .5, 1, 1.5, 2, 3, 4, 6}
  std::vector<e8m0> as(size_t(m * k / 128)), ws(size_t(n * k / 32));
  for (auto& s : as) s = e8m0(127 + int(rng() % 9) - 4);
  for (auto& s : ws) s = e8m0(127 + int(rng() % 9) - 4);
  Both<fp8> da = Make(a);
  Both<uint8_t> dw = Make(w);
  Both<e8m0> das = Make(as), dws = Make(ws);
  Both<bf16> c = Filled<bf16>(m * n, 0);
  RunBoth([&](Backend& be, Queue& q, auto pick) {
    GemmFp8Fp4Args g;
    g.a = pick(da);
    g.a_scale = pick(das);
    g.w = pick(dw);
    g.w_scale = pick(dws);
    g.c = pick(c);
    g.ldc = n;
    g.m = m;
    g.n = n;
    g.k = k;
    return be.GemmFp8Fp4(q, g);
  });
  ExpectSame(c, "gemm fp8 x fp4");
}

// ---------------------------------------------------------------- model ops

TEST_F(CudaBackendTest, ModelOpsBitwise) {
  const int64_t n = 19, d = 4096, hc = 4, first = 1000, num_rows = 300;
  std::vector<bf16> table_host = RandomBf16(size_t(num_rows * d), 61, 1.0f);
  Both<bf16> table = Make(table_host);
  std::vector<int32_t> toks(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) toks[size_t(r)] = int32_t(900 + r * 23);  // some outside
  Both<int32_t> tokens = Make(toks);
  Both<bf16> e = Filled<bf16>(n * d, 0x7fff);
  RunBoth([&](Backend& be, Queue& q, auto pick) {
    EmbedRowsArgs a;
    a.table = pick(table);
    a.tokens = pick(tokens);
    a.first = first;
    a.num_rows = num_rows;
    a.n = n;
    a.d = d;
    a.out = pick(e);
    return be.EmbedRows(q, a);
  });
  ExpectSame(e, "EmbedRows");
  Both<bf16> h = Filled<bf16>(n * hc * d, 0x7fff);
  RunBoth([&](Backend& be, Queue& q, auto pick) {
    RepeatRowsArgs a;
    a.x = pick(e);
    a.n = n;
    a.copies = hc;
    a.d = d;
    a.out = pick(h);
    return be.RepeatRows(q, a);
  });
  ExpectSame(h, "RepeatRows");
  Both<bf16> b = Make(RandomBf16(size_t(n * hc * d), 62, 8.0f));
  Both<bf16> sum = Filled<bf16>(n * hc * d, 0);
  RunBoth([&](Backend& be, Queue& q, auto pick) {
    BroadcastAddArgs a;
    a.a = pick(e);
    a.b = pick(b);
    a.n = n;
    a.copies = hc;
    a.d = d;
    a.out = pick(sum);
    return be.BroadcastAdd(q, a);
  });
  ExpectSame(sum, "BroadcastAdd");
  Both<float> wide = Filled<float>(n * d, -1.0f);
  Both<float> f = Make(RandomF32(size_t(n * d), 63, 100.0f));
  Both<bf16> narrow = Filled<bf16>(n * d, 0);
  RunBoth([&](Backend& be, Queue& q, auto pick) {
    ConvertBf16ToF32Args w;
    w.x = pick(e);
    w.count = n * d;
    w.y = pick(wide);
    if (BackendStatus s = be.ConvertBf16ToF32(q, w); !s.ok()) return s;
    ConvertF32ToBf16Args a;
    a.x = pick(f);
    a.count = n * d;
    a.y = pick(narrow);
    return be.ConvertF32ToBf16(q, a);
  });
  ExpectSame(wide, "ConvertBf16ToF32");
  ExpectSame(narrow, "ConvertF32ToBf16");
  Both<bf16> inter = Filled<bf16>(n * hc * d, 0);
  RunBoth([&](Backend& be, Queue& q, auto pick) {
    InterleaveRowsArgs a;
    a.src = pick(h).as_bytes();
    a.blocks = hc;
    a.rows = n;
    a.row_bytes = d * 2;
    a.dst = pick(inter).as_writable_bytes();
    return be.InterleaveRows(q, a);
  });
  ExpectSame(inter, "InterleaveRows");
}

// ---------------------------------------------------------------- MoE ops

TEST_F(CudaBackendTest, RoutePerRowKBitwise) {
  const int64_t m = 9, experts = 256, top_k = 6;
  const std::vector<int32_t> row_k = {6, 1, 2, 6, 4, 3, 5, 6, 1};
  Both<float> z = Make(RandomF32(size_t(m * experts), 17, 4.0f));
  Both<float> bias = Make(RandomF32(size_t(experts), 18, 0.1f));
  Both<int32_t> ks = Make(row_k);
  std::vector<int64_t> tid2eid(size_t(m * top_k));
  for (size_t i = 0; i < tid2eid.size(); ++i) tid2eid[i] = int64_t((i * 37) % experts);
  Both<int64_t> hash = Make(tid2eid);
  for (bool hashed : {false, true}) {
    Both<int32_t> idx = Filled<int32_t>(m * top_k, -7);
    Both<float> w = Filled<float>(m * top_k, -1.0f);
    RunBoth([&](Backend& be, Queue& q, auto pick) {
      RoutePerRowKArgs a;
      a.logits = pick(z);
      if (hashed) {
        a.hash_ids = pick(hash);
        a.ld_hash = top_k;
      } else {
        a.bias = pick(bias);
      }
      a.row_top_k = pick(ks);
      a.m = m;
      a.num_experts = experts;
      a.top_k = top_k;
      a.route_scale = 2.5f;
      a.expert_idx = pick(idx);
      a.weights = pick(w);
      return be.RoutePerRowK(q, a);
    });
    ExpectSame(idx, hashed ? "per-row-K hash route ids" : "per-row-K route ids");
    ExpectSame(w, hashed ? "per-row-K hash route weights" : "per-row-K route weights");
  }
}

// Exact partials (small integer activations and scales near 1), so the tensor-core result is the
// CPU's bit for bit; a window that cuts groups, an empty group and rows past the last group.
TEST_F(CudaBackendTest, GroupedGemmFp8Fp4WindowBitwise) {
  const int64_t groups = 3, rows = 40, n = 128, k = 256, row_begin = 5;
  const std::vector<int64_t> offsets = {0, 20, 20, 41};
  std::mt19937 rng(72);
  std::vector<fp8> a(size_t(rows * k));
  for (auto& v : a) v = F32ToFp8(float(int(rng() % 5) - 2));
  std::vector<e8m0> as(size_t(rows * k / 128));
  for (auto& s : as) s = e8m0(127 + int(rng() % 9) - 4);
  Both<fp8> da = Make(a);
  Both<e8m0> das = Make(as);
  Both<int64_t> doff = Make(offsets);
  std::vector<Both<uint8_t>> w;
  std::vector<Both<e8m0>> ws;
  for (int64_t g = 0; g < groups; ++g) {
    std::vector<uint8_t> wg(size_t(n * k / 2));
    for (auto& v : wg) v = uint8_t(rng());
    std::vector<e8m0> sg(size_t(n * k / 32));
    for (auto& s : sg) s = e8m0(127 + int(rng() % 9) - 4);
    w.push_back(Make(wg));
    ws.push_back(Make(sg));
  }
  Both<bf16> c = Filled<bf16>(rows * n, F32ToBf16(-3.0f));
  RunBoth([&](Backend& be, Queue& q, auto pick) {
    std::vector<In<uint8_t>> wl;
    std::vector<In<e8m0>> sl;
    for (int64_t g = 0; g < groups; ++g) {
      wl.push_back(pick(w[g]));
      sl.push_back(pick(ws[g]));
    }
    GroupedGemmFp8Fp4Args g;
    g.a = pick(da);
    g.a_scale = pick(das);
    g.w = wl;
    g.w_scale = sl;
    g.offsets = pick(doff);
    g.row_begin = row_begin;
    g.rows = rows;
    g.c = pick(c);
    g.ldc = n;
    g.n = n;
    g.k = k;
    return be.GroupedGemmFp8Fp4(q, g);
  });
  ExpectSame(c, "grouped gemm fp8 x fp4");
}

// ---- attention ops

TEST_F(CudaBackendTest, AttentionOpsBitwise) {
  // CompressorUpdate with overlap (ratio 4) and without (ratio 128 as HCA), from unaligned starts.
  for (const bool overlap : {true, false}) {
    const int64_t ratio = overlap ? 4 : 128, d = 512, width = overlap ? 2 * d : d;
    const int64_t state_rows = (overlap ? 2 : 1) * ratio;
    for (const auto& [start, n] : {std::pair<int64_t, int64_t>{5, 2}, {3, 300}}) {
      std::vector<float> sc = RandomF32(size_t(state_rows * width), 51, 1.0f);
      sc[3] = -kInf;
      Both<float> k = Make(RandomF32(size_t(n * width), 52, 1.0f));
      Both<float> g = Make(RandomF32(size_t(n * width), 53, 2.0f));
      Both<float> ape = Make(RandomF32(size_t(ratio * width), 54, 1.0f));
      Both<float> kv = Make(RandomF32(size_t(state_rows * width), 55, 1.0f)), score = Make(sc);
      const int64_t entries = std::max<int64_t>(CompressorEntries(start, n, ratio), 1);
      Both<float> pooled = Filled<float>(entries * d, 0.0f);
      Both<int64_t> pos = Filled<int64_t>(entries, -1);
      RunBoth([&](Backend& be, Queue& q, auto pick) {
        CompressorUpdateArgs a;
        a.k = pick(k);
        a.g = pick(g);
        a.ape = pick(ape);
        a.n = n;
        a.width = width;
        a.d = d;
        a.ratio = ratio;
        a.overlap = overlap;
        a.start_pos = start;
        a.state_kv = pick(kv);
        a.state_score = pick(score);
        a.pooled = pick(pooled);
        a.entry_pos = pick(pos);
        return be.CompressorUpdate(q, a);
      });
      const std::string what = "compressor update ratio " + std::to_string(ratio);
      ExpectSame(kv, what + " kv");
      ExpectSame(score, what + " score");
      ExpectSame(pooled, what + " pooled");
      ExpectSame(pos, what + " entry positions");
    }
  }

  // IndexerTopK over three blocks of keys (V4-Flash heads and dim, a small top-k), rows that see
  // none, part or all of a block; repeated keys tie across blocks.
  {
    const int64_t heads = 64, dim = 128, ratio = 4, tk = 48, block = 100, rows = 37;
    const int64_t start = 1100, visible = (start + rows) / ratio;
    std::vector<uint16_t> keys = RandomBf16(size_t(visible * dim), 58, 1.0f);
    for (int64_t j : {3, 150, 260}) std::copy_n(&keys[7 * dim], dim, &keys[size_t(j * dim)]);
    Both<uint16_t> bq = Make(RandomBf16(size_t(rows * heads * dim), 59, 1.0f));
    Both<uint16_t> bw = Make(RandomBf16(size_t(rows * heads), 60, 1.0f));
    Both<uint16_t> bk = Make(keys);
    Both<int32_t> tp = Filled<int32_t>(rows * tk, -1), tn = Filled<int32_t>(rows, 0);
    Both<float> ts = Filled<float>(rows * tk, 0.0f);
    for (int64_t b0 = 0; b0 < visible; b0 += block) {
      const int64_t nk = std::min(block, visible - b0);
      RunBoth([&](Backend& be, Queue& q, auto pick) {
        return be.IndexerTopK(
            q, {.q = pick(bq).template reinterpret<const bf16>(),
                .w = pick(bw).template reinterpret<const bf16>(),
                .w_scale = 0.011048543f,
                .keys = pick(bk).subspan(b0 * dim, nk * dim).template reinterpret<const bf16>(),
                .first_key = b0,
                .n_keys = nk,
                .rows = rows,
                .start_pos = start,
                .ratio = ratio,
                .num_heads = heads,
                .dim = dim,
                .top_k = tk,
                .picks = pick(tp),
                .pick_scores = pick(ts),
                .num_picks = pick(tn)});
      });
    }
    ExpectSame(tn, "indexer top-k counts");
    ExpectSame(tp, "indexer top-k picks");
    ExpectSame(ts, "indexer top-k scores");
  }

  // PickedEntries over 3000 visible entries, 50 rows of 64 picks (repeats across rows).
  const int64_t rows = 50, top_k = 64, visible = 3000;
  std::mt19937 rng(57);
  std::vector<int32_t> picks(static_cast<size_t>(rows * top_k), -1), num(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    num[size_t(r)] = int32_t(r % 7 == 0 ? 0 : top_k - r % 5);
    for (int64_t i = 0; i < num[size_t(r)]; ++i) {
      picks[size_t(r * top_k + i)] = int32_t(rng() % uint32_t(r < 25 ? 200 : visible));
    }
  }
  Both<int32_t> bp = Make(picks), bn = Make(num);
  Both<int32_t> slot = Filled<int32_t>(visible, 7), idx = Filled<int32_t>(rows * top_k, -3),
                count = Filled<int32_t>(1, 0);
  RunBoth([&](Backend& be, Queue& q, auto pick) {
    return be.PickedEntries(q, {.picks = pick(bp),
                                .num_picks = pick(bn),
                                .rows = rows,
                                .top_k = top_k,
                                .visible = visible,
                                .max_entries = rows * top_k,
                                .entry_slot = pick(slot),
                                .entry_idx = pick(idx),
                                .count = pick(count)});
  });
  ExpectSame(count, "picked entries count");
  ExpectSame(slot, "picked entries slots");
  ExpectSame(idx, "picked entries list");

  // UnpackKvEntriesPaged: the picked entries of a 3000-entry table in shuffled pages.
  const int64_t nope = 448, rope = 64, entry = 584, per_page = 7, page_bytes = per_page * entry;
  const int64_t table_pages = (visible + per_page - 1) / per_page, pool_pages = table_pages + 9;
  std::vector<int32_t> table(static_cast<size_t>(table_pages));
  for (int64_t i = 0; i < table_pages; ++i) table[size_t(i)] = int32_t((i * 37 + 5) % pool_pages);
  std::vector<uint8_t> pool(size_t(pool_pages * page_bytes));
  for (auto& b : pool) b = uint8_t(rng());
  for (int64_t i = nope + 2 * rope; i < int64_t(pool.size()); i += entry) pool[size_t(i)] = 0xff;
  Both<uint8_t> bpool = Make(pool);
  Both<int32_t> btable = Make(table);
  const int64_t ldx = nope + rope + 8;
  Both<uint16_t> out = Filled<uint16_t>(rows * top_k * ldx, 0x1234);
  RunBoth([&](Backend& be, Queue& q, auto pick) {
    return be.UnpackKvEntriesPaged(q, {.pool = pick(bpool),
                                       .page_bytes = page_bytes,
                                       .per_page = per_page,
                                       .page_ids = pick(btable),
                                       .units = pick(idx),
                                       .count = pick(count),
                                       .max_rows = rows * top_k,
                                       .nope = nope,
                                       .rope = rope,
                                       .entry_bytes = entry,
                                       .x = pick(out).template reinterpret<bf16>(),
                                       .ldx = ldx});
  });
  ExpectSame(out, "unpack kv entries paged");

  // A unit past the table: skipped on the device and reported at the next synchronization.
  Both<int32_t> bad = Make(std::vector<int32_t>{0, int32_t(table_pages * per_page)});
  Both<int32_t> two = Make(std::vector<int32_t>{2});
  ASSERT_TRUE(gpu_->UnpackKvEntriesPaged(*gq_, {.pool = bpool.g,
                                                .page_bytes = page_bytes,
                                                .per_page = per_page,
                                                .page_ids = btable.g,
                                                .units = bad.g,
                                                .count = two.g,
                                                .max_rows = 2,
                                                .nope = nope,
                                                .rope = rope,
                                                .entry_bytes = entry,
                                                .x = out.g.template reinterpret<bf16>(),
                                                .ldx = ldx})
                  .ok());
  const BackendStatus s = gq_->Synchronize();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("UnpackKvEntriesPaged: units[1] = " +
                             std::to_string(table_pages * per_page)),
            std::string::npos)
      << s.message();
}

}  // namespace
}  // namespace flotilla::kernels::cuda
