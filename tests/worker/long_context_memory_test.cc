// A 64k-token prompt on the tiny model keeps the process's memory within what `flotilla plan`
// counts for a rank: weights + KV pool + step workspace, plus a stated allowance for what is
// neither (page tables, sequence state, thread stacks, the kernels' per-thread scratch, the
// allocator's slack). The peak resident set (VmHWM) is reset after the checkpoint is written, so
// the figure is the model's own.
#include <filesystem>
#include <fstream>
#include <string>

#include "common/synthetic.h"
#include "gtest/gtest.h"
#include "sharding/capacity.h"
#include "sharding/kv_pool_layout.h"
#include "sharding/step_workspace.h"
#include "worker/model.h"

namespace flotilla {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kAllowance = 64ull << 20;  // everything that is not weights, pool, workspace

// A field of /proc/self/status in bytes (the kernel reports kB).
uint64_t StatusBytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string key;
  uint64_t kib = 0;
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stoull(line.substr(field.size() + 1)) * 1024;
  }
  return 0;
}

TEST(LongContextMemory, SixtyFourKPromptStaysWithinThePlan) {
  const std::string dir =
      (fs::temp_directory_path() / ("flotilla_long_context_tiny_" + std::to_string(::getpid())))
          .string();
  auto config = PresetConfig("tiny");
  ASSERT_TRUE(config.ok()) << config.status();
  SyntheticOptions opt;
  opt.seed = 11;
  ASSERT_TRUE(WriteSyntheticCheckpoint(*config, opt, dir).ok());
  uint64_t weights = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors") weights += uint64_t(e.file_size());

  constexpr int64_t kPrompt = 65536, kChunk = 2048;
  ModelOptions o;
  o.tokens_per_step = kChunk;
  o.sequences_per_step = 1;
  o.logit_rows = 1;
  o.max_context = kPrompt;
  auto layout = KvPoolLayout::Make(*config, o.kv_page_bytes);
  ASSERT_TRUE(layout.ok()) << layout.status();
  o.kv_memory_bytes = uint64_t(layout->SequencePages(kPrompt).Total()) * layout->page_bytes;

  // Reset the peak resident set to what the process holds now.
  { std::ofstream("/proc/self/clear_refs") << "5"; }
  const uint64_t base = StatusBytes("VmRSS");
  ASSERT_GT(base, 0u);

  uint64_t workspace = 0;
  {
    auto m = Model::Load(dir, o);
    ASSERT_TRUE(m.ok()) << m.status();
    workspace = (*m)->workspace_bytes();
    // What `flotilla plan` would count for this rank's step workspace.
    StepLimits l;
    l.tokens = kChunk;
    l.sequences = 1;
    l.logit_rows = 1;
    l.max_context = kPrompt;
    auto planned = MakeStepWorkspaceLayout(*config, l);
    ASSERT_TRUE(planned.ok());
    EXPECT_EQ(workspace, planned->Bytes());

    auto seq = (*m)->NewSequence();
    std::vector<int32_t> ids(kChunk);
    Model::Output out;
    for (int64_t s = 0; s < kPrompt; s += kChunk) {
      for (int64_t i = 0; i < kChunk; ++i) ids[i] = int32_t(((s + i) * 7919 + 13) % 129280);
      Model::Chunk ch{seq.get(), std::span<const int32_t>(ids)};
      const absl::Status st = (*m)->Forward(std::span<const Model::Chunk>(&ch, 1), &out);
      ASSERT_TRUE(st.ok()) << "at " << s << ": " << st;
    }
    EXPECT_EQ(seq->position(), kPrompt);
    EXPECT_EQ((*m)->kv_pool().pages_free(), 0);  // the pool was sized to exactly this prompt
  }
  const uint64_t peak = StatusBytes("VmHWM");
  const uint64_t budget = weights + o.kv_memory_bytes + workspace + kAllowance;
  std::printf("peak %s over a base of %s; weights %s + pool %s + workspace %s + allowance %s\n",
              FormatBytes(peak - base).c_str(), FormatBytes(base).c_str(),
              FormatBytes(weights).c_str(), FormatBytes(o.kv_memory_bytes).c_str(),
              FormatBytes(workspace).c_str(), FormatBytes(kAllowance).c_str());
  EXPECT_LE(peak - base, budget);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace flotilla
