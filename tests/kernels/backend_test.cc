// The Backend seam on the CPU backend: memory (arena allocation, alignment, limits, misuse),
// queues and events, and every op through the backend bitwise equal to the direct call of
// kernels/ops.h on the same inputs.
#include "kernels/backend.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <span>
#include <type_traits>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/ops.h"
#include "tests/kernels/test_util.h"

namespace flotilla::kernels {
namespace {

using test::Rng;

// ---------------------------------------------------------------- misuse that does not compile

// Whether host code could read or write the elements of S directly.
template <typename S>
concept HostDereferenceable = requires(S s) {
  *s;
}
|| requires(S s) { s[0]; }
|| requires(S s) { s.data(); }
|| requires(S s) { s.begin(); }
|| std::is_convertible_v<S, const typename S::element_type*> ||
    std::is_convertible_v<S, const void*>;

// The concept does catch host-readable spans ...
static_assert(HostDereferenceable<std::span<float>>);
static_assert(HostDereferenceable<std::span<const bf16>>);
// ... and backend spans are not.
static_assert(!HostDereferenceable<DeviceSpan<float>>);
static_assert(!HostDereferenceable<DeviceSpan<const bf16>>);
static_assert(!HostDereferenceable<DeviceSpan<int32_t>>);
// Writable converts to read-only, never the other way; element types do not mix.
static_assert(std::is_convertible_v<DeviceSpan<float>, DeviceSpan<const float>>);
static_assert(!std::is_convertible_v<DeviceSpan<const float>, DeviceSpan<float>>);
static_assert(!std::is_convertible_v<DeviceSpan<float>, DeviceSpan<int32_t>>);
static_assert(!std::is_convertible_v<DeviceSpan<bf16>, DeviceSpan<const float>>);
// reinterpret keeps the element size and never drops const.
template <typename From, typename To>
concept Reinterpretable = requires(From s) {
  s.template reinterpret<To>();
};
static_assert(Reinterpretable<DeviceSpan<fp8>, uint8_t>);
static_assert(!Reinterpretable<DeviceSpan<fp8>, bf16>);
static_assert(!Reinterpretable<DeviceSpan<const fp8>, uint8_t>);
// Host copies are typed: a host span of another element type is no argument for Upload.
template <typename T, typename U>
concept UploadableAs = requires(Backend& b, Queue& q, std::span<const T> h, DeviceSpan<U> d) {
  b.Upload(q, h, d);
};
static_assert(UploadableAs<float, float>);
static_assert(!UploadableAs<int32_t, float>);
static_assert(!UploadableAs<float, const float>);

// ---------------------------------------------------------------- fixture

class BackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto arena = backend_.NewArena("test", int64_t(64) << 20);
    ASSERT_TRUE(arena.ok()) << arena.status().message();
    arena_ = std::move(arena.value());
    queue_ = backend_.NewQueue();
  }

  template <typename T>
  DeviceSpan<T> Up(const std::vector<T>& host) {
    auto span = arena_->Allocate<T>(int64_t(host.size()));
    EXPECT_TRUE(span.ok()) << span.status().message();
    const BackendStatus s = backend_.Upload(*queue_, std::span<const T>(host), span.value());
    EXPECT_TRUE(s.ok()) << s.message();
    return span.value();
  }
  template <typename T>
  DeviceSpan<T> Zeros(int64_t n) {
    auto span = arena_->Allocate<T>(n);
    EXPECT_TRUE(span.ok()) << span.status().message();
    EXPECT_TRUE(backend_.Fill(*queue_, span.value(), T{}).ok());
    return span.value();
  }
  template <typename T>
  std::vector<T> Down(DeviceSpan<T> span) {
    std::vector<T> host(size_t(span.size()));
    const BackendStatus s =
        backend_.Download(*queue_, DeviceSpan<const T>(span), std::span<T>(host));
    EXPECT_TRUE(s.ok()) << s.message();
    EXPECT_TRUE(queue_->Synchronize().ok());
    return host;
  }

  CpuBackend backend_;
  std::unique_ptr<Arena> arena_;
  std::unique_ptr<Queue> queue_;
};

// ---------------------------------------------------------------- memory

TEST_F(BackendTest, ArenaAllocatesAlignedDisjointSpansAndReusesFreedSpace) {
  auto small = backend_.NewArena("small", 1024);
  ASSERT_TRUE(small.ok());
  Arena& a = *small.value();
  EXPECT_EQ(a.capacity(), 1024);
  auto x = a.Allocate<float>(10);     // 40 bytes at 0
  auto y = a.Allocate<bf16>(3, 256);  // aligned to 256
  ASSERT_TRUE(x.ok() && y.ok());
  const uintptr_t xa = BackendAccess::RawAddress(x.value());
  const uintptr_t ya = BackendAccess::RawAddress(y.value());
  EXPECT_EQ(xa % 64, 0u);
  EXPECT_EQ(ya % 256, 0u);
  EXPECT_GE(ya, xa + 40);
  EXPECT_EQ(a.num_allocations(), 2);
  // Full: 1024 bytes cannot fit after the two.
  EXPECT_ERROR(a.Allocate<uint8_t>(1024).status(), "cannot allocate 1024 bytes");
  EXPECT_OK(a.Free(x.value()));
  EXPECT_OK(a.Free(y.value()));
  EXPECT_EQ(a.used(), 0);
  EXPECT_EQ(a.LargestFree(), 1024);  // neighbours merged back into one block
  auto whole = a.Allocate<uint8_t>(1024);
  EXPECT_TRUE(whole.ok()) << whole.status().message();
  EXPECT_EQ(BackendAccess::RawAddress(whole.value()), xa);
  EXPECT_GE(a.peak(), 1024);
}

TEST_F(BackendTest, ArenaMisuseGivesClearErrors) {
  auto made = backend_.NewArena("pool", 4096);
  ASSERT_TRUE(made.ok());
  Arena& a = *made.value();
  EXPECT_ERROR(a.Allocate<float>(4, 3).status(), "alignment 3 is not a power of two");
  EXPECT_ERROR(a.Allocate<float>(4, 2).status(), "at least 4");
  EXPECT_ERROR(a.Allocate<float>(-1).status(), "expected a count >= 0");
  EXPECT_ERROR(a.Allocate<float>(2000).status(),
               "arena 'pool' (cpu, 4096 bytes): cannot allocate 8000");
  auto s = a.Allocate<float>(8);
  ASSERT_TRUE(s.ok());
  EXPECT_ERROR(a.Free(s.value().subspan(1)), "not a live allocation");
  EXPECT_ERROR(arena_->Free(s.value()), "free of a span of arena 'pool'");
  EXPECT_ERROR(a.Free(DeviceSpan<float>()), "no arena");
  EXPECT_OK(a.Free(s.value()));
  EXPECT_ERROR(a.Free(s.value()), "not a live allocation");  // twice

  EXPECT_ERROR(backend_.NewArena("huge", int64_t(1) << 62).status(), "expected 0 to");
  CpuBackend limited(1 << 20);
  EXPECT_ERROR(limited.NewArena("big", (1 << 20) + 1).status(), "(the cpu limit)");
  EXPECT_TRUE(limited.NewArena("fits", 1 << 20).ok());
}

TEST_F(BackendTest, EmptyAllocationIsDistinctAndFreeable) {
  auto e1 = arena_->Allocate<float>(0);
  auto e2 = arena_->Allocate<float>(0);
  ASSERT_TRUE(e1.ok() && e2.ok());
  EXPECT_TRUE(e1.value().empty());
  EXPECT_NE(BackendAccess::RawAddress(e1.value()), BackendAccess::RawAddress(e2.value()));
  EXPECT_OK(arena_->Free(e1.value()));
  EXPECT_OK(arena_->Free(e2.value()));
}

TEST_F(BackendTest, DeviceBufferFreesItself) {
  const int64_t before = arena_->used();
  {
    auto b = DeviceBuffer<float>::Make(*arena_, 100);
    ASSERT_TRUE(b.ok());
    EXPECT_GT(arena_->used(), before);
    DeviceBuffer<float> moved = std::move(b.value());
    EXPECT_EQ(moved.size(), 100);
  }
  EXPECT_EQ(arena_->used(), before);
}

// Host memory the caller owns (a mapped checkpoint) viewed in place: the span is that memory
// (writes to it are seen), an op reads it as it reads arena memory, nothing is allocated from
// it, and spans of the wrong element size or alignment are refused.
TEST_F(BackendTest, ImportHostViewsCallerMemoryInPlace) {
  Rng rng(71);
  const int64_t m = 3, d = 256;
  std::vector<bf16> x(static_cast<size_t>(m * d)), w(static_cast<size_t>(d));
  for (auto& v : x) v = F32ToBf16(float(rng.Normal()));
  for (auto& v : w) v = F32ToBf16(float(1.0 + 0.1 * rng.Normal()));
  auto imported = backend_.ImportHost("norm weight", w.data(), int64_t(w.size() * sizeof(bf16)));
  ASSERT_TRUE(imported.ok()) << imported.status().message();
  Arena& arena = *imported.value();
  EXPECT_TRUE(arena.imported());
  EXPECT_EQ(arena.capacity(), d * 2);
  auto whole = arena.Whole<const bf16>();
  ASSERT_TRUE(whole.ok()) << whole.status().message();
  const In<bf16> wspan = whole.value();
  EXPECT_EQ(wspan.size(), d);
  EXPECT_EQ(BackendAccess::RawAddress(wspan), reinterpret_cast<uintptr_t>(w.data()));

  // An op reads the imported weight: bitwise the direct call on the host vectors.
  const auto xs = Up(x);
  const auto ys = Zeros<bf16>(m * d);
  RmsNormArgs a;
  a.x = xs;
  a.ldx = d;
  a.w = wspan;
  a.m = m;
  a.d = d;
  a.eps = 1e-6f;
  a.y = ys;
  a.ldy = d;
  EXPECT_OK(backend_.RmsNorm(*queue_, a));
  std::vector<bf16> want(size_t(m * d));
  RmsNorm(x.data(), d, w.data(), m, d, 1e-6f, want.data(), d);
  const auto got = Down(ys);
  EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(bf16)), 0);

  // Zero copy: the span is the caller's memory.
  w[5] = F32ToBf16(-2.5f);
  const std::vector<bf16> seen = Down(arena.Whole<bf16>().value());
  EXPECT_EQ(Bf16ToF32(seen[5]), -2.5f);

  EXPECT_ERROR(arena.Allocate<uint8_t>(1).status(), "nothing is allocated from it");
  auto six = backend_.ImportHost("six bytes", w.data(), 6);
  ASSERT_TRUE(six.ok());
  EXPECT_ERROR(six.value()->Whole<const float>().status(), "not a whole span of 4-byte elements");
  EXPECT_TRUE(arena.Whole<const uint8_t>().ok());
  auto odd = backend_.ImportHost("odd", reinterpret_cast<const uint8_t*>(w.data()) + 1, 8);
  ASSERT_TRUE(odd.ok());
  EXPECT_ERROR(odd.value()->Whole<const float>().status(), "an address aligned to 4");
  EXPECT_ERROR(backend_.ImportHost("bad", w.data(), -1).status(), "expected memory");
  EXPECT_ERROR(backend_.ImportHost("null", nullptr, 16).status(), "expected memory");
  EXPECT_TRUE(backend_.ImportHost("empty", nullptr, 0).ok());
  // Another backend's ops refuse it, as any foreign span.
  CpuBackend other;
  auto queue = other.NewQueue();
  EXPECT_ERROR(other.RmsNorm(*queue, a), "of another backend");
  imported.value().reset();  // the caller's memory stays the caller's
  EXPECT_EQ(Bf16ToF32(w[5]), -2.5f);
}

TEST_F(BackendTest, SubspanOutsideItsSpanStopsTheProcess) {
  auto s = arena_->Allocate<float>(8);
  ASSERT_TRUE(s.ok());
  EXPECT_DEATH((void)s.value().subspan(4, 5), "subspan\\(4, 5\\) out of range of a span of 8");
  EXPECT_DEATH((void)s.value().subspan(-1, 1), "out of range");
}

TEST_F(BackendTest, CopiesFillAndHostSizeChecks) {
  const std::vector<int32_t> host = {1, 2, 3, 4, 5};
  DeviceSpan<int32_t> a = Up(host);
  DeviceSpan<int32_t> b = Zeros<int32_t>(5);
  EXPECT_OK(backend_.Copy(*queue_, DeviceSpan<const int32_t>(a), b));
  EXPECT_EQ(Down(b), host);
  EXPECT_OK(backend_.Fill(*queue_, b.subspan(1, 3), int32_t(-7)));
  EXPECT_EQ(Down(b), (std::vector<int32_t>{1, -7, -7, -7, 5}));
  EXPECT_OK(backend_.Fill(*queue_, a, int32_t(0x01020304)));
  EXPECT_EQ(Down(a), std::vector<int32_t>(5, 0x01020304));
  // Every element size, a zero fill next to a non-zero one (the zero fill must stop at its span).
  DeviceSpan<uint8_t> u8 = Up(std::vector<uint8_t>(7, 1));
  EXPECT_OK(backend_.Fill(*queue_, u8.subspan(1, 5), uint8_t(0xa5)));
  EXPECT_OK(backend_.Fill(*queue_, u8.subspan(2, 2), uint8_t(0)));
  EXPECT_EQ(Down(u8), (std::vector<uint8_t>{1, 0xa5, 0, 0, 0xa5, 0xa5, 1}));
  DeviceSpan<bf16> u16 = Up(std::vector<bf16>(4, 0x3f80));
  EXPECT_OK(backend_.Fill(*queue_, u16.subspan(1, 2), bf16(0xbeef)));
  EXPECT_EQ(Down(u16), (std::vector<bf16>{0x3f80, 0xbeef, 0xbeef, 0x3f80}));
  DeviceSpan<int64_t> i64 = Up(std::vector<int64_t>(3, 9));
  EXPECT_OK(backend_.Fill(*queue_, i64.first(2), int64_t(-0x123456789)));
  EXPECT_EQ(Down(i64), (std::vector<int64_t>{-0x123456789, -0x123456789, 9}));
  EXPECT_OK(backend_.Fill(*queue_, i64.subspan(1, 1), int64_t(0)));
  EXPECT_EQ(Down(i64), (std::vector<int64_t>{-0x123456789, 0, 9}));

  std::vector<int32_t> four(4);
  EXPECT_ERROR(backend_.Download(*queue_, DeviceSpan<const int32_t>(a), std::span<int32_t>(four)),
               "Download: host memory of 4 elements for a backend span of 5");
  EXPECT_ERROR(backend_.Upload(*queue_, std::span<const int32_t>(four), a), "expected equal sizes");
  EXPECT_ERROR(backend_.Copy(*queue_, DeviceSpan<const int32_t>(a), b.first(4)), "Copy");
  EXPECT_ERROR(backend_.Fill(*queue_, DeviceSpan<int32_t>(), 0), "default span");
}

TEST_F(BackendTest, SpansOfAnotherBackendAndForeignQueuesAreRejected) {
  CpuBackend other;
  auto other_arena = other.NewArena("other", 4096);
  ASSERT_TRUE(other_arena.ok());
  auto foreign = other_arena.value()->Allocate<float>(4);
  ASSERT_TRUE(foreign.ok());
  const std::vector<float> host(4, 1.0f);
  EXPECT_ERROR(backend_.Upload(*queue_, std::span<const float>(host), foreign.value()),
               "Upload: dst lies in arena 'other' of another backend");
  auto other_queue = other.NewQueue();
  DeviceSpan<float> mine = Zeros<float>(4);
  EXPECT_ERROR(backend_.Upload(*other_queue, std::span<const float>(host), mine),
               "not one of this cpu backend's queues");
}

TEST_F(BackendTest, QueueEventsAreOrderedAndDone) {
  EXPECT_ERROR(queue_->WaitFor(Event{}), "never recorded");
  EXPECT_FALSE(queue_->Done(Event{}).ok());
  DeviceSpan<float> x = Zeros<float>(16);
  EXPECT_OK(backend_.Fill(*queue_, x, 2.0f));
  const Event first = queue_->Record();
  EXPECT_OK(backend_.Fill(*queue_, x.subspan(8), 3.0f));
  const Event second = queue_->Record();
  EXPECT_GT(second.sequence, first.sequence);
  auto other = backend_.NewQueue();
  EXPECT_OK(other->WaitFor(second));
  auto done = queue_->Done(second);
  ASSERT_TRUE(done.ok());
  EXPECT_TRUE(done.value());
  EXPECT_OK(queue_->Synchronize());
  std::vector<float> want(16, 2.0f);
  std::fill(want.begin() + 8, want.end(), 3.0f);
  EXPECT_EQ(Down(x), want);
}

// ---------------------------------------------------------------- op argument checks

TEST_F(BackendTest, OpArgumentsAreCheckedBeforeIssue) {
  Rng rng(7);
  const int64_t m = 2, k = 256, n = 3;
  DeviceSpan<fp8> a = Up(rng.Fp8Codes(m * k));
  DeviceSpan<e8m0> as = Up(rng.Scales(m * 2));
  DeviceSpan<fp8> w = Up(rng.Fp8Codes(n * k));
  DeviceSpan<e8m0> ws = Up(rng.Scales(2));
  DeviceSpan<bf16> c = Zeros<bf16>(m * n);
  GemmFp8Args args{
      .a = a, .a_scale = as, .w = w, .w_scale = ws, .c = c, .ldc = n, .m = m, .n = n, .k = k};
  EXPECT_OK(backend_.GemmFp8(*queue_, args));
  GemmFp8Args bad = args;
  bad.c = c.first(m * n - 1);
  EXPECT_ERROR(backend_.GemmFp8(*queue_, bad), "GemmFp8: c has 5 elements; expected at least 6");
  bad = args;
  bad.k = 200;
  EXPECT_ERROR(backend_.GemmFp8(*queue_, bad), "GemmFp8: expected k a positive multiple of 128");
  bad = args;
  bad.w_scale = {};
  EXPECT_ERROR(backend_.GemmFp8(*queue_, bad), "exactly one of w_scale / w_scale_f32");
  bad = args;
  bad.a = {};
  EXPECT_ERROR(backend_.GemmFp8(*queue_, bad), "GemmFp8: a is not set; expected 512 elements");
  bad = args;
  bad.ldc = 2;
  EXPECT_ERROR(backend_.GemmFp8(*queue_, bad), "ldc >= 3 (got 2)");

  // Index lists are checked as the CPU backend reads them.
  const int64_t heads = 2, dim = 16;
  DeviceSpan<bf16> q = Up(rng.Bf16(heads * dim));
  DeviceSpan<bf16> kv = Up(rng.Bf16(4 * dim));
  DeviceSpan<float> sink = Up(rng.F32(heads));
  DeviceSpan<bf16> out = Zeros<bf16>(heads * dim);
  SparseAttentionArgs sa{.q = q,
                         .kv = kv,
                         .row_idx = Up(std::vector<int32_t>{0, 4}),
                         .n = 2,
                         .sink = sink,
                         .num_heads = heads,
                         .dim = dim,
                         .scale = 0.25f,
                         .out = out};
  EXPECT_ERROR(backend_.SparseAttention(*queue_, sa), "row_idx[1] = 4; expected -1 to 3");
  sa.row_idx = Up(std::vector<int32_t>{-1, 0});
  EXPECT_ERROR(backend_.SparseAttention(*queue_, sa), "the first entry may not be empty");

  CompressPoolArgs cp{.kv = Up(rng.F32(32)),
                      .score = Up(rng.F32(32)),
                      .slot_offsets = Up(std::vector<int64_t>{0, 17}),
                      .num_entries = 1,
                      .n_slots = 2,
                      .d = 16,
                      .out = Zeros<float>(16)};
  EXPECT_ERROR(backend_.CompressPool(*queue_, cp), "slot_offsets[1] = 17; expected 0 to 16");
  cp.score = Up(rng.F32(48));
  EXPECT_ERROR(backend_.CompressPool(*queue_, cp), "kv and score of equal size");

  EXPECT_ERROR(backend_.HadamardRotateBf16(*queue_, {.x = q, .rows = 1, .dim = 24}),
               "dim a power of two (got 24)");
  TopKArgs tk{.scores = Up(rng.F32(8)),
              .ld_scores = 8,
              .rows = 1,
              .n = 8,
              .k = 9,
              .idx = Zeros<int32_t>(9)};
  EXPECT_ERROR(backend_.TopK(*queue_, tk), "k <= n (got k 9, n 8)");
}

// ---------------------------------------------------------------- ops: bitwise equal to direct

TEST_F(BackendTest, ActQuantAndQatRoundTripsMatchDirectCalls) {
  Rng rng(1);
  const int64_t m = 5, k = 256, ldx = 300;
  const std::vector<bf16> x = rng.Bf16(m * ldx, 3.0);
  std::vector<fp8> q(m * k);
  std::vector<e8m0> sc(m * 2);
  ActQuantFp8(
      {.x = x.data(), .ldx = ldx, .m = m, .k = k, .block = 128, .q = q.data(), .scale = sc.data()});
  DeviceSpan<fp8> dq = Zeros<fp8>(m * k);
  DeviceSpan<e8m0> ds = Zeros<e8m0>(m * 2);
  EXPECT_OK(backend_.ActQuantFp8(
      *queue_, {.x = Up(x), .ldx = ldx, .m = m, .k = k, .block = 128, .q = dq, .scale = ds}));
  EXPECT_BITWISE_EQ(Down(dq), q);
  EXPECT_BITWISE_EQ(Down(ds), sc);

  for (const bool fp4 : {false, true}) {
    const int64_t rows = 4, ld = 80, n = 70, block = fp4 ? 32 : 64;
    std::vector<bf16> direct = rng.Bf16(rows * ld, 2.0);
    DeviceSpan<bf16> dx = Up(direct);
    if (fp4) {
      Fp4SimulateInPlace(direct.data(), rows, ld, n, block);
      EXPECT_OK(backend_.Fp4SimulateInPlace(
          *queue_, {.x = dx, .rows = rows, .ld = ld, .n = n, .block = block}));
    } else {
      Fp8SimulateInPlace(direct.data(), rows, ld, n, block);
      EXPECT_OK(backend_.Fp8SimulateInPlace(
          *queue_, {.x = dx, .rows = rows, .ld = ld, .n = n, .block = block}));
    }
    EXPECT_BITWISE_EQ(Down(dx), direct) << (fp4 ? "fp4" : "fp8");
  }
}

TEST_F(BackendTest, GemmsMatchDirectCalls) {
  Rng rng(2);
  const int64_t m = 3, n = 130, k = 256, ldc = 133;
  const std::vector<fp8> a = rng.Fp8Codes(m * k), w = rng.Fp8Codes(n * k);
  const std::vector<e8m0> as = rng.Scales(m * 2), ws = rng.Scales(2 * 2);
  const std::vector<float> ws32 = rng.F32(2 * 2, 0.01);
  for (const bool f32_scales : {false, true}) {
    std::vector<bf16> c(m * ldc);
    GemmFp8({.a = a.data(),
             .a_scale = as.data(),
             .w = w.data(),
             .w_scale = f32_scales ? nullptr : ws.data(),
             .w_scale_f32 = f32_scales ? ws32.data() : nullptr,
             .c = c.data(),
             .ldc = ldc,
             .m = m,
             .n = n,
             .k = k});
    DeviceSpan<bf16> dc = Zeros<bf16>(m * ldc);
    GemmFp8Args args{
        .a = Up(a), .a_scale = Up(as), .w = Up(w), .c = dc, .ldc = ldc, .m = m, .n = n, .k = k};
    if (f32_scales) {
      args.w_scale_f32 = Up(ws32);
    } else {
      args.w_scale = Up(ws);
    }
    EXPECT_OK(backend_.GemmFp8(*queue_, args));
    EXPECT_BITWISE_EQ(Down(dc), c);
  }
  {
    const std::vector<uint8_t> w4 = rng.Bytes(n * k / 2);
    const std::vector<e8m0> w4s = rng.Scales(n * k / 32);
    std::vector<bf16> c(m * ldc);
    GemmFp8Fp4({.a = a.data(),
                .a_scale = as.data(),
                .w = w4.data(),
                .w_scale = w4s.data(),
                .c = c.data(),
                .ldc = ldc,
                .m = m,
                .n = n,
                .k = k});
    DeviceSpan<bf16> dc = Zeros<bf16>(m * ldc);
    EXPECT_OK(backend_.GemmFp8Fp4(*queue_, {.a = Up(a),
                                            .a_scale = Up(as),
                                            .w = Up(w4),
                                            .w_scale = Up(w4s),
                                            .c = dc,
                                            .ldc = ldc,
                                            .m = m,
                                            .n = n,
                                            .k = k}));
    EXPECT_BITWISE_EQ(Down(dc), c);
  }
  const int64_t kb = 72, lda = 80, ldw = 75;
  const std::vector<bf16> ab = rng.Bf16(m * lda), wb = rng.Bf16(n * ldw);
  for (const bool to_f32 : {false, true}) {
    std::vector<bf16> c(m * ldc);
    std::vector<float> c32(m * ldc);
    GemmBf16({.a = ab.data(),
              .lda = lda,
              .w = wb.data(),
              .ldw = ldw,
              .c = to_f32 ? nullptr : c.data(),
              .c_f32 = to_f32 ? c32.data() : nullptr,
              .ldc = ldc,
              .m = m,
              .n = n,
              .k = kb});
    GemmBf16Args args{
        .a = Up(ab), .lda = lda, .w = Up(wb), .ldw = ldw, .ldc = ldc, .m = m, .n = n, .k = kb};
    if (to_f32) {
      args.c_f32 = Zeros<float>(m * ldc);
      EXPECT_OK(backend_.GemmBf16(*queue_, args));
      EXPECT_BITWISE_EQ(Down(args.c_f32), c32);
    } else {
      args.c = Zeros<bf16>(m * ldc);
      EXPECT_OK(backend_.GemmBf16(*queue_, args));
      EXPECT_BITWISE_EQ(Down(args.c), c);
    }
  }
  {
    const std::vector<float> af = rng.F32(m * lda);
    std::vector<float> c(m * ldc);
    GemmF32({.a = af.data(),
             .lda = lda,
             .w_bf16 = wb.data(),
             .ldw = ldw,
             .c = c.data(),
             .ldc = ldc,
             .m = m,
             .n = n,
             .k = kb});
    DeviceSpan<float> dc = Zeros<float>(m * ldc);
    EXPECT_OK(backend_.GemmF32(*queue_, {.a = Up(af),
                                         .lda = lda,
                                         .w_bf16 = Up(wb),
                                         .ldw = ldw,
                                         .c = dc,
                                         .ldc = ldc,
                                         .m = m,
                                         .n = n,
                                         .k = kb}));
    EXPECT_BITWISE_EQ(Down(dc), c);
  }
}

TEST_F(BackendTest, NormsAndRopeMatchDirectCalls) {
  Rng rng(3);
  const int64_t m = 4, d = 96, ldx = 100;
  const std::vector<bf16> x = rng.Bf16(m * ldx, 2.0), w = rng.Bf16(d);
  std::vector<bf16> y(m * ldx);
  RmsNorm(x.data(), ldx, w.data(), m, d, 1e-6f, y.data(), ldx);
  DeviceSpan<bf16> dy = Zeros<bf16>(m * ldx);
  EXPECT_OK(backend_.RmsNorm(
      *queue_,
      {.x = Up(x), .ldx = ldx, .w = Up(w), .m = m, .d = d, .eps = 1e-6f, .y = dy, .ldy = ldx}));
  EXPECT_BITWISE_EQ(Down(dy), y);
  // In place: y is x.
  DeviceSpan<bf16> inplace = Up(x);
  EXPECT_OK(backend_.RmsNorm(*queue_, {.x = inplace,
                                       .ldx = ldx,
                                       .w = Up(w),
                                       .m = m,
                                       .d = d,
                                       .eps = 1e-6f,
                                       .y = inplace,
                                       .ldy = ldx}));
  std::vector<bf16> want = x;
  RmsNorm(want.data(), ldx, w.data(), m, d, 1e-6f, want.data(), ldx);
  EXPECT_BITWISE_EQ(Down(inplace), want);

  std::vector<bf16> heads = rng.Bf16(6 * 64, 3.0);
  DeviceSpan<bf16> dh = Up(heads);
  HeadRmsNormBf16(heads.data(), 6, 64, 1e-6f);
  EXPECT_OK(backend_.HeadRmsNormBf16(*queue_, {.q = dh, .rows = 6, .dim = 64, .eps = 1e-6f}));
  EXPECT_BITWISE_EQ(Down(dh), heads);

  const int64_t rope_dim = 64;
  std::vector<float> freqs(rope_dim / 2);
  RopeFrequencies(rope_dim, 10000.0, true, 16.0, 4096, 32.0, 1.0, freqs.data());
  DeviceSpan<float> dfreqs = Zeros<float>(rope_dim / 2);
  EXPECT_OK(backend_.RopeFrequencies(*queue_, {.rope_dim = rope_dim,
                                               .base = 10000.0,
                                               .yarn = true,
                                               .factor = 16.0,
                                               .original_max_position = 4096,
                                               .beta_fast = 32.0,
                                               .beta_slow = 1.0,
                                               .freqs = dfreqs}));
  EXPECT_BITWISE_EQ(Down(dfreqs), freqs);

  const int64_t tokens = 3, nh = 2, hd = 96, ld = nh * hd + 4;
  std::vector<bf16> r = rng.Bf16(tokens * ld);
  const std::vector<int64_t> pos = {0, 17, 65535};
  DeviceSpan<bf16> dr = Up(r);
  for (const bool inverse : {false, true}) {
    ApplyRope({.x = r.data(),
               .ld = ld,
               .head_stride = hd,
               .num_tokens = tokens,
               .num_heads = nh,
               .rope_offset = hd - rope_dim,
               .rope_dim = rope_dim,
               .positions = pos.data(),
               .freqs = freqs.data(),
               .inverse = inverse});
    EXPECT_OK(backend_.ApplyRope(*queue_, {.x = dr,
                                           .ld = ld,
                                           .head_stride = hd,
                                           .num_tokens = tokens,
                                           .num_heads = nh,
                                           .rope_offset = hd - rope_dim,
                                           .rope_dim = rope_dim,
                                           .positions = Up(pos),
                                           .freqs = dfreqs,
                                           .inverse = inverse}));
    EXPECT_BITWISE_EQ(Down(dr), r) << inverse;
  }
}

TEST_F(BackendTest, HyperConnectionsMatchDirectCalls) {
  Rng rng(4);
  const int64_t m = 3, hc = 4, d = 64, mix = (2 + hc) * hc;
  const std::vector<bf16> h = rng.Bf16(m * hc * d);
  const std::vector<float> fn = rng.F32(mix * hc * d, 0.05), scale = rng.F32(3, 0.5),
                           base = rng.F32(mix, 0.5);
  std::vector<bf16> x(m * d);
  std::vector<float> post(m * hc), comb(m * hc * hc);
  HcPre({.h = h.data(),
         .fn = fn.data(),
         .scale = scale.data(),
         .base = base.data(),
         .m = m,
         .hc = hc,
         .d = d,
         .x = x.data(),
         .post = post.data(),
         .comb = comb.data()});
  DeviceSpan<bf16> dx = Zeros<bf16>(m * d);
  DeviceSpan<float> dpost = Zeros<float>(m * hc), dcomb = Zeros<float>(m * hc * hc);
  EXPECT_OK(backend_.HcPre(*queue_, {.h = Up(h),
                                     .fn = Up(fn),
                                     .scale = Up(scale),
                                     .base = Up(base),
                                     .m = m,
                                     .hc = hc,
                                     .d = d,
                                     .x = dx,
                                     .post = dpost,
                                     .comb = dcomb}));
  EXPECT_BITWISE_EQ(Down(dx), x);
  EXPECT_BITWISE_EQ(Down(dpost), post);
  EXPECT_BITWISE_EQ(Down(dcomb), comb);

  std::vector<bf16> h_out(m * hc * d);
  HcPost({.x = x.data(),
          .res = h.data(),
          .post = post.data(),
          .comb = comb.data(),
          .m = m,
          .hc = hc,
          .d = d,
          .h_out = h_out.data()});
  DeviceSpan<bf16> dres = Up(h);
  DeviceSpan<bf16> dout = Zeros<bf16>(m * hc * d);
  EXPECT_OK(backend_.HcPost(*queue_, {.x = dx,
                                      .res = dres,
                                      .post = dpost,
                                      .comb = dcomb,
                                      .m = m,
                                      .hc = hc,
                                      .d = d,
                                      .h_out = dout}));
  EXPECT_BITWISE_EQ(Down(dout), h_out);
  EXPECT_ERROR(backend_.HcPost(*queue_, {.x = dx,
                                         .res = dres,
                                         .post = dpost,
                                         .comb = dcomb,
                                         .m = m,
                                         .hc = hc,
                                         .d = d,
                                         .h_out = dres}),
               "h_out not overlapping res");

  const std::vector<float> hfn = rng.F32(hc * hc * d, 0.05), hscale = rng.F32(1, 0.5),
                           hbase = rng.F32(hc, 0.5);
  std::vector<bf16> y(m * d);
  HcHead({.h = h.data(),
          .fn = hfn.data(),
          .scale = hscale.data(),
          .base = hbase.data(),
          .m = m,
          .hc = hc,
          .d = d,
          .y = y.data()});
  DeviceSpan<bf16> dy = Zeros<bf16>(m * d);
  EXPECT_OK(backend_.HcHead(*queue_, {.h = Up(h),
                                      .fn = Up(hfn),
                                      .scale = Up(hscale),
                                      .base = Up(hbase),
                                      .m = m,
                                      .hc = hc,
                                      .d = d,
                                      .y = dy}));
  EXPECT_BITWISE_EQ(Down(dy), y);
}

TEST_F(BackendTest, CompressorAndIndexerOpsMatchDirectCalls) {
  Rng rng(5);
  // Overlapping compressor state: 2m slots of width 2d; entry e reads the A half of slots
  // [0, m) and the B half of slots [m, 2m), one of them -inf.
  const int64_t m = 4, d = 32, width = 2 * d, entries = 2;
  const std::vector<float> kv = rng.F32(entries * 2 * m * width);
  std::vector<float> score = rng.F32(entries * 2 * m * width);
  score[3 * width + 5] = -std::numeric_limits<float>::infinity();
  std::vector<int64_t> offsets;
  std::vector<float> want(entries * d);
  for (int64_t e = 0; e < entries; ++e) {
    std::vector<const float*> k_rows, g_rows;
    for (int64_t s = 0; s < 2 * m; ++s) {
      const int64_t off = (e * 2 * m + s) * width + (s < m ? 0 : d);
      offsets.push_back(off);
      k_rows.push_back(kv.data() + off);
      g_rows.push_back(score.data() + off);
    }
    CompressPool(k_rows.data(), g_rows.data(), 2 * m, d, want.data() + e * d);
  }
  DeviceSpan<float> dout = Zeros<float>(entries * d);
  EXPECT_OK(backend_.CompressPool(*queue_, {.kv = Up(kv),
                                            .score = Up(score),
                                            .slot_offsets = Up(offsets),
                                            .num_entries = entries,
                                            .n_slots = 2 * m,
                                            .d = d,
                                            .out = dout}));
  EXPECT_BITWISE_EQ(Down(dout), want);

  std::vector<bf16> hx = rng.Bf16(5 * 128);
  DeviceSpan<bf16> dhx = Up(hx);
  HadamardRotateBf16(hx.data(), 5, 128);
  EXPECT_OK(backend_.HadamardRotateBf16(*queue_, {.x = dhx, .rows = 5, .dim = 128}));
  EXPECT_BITWISE_EQ(Down(dhx), hx);

  const int64_t heads = 8, dim = 128, n = 300, ldk = 136;
  const std::vector<bf16> q = rng.Bf16(heads * dim), w = rng.Bf16(heads), keys = rng.Bf16(n * ldk);
  std::vector<float> scores(n);
  IndexerScores({.q = q.data(),
                 .w = w.data(),
                 .keys = keys.data(),
                 .ldk = ldk,
                 .n = n,
                 .num_heads = heads,
                 .dim = dim,
                 .scores = scores.data()});
  DeviceSpan<float> dscores = Zeros<float>(n);
  EXPECT_OK(backend_.IndexerScores(*queue_, {.q = Up(q),
                                             .w = Up(w),
                                             .keys = Up(keys),
                                             .ldk = ldk,
                                             .n = n,
                                             .num_heads = heads,
                                             .dim = dim,
                                             .scores = dscores}));
  EXPECT_BITWISE_EQ(Down(dscores), scores);

  // Three rows of scores with ties; TopK per row.
  const int64_t rows = 3, ld = 310, k = 37;
  std::vector<float> all = rng.F32(rows * ld);
  for (int64_t i = 0; i < 40; ++i) all[ld + i] = 0.5f;  // ties in row 1
  std::vector<int32_t> idx(rows * k);
  for (int64_t r = 0; r < rows; ++r) TopK(all.data() + r * ld, n, k, idx.data() + r * k);
  DeviceSpan<int32_t> didx = Zeros<int32_t>(rows * k);
  EXPECT_OK(backend_.TopK(
      *queue_, {.scores = Up(all), .ld_scores = ld, .rows = rows, .n = n, .k = k, .idx = didx}));
  EXPECT_BITWISE_EQ(Down(didx), idx);
}

TEST_F(BackendTest, SparseAttentionOverTwoRowBuffersMatchesDirectCall) {
  Rng rng(6);
  const int64_t heads = 4, dim = 64, rows1 = 50, rows2 = 20;
  const std::vector<bf16> q = rng.Bf16(heads * dim), kv = rng.Bf16(rows1 * dim),
                          kv2 = rng.Bf16(rows2 * dim);
  const std::vector<float> sink = rng.F32(heads);
  // 150 entries (three online-softmax blocks): rows of both buffers, empty slots, repeats.
  std::vector<int32_t> idx;
  std::vector<const bf16*> list;
  for (int64_t i = 0; i < 150; ++i) {
    int32_t j = int32_t(rng.Int(-1, rows1 + rows2 - 1));
    if (i == 0 && j < 0) j = 3;
    idx.push_back(j);
    list.push_back(j < 0       ? nullptr
                   : j < rows1 ? kv.data() + j * dim
                               : kv2.data() + (j - rows1) * dim);
  }
  std::vector<bf16> out(heads * dim);
  const float scale = float(1.0 / std::sqrt(double(dim)));
  SparseAttention({.q = q.data(),
                   .rows = list.data(),
                   .n = int64_t(list.size()),
                   .sink = sink.data(),
                   .num_heads = heads,
                   .dim = dim,
                   .scale = scale,
                   .out = out.data()});
  DeviceSpan<bf16> dout = Zeros<bf16>(heads * dim);
  EXPECT_OK(backend_.SparseAttention(*queue_, {.q = Up(q),
                                               .kv = Up(kv),
                                               .kv2 = Up(kv2),
                                               .row_idx = Up(idx),
                                               .n = int64_t(idx.size()),
                                               .sink = Up(sink),
                                               .num_heads = heads,
                                               .dim = dim,
                                               .scale = scale,
                                               .out = dout}));
  EXPECT_BITWISE_EQ(Down(dout), out);
}

TEST_F(BackendTest, RoutingAndSwiGluMatchDirectCalls) {
  Rng rng(8);
  const int64_t m = 5, experts = 64, top_k = 6, ld_hash = 8;
  const std::vector<float> logits = rng.F32(m * experts, 2.0), bias = rng.F32(experts, 0.3);
  std::vector<int64_t> hash(m * ld_hash);
  for (auto& v : hash) v = rng.Int(0, experts - 1);
  for (const bool hashed : {false, true}) {
    std::vector<int32_t> idx(m * top_k);
    std::vector<float> wts(m * top_k);
    Route({.logits = logits.data(),
           .bias = hashed ? nullptr : bias.data(),
           .hash_ids = hashed ? hash.data() : nullptr,
           .ld_hash = ld_hash,
           .m = m,
           .num_experts = experts,
           .top_k = top_k,
           .route_scale = 1.5f,
           .expert_idx = idx.data(),
           .weights = wts.data()});
    RouteArgs args{.logits = Up(logits),
                   .ld_hash = ld_hash,
                   .m = m,
                   .num_experts = experts,
                   .top_k = top_k,
                   .route_scale = 1.5f,
                   .expert_idx = Zeros<int32_t>(m * top_k),
                   .weights = Zeros<float>(m * top_k)};
    if (hashed) {
      args.hash_ids = Up(hash);
    } else {
      args.bias = Up(bias);
    }
    EXPECT_OK(backend_.Route(*queue_, args));
    EXPECT_BITWISE_EQ(Down(args.expert_idx), idx) << hashed;
    EXPECT_BITWISE_EQ(Down(args.weights), wts) << hashed;
  }

  const int64_t rows = 4, inter = 96, ld_in = 200, ld_out = 100;
  const std::vector<bf16> gate = rng.Bf16(rows * ld_in, 6.0), up = rng.Bf16(rows * ld_in, 6.0);
  const std::vector<float> rw = rng.F32(rows);
  for (const bool weighted : {false, true}) {
    std::vector<bf16> out(rows * ld_out);
    SwiGlu({.gate = gate.data(),
            .up = up.data(),
            .ld_in = ld_in,
            .row_weight = weighted ? rw.data() : nullptr,
            .m = rows,
            .inter = inter,
            .limit = 7.0f,
            .out = out.data(),
            .ld_out = ld_out});
    SwiGluArgs args{.gate = Up(gate),
                    .up = Up(up),
                    .ld_in = ld_in,
                    .m = rows,
                    .inter = inter,
                    .limit = 7.0f,
                    .out = Zeros<bf16>(rows * ld_out),
                    .ld_out = ld_out};
    if (weighted) args.row_weight = Up(rw);
    EXPECT_OK(backend_.SwiGlu(*queue_, args));
    EXPECT_BITWISE_EQ(Down(args.out), out) << weighted;
  }
}

TEST_F(BackendTest, PackedKvOpsMatchDirectCalls) {
  Rng rng(9);
  const int64_t rows = 7, nope = 448, rope = 64, entry = 584, ldx = 520;
  std::vector<bf16> x = rng.Bf16(rows * ldx, 4.0);
  Fp8SimulateInPlace(x.data(), rows, ldx, nope, 64);
  std::vector<uint8_t> packed(rows * entry);
  PackKvEntries({.rows = rows,
                 .nope = nope,
                 .rope = rope,
                 .entry_bytes = entry,
                 .x = x.data(),
                 .ldx = ldx,
                 .entries = packed.data()});
  DeviceSpan<uint8_t> dpacked = Zeros<uint8_t>(rows * entry);
  EXPECT_OK(backend_.PackKvEntries(*queue_, {.rows = rows,
                                             .nope = nope,
                                             .rope = rope,
                                             .entry_bytes = entry,
                                             .x = Up(x),
                                             .ldx = ldx,
                                             .entries = dpacked}));
  EXPECT_BITWISE_EQ(Down(dpacked), packed);
  std::vector<bf16> back(rows * ldx);
  UnpackKvEntries({.rows = rows,
                   .nope = nope,
                   .rope = rope,
                   .entry_bytes = entry,
                   .entries = packed.data(),
                   .x = back.data(),
                   .ldx = ldx});
  DeviceSpan<bf16> dback = Zeros<bf16>(rows * ldx);
  EXPECT_OK(backend_.UnpackKvEntries(*queue_, {.rows = rows,
                                               .nope = nope,
                                               .rope = rope,
                                               .entry_bytes = entry,
                                               .entries = dpacked,
                                               .x = dback,
                                               .ldx = ldx}));
  EXPECT_BITWISE_EQ(Down(dback), back);
  EXPECT_ERROR(backend_.PackKvEntries(*queue_, {.rows = rows,
                                                .nope = nope,
                                                .rope = rope,
                                                .entry_bytes = 575,
                                                .x = Up(x),
                                                .ldx = ldx,
                                                .entries = dpacked}),
               "PackKvEntries: expected entry_bytes >= 583 (got 575)");

  const int64_t dim = 128, key = 68;
  std::vector<bf16> k = rng.Bf16(rows * dim, 2.0);
  Fp4SimulateInPlace(k.data(), rows, dim, dim, 32);
  std::vector<uint8_t> keys(rows * key);
  PackIndexerKeys({.rows = rows,
                   .nope = dim,
                   .entry_bytes = key,
                   .x = k.data(),
                   .ldx = dim,
                   .entries = keys.data()});
  DeviceSpan<uint8_t> dkeys = Zeros<uint8_t>(rows * key);
  EXPECT_OK(backend_.PackIndexerKeys(
      *queue_,
      {.rows = rows, .nope = dim, .entry_bytes = key, .x = Up(k), .ldx = dim, .entries = dkeys}));
  EXPECT_BITWISE_EQ(Down(dkeys), keys);
  DeviceSpan<bf16> dk = Zeros<bf16>(rows * dim);
  EXPECT_OK(backend_.UnpackIndexerKeys(
      *queue_,
      {.rows = rows, .nope = dim, .entry_bytes = key, .entries = dkeys, .x = dk, .ldx = dim}));
  EXPECT_BITWISE_EQ(Down(dk), k);
  EXPECT_ERROR(backend_.PackIndexerKeys(*queue_, {.rows = rows,
                                                  .nope = 100,
                                                  .entry_bytes = key,
                                                  .x = Up(k),
                                                  .ldx = dim,
                                                  .entries = dkeys}),
               "dim a multiple of 32 (got 100)");
}

TEST_F(BackendTest, MoePermutationOpsMatchDirectCalls) {
  Rng rng(10);
  const int64_t n = 40, k = 6, experts = 16, first = 4, local = 8, d = 256;
  std::vector<int32_t> idx(n * k);
  for (auto& e : idx) e = int32_t(rng.Int(0, experts - 1));
  std::vector<int64_t> offsets(local + 1);
  std::vector<int32_t> order(n * k);
  MoePermute({.expert_idx = idx.data(),
              .n = n,
              .k = k,
              .first_expert = first,
              .num_experts = local,
              .offsets = offsets.data(),
              .order = order.data()});
  DeviceSpan<int32_t> didx = Up(idx);
  DeviceSpan<int64_t> doff = Zeros<int64_t>(local + 1);
  DeviceSpan<int32_t> dorder = Zeros<int32_t>(n * k);
  EXPECT_OK(backend_.MoePermute(*queue_, {.expert_idx = didx,
                                          .n = n,
                                          .k = k,
                                          .first_expert = first,
                                          .num_experts = local,
                                          .offsets = doff,
                                          .order = dorder}));
  EXPECT_EQ(Down(doff), offsets);
  const int64_t kept = offsets[local];
  EXPECT_EQ(Down(dorder.first(kept)), std::vector<int32_t>(order.begin(), order.begin() + kept));

  // Gather the tokens' bf16 rows per assignment, scatter them back to assignment order.
  const std::vector<bf16> x = rng.Bf16(n * d);
  std::vector<bf16> gathered(kept * d);
  GatherRows({.src = reinterpret_cast<const uint8_t*>(x.data()),
              .ld_src = 2 * d,
              .index = order.data(),
              .rows = kept,
              .divisor = k,
              .row_bytes = 2 * d,
              .dst = reinterpret_cast<uint8_t*>(gathered.data()),
              .ld_dst = 2 * d});
  DeviceSpan<bf16> dx = Up(x);
  DeviceSpan<bf16> dg = Zeros<bf16>(kept * d);
  EXPECT_OK(backend_.GatherRows(*queue_, {.src = dx.as_bytes(),
                                          .ld_src = 2 * d,
                                          .index = dorder.first(kept),
                                          .rows = kept,
                                          .divisor = k,
                                          .row_bytes = 2 * d,
                                          .dst = dg.as_writable_bytes(),
                                          .ld_dst = 2 * d}));
  EXPECT_BITWISE_EQ(Down(dg), gathered);
  std::vector<bf16> routed(n * k * d, 0);
  ScatterRows({.src = reinterpret_cast<const uint8_t*>(gathered.data()),
               .ld_src = 2 * d,
               .index = order.data(),
               .rows = kept,
               .divisor = 1,
               .row_bytes = 2 * d,
               .dst = reinterpret_cast<uint8_t*>(routed.data()),
               .ld_dst = 2 * d});
  DeviceSpan<bf16> drouted = Zeros<bf16>(n * k * d);
  EXPECT_OK(backend_.ScatterRows(*queue_, {.src = dg.as_bytes(),
                                           .ld_src = 2 * d,
                                           .index = dorder.first(kept),
                                           .rows = kept,
                                           .divisor = 1,
                                           .row_bytes = 2 * d,
                                           .dst = drouted.as_writable_bytes(),
                                           .ld_dst = 2 * d}));
  EXPECT_BITWISE_EQ(Down(drouted), routed);
  EXPECT_ERROR(backend_.GatherRows(*queue_, {.src = dx.as_bytes(),
                                             .ld_src = 2 * d,
                                             .index = dorder.first(kept),
                                             .rows = kept,
                                             .divisor = 1,
                                             .row_bytes = 2 * d,
                                             .dst = dg.as_writable_bytes(),
                                             .ld_dst = 2 * d}),
               "expected rows 0 to 39");

  // Combine every assignment's rows (all experts) with a shared output.
  const std::vector<bf16> all = rng.Bf16(n * k * d), shared = rng.Bf16(n * d);
  std::vector<bf16> out(n * d);
  MoeCombine({.expert_idx = idx.data(),
              .routed = all.data(),
              .shared = shared.data(),
              .n = n,
              .k = k,
              .d = d,
              .out = out.data()});
  DeviceSpan<bf16> dout = Zeros<bf16>(n * d);
  EXPECT_OK(backend_.MoeCombine(*queue_, {.expert_idx = didx,
                                          .routed = Up(all),
                                          .shared = Up(shared),
                                          .n = n,
                                          .k = k,
                                          .d = d,
                                          .out = dout}));
  EXPECT_BITWISE_EQ(Down(dout), out);
}

// ---------------------------------------------------------------- model ops

// Each against a plain loop written here from the op's definition (backend_ops.h).
TEST_F(BackendTest, EmbedAndRepeatRowsCopyTheSliceRowsAndZeroTheRest) {
  Rng rng(5);
  const int64_t num_rows = 7, d = 5, first = 10, n = 6, copies = 3;
  const std::vector<bf16> table = rng.Bf16(size_t(num_rows * d));
  // Below the slice, its first and last rows, above it, negative, the middle.
  const std::vector<int32_t> tokens = {9, 10, 16, 17, -1, 13};
  const auto ts = Up(table);
  const auto ks = Up(tokens);
  const auto es = Zeros<bf16>(n * d);
  EmbedRowsArgs e;
  e.table = ts;
  e.tokens = ks;
  e.first = first;
  e.num_rows = num_rows;
  e.n = n;
  e.d = d;
  e.out = es;
  EXPECT_OK(backend_.EmbedRows(*queue_, e));
  const std::vector<bf16> emb = Down(es);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t row = tokens[size_t(r)] - first;
    for (int64_t c = 0; c < d; ++c) {
      const bf16 want = row >= 0 && row < num_rows ? table[size_t(row * d + c)] : bf16(0);
      EXPECT_EQ(emb[size_t(r * d + c)], want) << "row " << r << " col " << c;
    }
  }
  RepeatRowsArgs rp;
  rp.x = es;
  rp.n = n;
  rp.copies = copies;
  rp.d = d;
  const auto hs = Zeros<bf16>(n * copies * d);
  rp.out = hs;
  EXPECT_OK(backend_.RepeatRows(*queue_, rp));
  const std::vector<bf16> h = Down(hs);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < copies; ++j)
      for (int64_t c = 0; c < d; ++c)
        EXPECT_EQ(h[size_t((r * copies + j) * d + c)], emb[size_t(r * d + c)]);
  // Checks: a short table, out overlapping x.
  e.num_rows = num_rows + 1;
  EXPECT_ERROR(backend_.EmbedRows(*queue_, e), "EmbedRows: table has 35 elements");
  rp.out = es;
  EXPECT_ERROR(backend_.RepeatRows(*queue_, rp), "RepeatRows: out has");
  rp.out = hs.subspan(0, n * copies * d);
  rp.x = hs.subspan(0, n * d);
  EXPECT_ERROR(backend_.RepeatRows(*queue_, rp), "out not overlapping x");
}

TEST_F(BackendTest, BroadcastAddRoundsEachSumOnce) {
  Rng rng(9);
  const int64_t n = 4, copies = 3, d = 33;
  std::vector<bf16> a = rng.Bf16(size_t(n * d)), b = rng.Bf16(size_t(n * copies * d), 4.0);
  // Sums that round (ties to even included) and a NaN.
  a[0] = F32ToBf16(1.0f);
  b[0] = F32ToBf16(0x1p-8f);  // 1 + 2^-8: a tie, to even (1.0)
  a[1] = F32ToBf16(1.0f);
  b[1] = F32ToBf16(0x1.8p-7f);  // 1 + 3 * 2^-8: a tie, to even (1 + 2^-6)
  b[2] = 0x7fc0;                // NaN
  const auto as = Up(a), bs = Up(b);
  const auto os = Zeros<bf16>(n * copies * d);
  BroadcastAddArgs x;
  x.a = as;
  x.b = bs;
  x.n = n;
  x.copies = copies;
  x.d = d;
  x.out = os;
  EXPECT_OK(backend_.BroadcastAdd(*queue_, x));
  const std::vector<bf16> got = Down(os);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < copies; ++j)
      for (int64_t c = 0; c < d; ++c) {
        const size_t i = size_t((r * copies + j) * d + c);
        const float sum = float(double(Bf16ToF32(a[size_t(r * d + c)])) + double(Bf16ToF32(b[i])));
        EXPECT_EQ(got[i], F32ToBf16(sum)) << i;
      }
  EXPECT_EQ(got[0], F32ToBf16(1.0f));
  EXPECT_EQ(got[1], F32ToBf16(0x1.04p0f));
  EXPECT_TRUE(std::isnan(Bf16ToF32(got[2])));
  // In place on b gives the same.
  x.out = bs;
  EXPECT_OK(backend_.BroadcastAdd(*queue_, x));
  EXPECT_EQ(Down(bs), got);
  x.out = as;
  x.n = 1;
  x.copies = 1;
  EXPECT_ERROR(backend_.BroadcastAdd(*queue_, x), "out not overlapping a");
}

TEST_F(BackendTest, ConversionsAndInterleaveAreExact) {
  const std::vector<float> f = {1.0f,
                                1.00390625f,
                                1.01171875f,
                                -0.0f,
                                3.0e38f,
                                1.0e-40f,
                                std::numeric_limits<float>::infinity(),
                                std::numeric_limits<float>::quiet_NaN()};
  const auto fs = Up(f);
  const auto bs = Zeros<bf16>(int64_t(f.size()));
  ConvertF32ToBf16Args n;
  n.x = fs;
  n.count = int64_t(f.size());
  n.y = bs;
  EXPECT_OK(backend_.ConvertF32ToBf16(*queue_, n));
  const std::vector<bf16> b = Down(bs);
  // Round to nearest even by hand: 1 + 2^-8 is a tie (to 1.0), 1 + 3 * 2^-8 rounds up.
  EXPECT_EQ(b[0], 0x3f80);
  EXPECT_EQ(b[1], 0x3f80);
  EXPECT_EQ(b[2], 0x3f82);
  EXPECT_EQ(b[3], 0x8000);
  EXPECT_EQ(b[6], 0x7f80);
  EXPECT_TRUE(std::isnan(Bf16ToF32(b[7])));
  const auto ws = Zeros<float>(int64_t(f.size()));
  ConvertBf16ToF32Args w;
  w.x = bs;
  w.count = int64_t(f.size());
  w.y = ws;
  EXPECT_OK(backend_.ConvertBf16ToF32(*queue_, w));
  const std::vector<float> back = Down(ws);
  for (size_t i = 0; i < b.size(); ++i) {
    const uint32_t bits = uint32_t(b[i]) << 16;
    EXPECT_EQ(std::memcmp(&back[i], &bits, 4), 0) << i;
  }

  // [blocks = 3, rows = 2] rows of 5 bytes -> [rows, blocks].
  std::vector<uint8_t> src(30);
  std::iota(src.begin(), src.end(), uint8_t(0));
  const auto ss = Up(src);
  const auto ds = Zeros<uint8_t>(30);
  InterleaveRowsArgs il;
  il.src = ss;
  il.blocks = 3;
  il.rows = 2;
  il.row_bytes = 5;
  il.dst = ds;
  EXPECT_OK(backend_.InterleaveRows(*queue_, il));
  const std::vector<uint8_t> dst = Down(ds);
  // dst rows: (r0 b0) (r0 b1) (r0 b2) (r1 b0) ... = src rows 0, 2, 4, 1, 3, 5.
  const int order[6] = {0, 2, 4, 1, 3, 5};
  for (int i = 0; i < 6; ++i)
    for (int c = 0; c < 5; ++c) EXPECT_EQ(dst[size_t(i * 5 + c)], src[size_t(order[i] * 5 + c)]);
  il.dst = ss;
  EXPECT_ERROR(backend_.InterleaveRows(*queue_, il), "dst not overlapping src");
}

// ---------------------------------------------------------------- MoE ops

// Each row with its own K against the row routed alone by Route with that K (its slots past K:
// its first expert, weight 0); rows at the full K also against one batched Route call.
TEST_F(BackendTest, RoutePerRowKMatchesRowsRoutedAlone) {
  Rng rng(11);
  const int64_t m = 5, experts = 64, top_k = 6, ld_hash = 8;
  const std::vector<int32_t> row_k = {6, 2, 1, 6, 4};
  const std::vector<float> logits = rng.F32(m * experts, 2.0), bias = rng.F32(experts, 0.3);
  std::vector<int64_t> hash(m * ld_hash);
  for (int64_t t = 0; t < m; ++t)  // distinct ids per row, as tid2eid rows are
    for (int64_t s = 0; s < ld_hash; ++s) hash[t * ld_hash + s] = (t * 7 + s * 5) % experts;
  for (const bool hashed : {false, true}) {
    std::vector<int32_t> idx(m * top_k), batch_idx(m * top_k);
    std::vector<float> wts(m * top_k), batch_wts(m * top_k);
    for (int64_t t = 0; t < m; ++t) {
      int32_t ri[6];
      float rw[6];
      Route({.logits = logits.data() + t * experts,
             .bias = hashed ? nullptr : bias.data(),
             .hash_ids = hashed ? hash.data() + t * ld_hash : nullptr,
             .ld_hash = ld_hash,
             .m = 1,
             .num_experts = experts,
             .top_k = row_k[t],
             .route_scale = 1.5f,
             .expert_idx = ri,
             .weights = rw});
      for (int64_t s = 0; s < top_k; ++s) {
        idx[t * top_k + s] = s < row_k[t] ? ri[s] : ri[0];
        wts[t * top_k + s] = s < row_k[t] ? rw[s] : 0.0f;
      }
    }
    Route({.logits = logits.data(),
           .bias = hashed ? nullptr : bias.data(),
           .hash_ids = hashed ? hash.data() : nullptr,
           .ld_hash = ld_hash,
           .m = m,
           .num_experts = experts,
           .top_k = top_k,
           .route_scale = 1.5f,
           .expert_idx = batch_idx.data(),
           .weights = batch_wts.data()});
    RoutePerRowKArgs args{.logits = Up(logits),
                          .ld_hash = ld_hash,
                          .row_top_k = Up(row_k),
                          .m = m,
                          .num_experts = experts,
                          .top_k = top_k,
                          .route_scale = 1.5f,
                          .expert_idx = Zeros<int32_t>(m * top_k),
                          .weights = Zeros<float>(m * top_k)};
    if (hashed) {
      args.hash_ids = Up(hash);
    } else {
      args.bias = Up(bias);
    }
    EXPECT_OK(backend_.RoutePerRowK(*queue_, args));
    const std::vector<int32_t> got_idx = Down(args.expert_idx);
    const std::vector<float> got_wts = Down(args.weights);
    EXPECT_BITWISE_EQ(got_idx, idx) << hashed;
    EXPECT_BITWISE_EQ(got_wts, wts) << hashed;
    for (const int64_t t : {0, 3}) {  // rows at the full K
      for (int64_t s = 0; s < top_k; ++s) {
        EXPECT_EQ(got_idx[t * top_k + s], batch_idx[t * top_k + s]);
        EXPECT_EQ(got_wts[t * top_k + s], batch_wts[t * top_k + s]);
      }
    }
    // A K of 1: the whole weight on one expert, route_scale * 1.
    EXPECT_EQ(got_wts[2 * top_k], 1.5f);
    args.row_top_k = Up(std::vector<int32_t>{6, 2, 7, 6, 4});
    EXPECT_ERROR(backend_.RoutePerRowK(*queue_, args), "row_top_k[2] = 7; expected 1 to 6");
  }
}

// The grouped GEMMs against each row multiplied alone by its group's weights (the direct GEMMs
// with m = 1), over a window that cuts groups, skips an empty one and runs past the last group
// (those rows keep what they held).
TEST_F(BackendTest, GroupedGemmsMatchRowsAlone) {
  Rng rng(12);
  const int64_t groups = 3, n = 130, k = 256, ldc = 133, kb = k / 128;
  const std::vector<int64_t> offsets = {0, 3, 3, 7};  // group 1 empty
  const int64_t row_begin = 1, rows = 8;              // rows 1..8 of the grouping; 7, 8: none
  const std::vector<fp8> a = rng.Fp8Codes(rows * k);
  const std::vector<e8m0> as = rng.Scales(rows * kb);
  const std::vector<bf16> sentinel(rows * ldc, F32ToBf16(-3.0f));
  auto group_of = [&](int64_t r) -> int64_t {  // r: row of the window
    for (int64_t g = 0; g < groups; ++g)
      if (row_begin + r >= offsets[g] && row_begin + r < offsets[g + 1]) return g;
    return -1;
  };
  ASSERT_EQ(group_of(6), -1);
  const DeviceSpan<int64_t> doff = Up(offsets);

  // FP8 x FP4.
  std::vector<std::vector<uint8_t>> w4(groups);
  std::vector<std::vector<e8m0>> w4s(groups);
  std::vector<In<uint8_t>> dw4;
  std::vector<In<e8m0>> dw4s;
  for (int64_t g = 0; g < groups; ++g) {
    w4[g] = rng.Bytes(n * k / 2);
    w4s[g] = rng.Scales(n * k / 32);
    dw4.push_back(Up(w4[g]));
    dw4s.push_back(Up(w4s[g]));
  }
  std::vector<bf16> c = sentinel;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t g = group_of(r);
    if (g < 0) continue;
    GemmFp8Fp4({.a = a.data() + r * k,
                .a_scale = as.data() + r * kb,
                .w = w4[g].data(),
                .w_scale = w4s[g].data(),
                .c = c.data() + r * ldc,
                .ldc = ldc,
                .m = 1,
                .n = n,
                .k = k});
  }
  DeviceSpan<bf16> dc = Up(sentinel);
  EXPECT_OK(backend_.GroupedGemmFp8Fp4(*queue_, {.a = Up(a),
                                                 .a_scale = Up(as),
                                                 .w = dw4,
                                                 .w_scale = dw4s,
                                                 .offsets = doff,
                                                 .row_begin = row_begin,
                                                 .rows = rows,
                                                 .c = dc,
                                                 .ldc = ldc,
                                                 .n = n,
                                                 .k = k}));
  EXPECT_BITWISE_EQ(Down(dc), c);
  EXPECT_ERROR(backend_.GroupedGemmFp8Fp4(*queue_, {.a = Up(a),
                                                    .a_scale = Up(as),
                                                    .w = dw4,
                                                    .w_scale = std::span(dw4s).first(2),
                                                    .offsets = doff,
                                                    .rows = rows,
                                                    .c = dc,
                                                    .ldc = ldc,
                                                    .n = n,
                                                    .k = k}),
               "w_scale with one span per group (3; got 2)");
  EXPECT_ERROR(backend_.GroupedGemmFp8Fp4(*queue_, {.a = Up(a),
                                                    .a_scale = Up(as),
                                                    .w = dw4,
                                                    .w_scale = dw4s,
                                                    .offsets = Up(std::vector<int64_t>{0, 3, 2, 7}),
                                                    .rows = rows,
                                                    .c = dc,
                                                    .ldc = ldc,
                                                    .n = n,
                                                    .k = k}),
               "offsets[2] = 2; expected >= offsets[1] = 3");

  // FP8, UE8M0 and f32 block scales.
  std::vector<std::vector<fp8>> w8(groups);
  std::vector<std::vector<e8m0>> w8s(groups);
  std::vector<std::vector<float>> w8f(groups);
  std::vector<In<fp8>> dw8;
  std::vector<In<e8m0>> dw8s;
  std::vector<In<float>> dw8f;
  for (int64_t g = 0; g < groups; ++g) {
    w8[g] = rng.Fp8Codes(n * k);
    w8s[g] = rng.Scales(2 * kb);
    w8f[g] = rng.F32(2 * kb, 0.01);
    dw8.push_back(Up(w8[g]));
    dw8s.push_back(Up(w8s[g]));
    dw8f.push_back(Up(w8f[g]));
  }
  for (const bool f32_scales : {false, true}) {
    std::vector<bf16> c8 = sentinel;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t g = group_of(r);
      if (g < 0) continue;
      GemmFp8({.a = a.data() + r * k,
               .a_scale = as.data() + r * kb,
               .w = w8[g].data(),
               .w_scale = f32_scales ? nullptr : w8s[g].data(),
               .w_scale_f32 = f32_scales ? w8f[g].data() : nullptr,
               .c = c8.data() + r * ldc,
               .ldc = ldc,
               .m = 1,
               .n = n,
               .k = k});
    }
    DeviceSpan<bf16> dc8 = Up(sentinel);
    GroupedGemmFp8Args args{.a = Up(a),
                            .a_scale = Up(as),
                            .w = dw8,
                            .offsets = doff,
                            .row_begin = row_begin,
                            .rows = rows,
                            .c = dc8,
                            .ldc = ldc,
                            .n = n,
                            .k = k};
    if (f32_scales) {
      args.w_scale_f32 = dw8f;
    } else {
      args.w_scale = dw8s;
    }
    EXPECT_OK(backend_.GroupedGemmFp8(*queue_, args));
    EXPECT_BITWISE_EQ(Down(dc8), c8) << f32_scales;
  }

  // bf16, a row stride wider than k.
  const int64_t kbf = 72, lda = 80;
  const std::vector<bf16> ab = rng.Bf16(rows * lda);
  std::vector<std::vector<bf16>> wb(groups);
  std::vector<In<bf16>> dwb;
  for (int64_t g = 0; g < groups; ++g) {
    wb[g] = rng.Bf16(n * kbf);
    dwb.push_back(Up(wb[g]));
  }
  std::vector<bf16> cb = sentinel;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t g = group_of(r);
    if (g < 0) continue;
    GemmBf16({.a = ab.data() + r * lda,
              .lda = lda,
              .w = wb[g].data(),
              .ldw = kbf,
              .c = cb.data() + r * ldc,
              .ldc = ldc,
              .m = 1,
              .n = n,
              .k = kbf});
  }
  DeviceSpan<bf16> dcb = Up(sentinel);
  EXPECT_OK(backend_.GroupedGemmBf16(*queue_, {.a = Up(ab),
                                               .lda = lda,
                                               .w = dwb,
                                               .offsets = doff,
                                               .row_begin = row_begin,
                                               .rows = rows,
                                               .c = dcb,
                                               .ldc = ldc,
                                               .n = n,
                                               .k = kbf}));
  EXPECT_BITWISE_EQ(Down(dcb), cb);
}

}  // namespace
}  // namespace flotilla::kernels
