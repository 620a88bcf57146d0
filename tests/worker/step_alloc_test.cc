// Steady-state steps allocate nothing: this binary replaces the global operator new/delete with
// counting versions, warms the tiny model up (first steps of each sequence, thread-local kernel
// scratch), then counts the heap allocations of several decode steps and of a prefill chunk of
// the step's whole token budget. The step workspace (sharding/step_workspace.h) is what makes
// the count zero; a deliberate allocation shows the counter sees one.
//
// The distributed case runs two expert-parallel ranks in this process (the in-process comm, one
// thread per rank) and counts the same way. Allocations made inside a communication call are
// the transport's own and are counted apart (printed, not asserted): the model's side of the
// exchange (its buffers, the records, the grouping and the replies) must make none.
#include <atomic>
#include <barrier>
#include <cstdlib>
#include <filesystem>
#include <new>
#include <thread>

#include "comm/fake_comm.h"
#include "common/synthetic.h"
#include "gtest/gtest.h"
#include "worker/model.h"
#include "worker/worker_load.h"

namespace {
std::atomic<bool> g_counting{false};
std::atomic<int64_t> g_allocations{0};
std::atomic<int64_t> g_transport_allocations{0};
thread_local bool t_in_transport = false;  // inside a Comm call (or a test barrier)

void* CountedAlloc(size_t size, size_t align) {
  if (g_counting.load(std::memory_order_relaxed)) {
    (t_in_transport ? g_transport_allocations : g_allocations).fetch_add(1);
  }
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
  void RunDistributed(int num_ranks, int tp, bool count_prefill);
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

// Marks the calling thread as inside the transport while it lives.
struct TransportScope {
  TransportScope() { t_in_transport = true; }
  ~TransportScope() { t_in_transport = false; }
};

// A Comm that forwards every call to `inner`, marking it as the transport's.
class TransportMarkedComm final : public Comm {
 public:
  explicit TransportMarkedComm(std::unique_ptr<Comm> inner)
      : Comm(inner->rank(), Ranks(*inner), inner->options()), inner_(std::move(inner)) {}

 private:
  static std::vector<int> Ranks(const Comm& c) {
    std::vector<int> r(c.size());
    for (int i = 0; i < c.size(); ++i) r[i] = c.world_rank(i);
    return r;
  }
  absl::Status DoAllToAllV(const void* send, absl::Span<const size_t> send_bytes, void* recv,
                           absl::Span<const size_t> recv_bytes, const CallContext& call) override {
    TransportScope t;
    return inner_->AllToAllV(send, send_bytes, recv, recv_bytes, call.site, call.timeout);
  }
  absl::Status DoAllReduceSum(float* data, size_t count, const CallContext& call) override {
    TransportScope t;
    return inner_->AllReduceSum(data, count, call.site, call.timeout);
  }
  absl::Status DoAllGather(const void* send, size_t bytes, void* recv,
                           const CallContext& call) override {
    TransportScope t;
    return inner_->AllGather(send, bytes, recv, call.site, call.timeout);
  }
  absl::Status DoBroadcast(void* data, size_t bytes, int root, const CallContext& call) override {
    TransportScope t;
    return inner_->Broadcast(data, bytes, root, call.site, call.timeout);
  }
  absl::Status DoBarrier(const CallContext& call) override {
    TransportScope t;
    return inner_->Barrier(call.site, call.timeout);
  }
  absl::StatusOr<std::unique_ptr<Comm>> DoSplit(int color, int key,
                                                const CallContext& call) override {
    TransportScope t;
    ASSIGN_OR_RETURN(std::unique_ptr<Comm> child,
                     inner_->Split(color, key, call.site, call.timeout));
    return std::unique_ptr<Comm>(new TransportMarkedComm(std::move(child)));
  }
  void DoAbort(const absl::Status& status) override { inner_->Abort(status); }
  absl::Status DoShutdown() override { return inner_->Shutdown(); }

  std::unique_ptr<Comm> inner_;
};

// Workers of one job (expert parallel over all of them, `tp` ranks to a TP group), each DP group
// with its own sequences: warmed up, then counted over decode steps and (count_prefill) a
// prefill chunk of the whole budget.
void StepAllocations::RunDistributed(int num_ranks, int tp, bool count_prefill) {
  std::vector<std::unique_ptr<Comm>> comms;
  for (std::unique_ptr<Comm>& c : FakeCommGroup::Create(num_ranks)) {
    comms.push_back(std::make_unique<TransportMarkedComm>(std::move(c)));
  }
  std::vector<std::unique_ptr<Comm>> tp_comms(num_ranks);
  std::vector<LoadedWorker> workers(num_ranks);
  std::vector<std::string> errors(num_ranks);
  {
    std::vector<std::thread> loads;
    for (int r = 0; r < num_ranks; ++r) {
      loads.emplace_back([&, r] {
        if (tp > 1) {
          absl::StatusOr<std::unique_ptr<Comm>> t = comms[r]->Split(r / tp, r % tp, {"tp"});
          if (!t.ok()) {
            errors[r] = std::string(t.status().message());
            return;
          }
          tp_comms[r] = std::move(*t);
        }
        WorkerLoadOptions o;
        o.model_dir = dir_;
        o.tp = tp;
        o.kv_memory_bytes = 128ull << 20;
        o.tokens_per_step = kBudget;
        o.sequences_per_step = 4;
        o.exchange_rows = 16;  // a prefill chunk's MoE runs in several rounds
        absl::StatusOr<LoadedWorker> w = LoadWorker(o, *comms[r], tp_comms[r].get());
        if (w.ok()) {
          workers[r] = std::move(*w);
        } else {
          errors[r] = std::string(w.status().message());
        }
      });
    }
    for (std::thread& t : loads) t.join();
  }
  for (int r = 0; r < num_ranks; ++r) ASSERT_EQ(errors[r], "") << "rank " << r;
  const ExchangeLayout& ex = workers[0].model->workspace_layout().exchange;
  EXPECT_EQ(ex.rows_per_round, 16);
  EXPECT_EQ(workers[0].model->workspace_bytes(), workers[0].model->workspace_layout().Bytes());

  // Three phases, each between two barriers the test thread joins: warm-up, counted, counted.
  std::barrier sync(num_ranks + 1);
  auto wait = [&] {
    TransportScope t;
    sync.arrive_and_wait();
  };
  std::vector<std::thread> ranks;
  for (int r = 0; r < num_ranks; ++r) {
    ranks.emplace_back([&, r] {
      const int group = r / tp;  // the ranks of a TP group run the same chunks
      Model& m = *workers[r].model;
      auto a = m.NewSequence(), b = m.NewSequence();
      const std::vector<int32_t> pa = Prompt(200, 10 + group), pb = Prompt(150, 20 + group);
      Model::Output out;
      auto step = [&](std::span<const Model::Chunk> chunks) {
        const absl::Status s = m.Forward(chunks, &out);
        if (!s.ok() && errors[r].empty()) errors[r] = std::string(s.message());
      };
      int32_t ta = pa[128], tb = pb[60];
      auto decode = [&](int steps) {
        for (int i = 0; i < steps; ++i) {
          const Model::Chunk chunks[2] = {{a.get(), std::span<const int32_t>(&ta, 1)},
                                          {b.get(), std::span<const int32_t>(&tb, 1)}};
          step(chunks);
          ta = int32_t((ta + 17 + group) % 129280);
          tb = int32_t((tb + 29 + group) % 129280);
        }
      };
      for (size_t s = 0; s + kBudget <= 128; s += kBudget) {
        const Model::Chunk ch{a.get(), std::span<const int32_t>(pa.data() + s, kBudget)};
        step(std::span(&ch, 1));
      }
      const Model::Chunk first{b.get(), std::span(pb).first(60)};
      step(std::span(&first, 1));
      decode(4);
      wait();  // the test thread turns counting on
      wait();
      decode(6);
      if (count_prefill) {
        const Model::Chunk chunk{b.get(), std::span<const int32_t>(pb.data() + 61, kBudget)};
        step(std::span(&chunk, 1));
      }
      decode(2);
      wait();  // the test thread turns counting off
    });
  }
  wait();
  g_allocations = 0;
  g_transport_allocations = 0;
  g_counting = true;
  wait();
  wait();
  g_counting = false;
  for (std::thread& t : ranks) t.join();
  for (int r = 0; r < num_ranks; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
  EXPECT_EQ(g_allocations.load(), 0);
  std::printf("transport allocations (in-process comm, not asserted): %lld\n",
              (long long)g_transport_allocations.load());
}

TEST_F(StepAllocations, DistributedSteadyStateStepsAllocateNothing) { RunDistributed(2, 1, true); }

// Two DP groups of two TP ranks: the token slices' all-gather and the TP sums too. Decode steps
// only: a kernel's per-thread scratch grows to the most rows one GEMM call of that thread has
// met (docs/capacity.md §7), and how a prefill chunk's rows fall into experts depends on the
// data, so a counted chunk could meet a larger group than any warm-up chunk did.
TEST_F(StepAllocations, DistributedTensorParallelDecodeStepsAllocateNothing) {
  RunDistributed(4, 2, false);
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
