// Steady-state steps allocate nothing: this binary replaces the global operator new/delete with
// counting versions, warms the tiny model up (first steps of each sequence, thread-local kernel
// scratch), then counts the heap allocations of several decode steps and of a prefill chunk of
// the step's whole token budget. The step workspace (sharding/step_workspace.h) is what makes
// the count zero; a deliberate allocation shows the counter sees one.
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <new>

#include "common/synthetic.h"
#include "gtest/gtest.h"
#include "worker/model.h"

namespace {
std::atomic<bool> g_counting{false};
std::atomic<int64_t> g_allocations{0};

void* CountedAlloc(size_t size, size_t align) {
  if (g_counting.load(std::memory_order_relaxed)) g_allocations.fetch_add(1);
  if (size == 0) size = 1;
  void* p = align > alignof(std::max_align_t)
                ? std::aligned_alloc(align, (size + align - 1) / align * align)
                : std::malloc(size);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
}  // namespace

void* operator new(size_t size) { return CountedAlloc(size, 0); }
void* operator new[](size_t size) { return CountedAlloc(size, 0); }
void* operator new(size_t size, std::align_val_t a) { return CountedAlloc(size, size_t(a)); }
void* operator new[](size_t size, std::align_val_t a) { return CountedAlloc(size, size_t(a)); }
void* operator new(size_t size, const std::nothrow_t&) noexcept {
  try {
    return CountedAlloc(size, 0);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { std::free(p); }

namespace flotilla {
namespace {

namespace fs = std::filesystem;

// Allocations made while `fn` runs.
template <class F>
int64_t CountAllocations(F&& fn) {
  g_allocations = 0;
  g_counting = true;
  fn();
  g_counting = false;
  return g_allocations.load();
}

std::vector<int32_t> Prompt(int64_t n, int32_t salt) {
  std::vector<int32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = int32_t((i * 7919 + salt * 104729 + 11) % 129280);
  return ids;
}

class StepAllocations : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() / ("flotilla_step_alloc_tiny_" + std::to_string(::getpid())))
               .string();
    auto config = PresetConfig("tiny");
    ASSERT_TRUE(config.ok()) << config.status();
    SyntheticOptions opt;
    opt.seed = 5;
    ASSERT_TRUE(WriteSyntheticCheckpoint(*config, opt, dir_).ok());
    ModelOptions o;
    o.kv_memory_bytes = 256ull << 20;
    o.tokens_per_step = kBudget;
    o.sequences_per_step = 4;
    o.logit_rows = 4;
    o.max_context = 4096;
    o.indexer_block_keys = 16;  // several key blocks per step at the positions below
    auto m = Model::Load(dir_, o);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::move(*m);
  }
  void TearDown() override {
    model_.reset();
    fs::remove_all(dir_);
  }
  static constexpr int64_t kBudget = 64;
  std::string dir_;
  std::unique_ptr<Model> model_;
};

TEST_F(StepAllocations, CounterSeesADeliberateAllocation) {
  const int64_t n = CountAllocations([] {
    std::vector<int>* v = new std::vector<int>(100);
    delete v;
  });
  EXPECT_EQ(n, 2);  // the vector object and its elements
}

TEST_F(StepAllocations, SteadyStateStepsAllocateNothing) {
  auto a = model_->NewSequence(), b = model_->NewSequence();
  const std::vector<int32_t> pa = Prompt(300, 1), pb = Prompt(200, 2);
  Model::Output out;
  // Warm-up: the sequences' first steps (page tables, MTP state) and the kernels' per-thread
  // scratch, over prefill chunks of the whole budget and decode steps.
  for (size_t s = 0; s + kBudget <= 256; s += kBudget) {
    Model::Chunk ch{a.get(), std::span<const int32_t>(pa.data() + s, kBudget)};
    ASSERT_TRUE(model_->Forward(std::span<const Model::Chunk>(&ch, 1), &out).ok());
  }
  ASSERT_TRUE(model_
                  ->Forward(std::span<const Model::Chunk>(
                                std::vector<Model::Chunk>{{b.get(), std::span(pb).first(60)}}),
                            &out)
                  .ok());
  int32_t ta = pa[256], tb = pb[60];
  auto decode = [&](int steps) {
    for (int i = 0; i < steps; ++i) {
      const Model::Chunk chunks[2] = {{a.get(), std::span<const int32_t>(&ta, 1)},
                                      {b.get(), std::span<const int32_t>(&tb, 1)}};
      ASSERT_TRUE(model_->Forward(chunks, &out).ok());
      ta = int32_t((ta + 17) % 129280);
      tb = int32_t((tb + 29) % 129280);
    }
  };
  decode(4);
  // Counted: decode steps across compression-block boundaries, then a prefill chunk of the
  // whole budget on a sequence already under way.
  EXPECT_EQ(CountAllocations([&] { decode(9); }), 0);
  const int64_t prefill = CountAllocations([&] {
    Model::Chunk ch{b.get(), std::span<const int32_t>(pb.data() + 61, kBudget)};
    ASSERT_TRUE(model_->Forward(std::span<const Model::Chunk>(&ch, 1), &out).ok());
  });
  EXPECT_EQ(prefill, 0);
  EXPECT_EQ(CountAllocations([&] { decode(3); }), 0);
}

TEST_F(StepAllocations, StepsBeyondTheWorkspaceAreRefused) {
  auto a = model_->NewSequence();
  const std::vector<int32_t> p = Prompt(kBudget + 1, 3);
  Model::Output out;
  Model::Chunk ch{a.get(), std::span<const int32_t>(p)};
  const absl::Status s = model_->Forward(std::span<const Model::Chunk>(&ch, 1), &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("65 tokens exceeds the 64 tokens per step"), std::string::npos)
      << s.message();
  EXPECT_EQ(model_->workspace_bytes(), model_->workspace_layout().Bytes());
}

}  // namespace
}  // namespace flotilla
