#include "sharding/device_budget.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/sharding/test_util.h"

namespace flotilla {
namespace {

using ::flotilla::testing::ShippedConfig;
using ::testing::HasSubstr;

constexpr uint64_t kGiB = 1ull << 30, kMiB = 1ull << 20;

KvPoolLayout FlashLayout() {
  absl::StatusOr<KvPoolLayout> l = KvPoolLayout::Make(ShippedConfig("DeepSeek-V4-Flash"), 65536);
  EXPECT_TRUE(l.ok()) << l.status();
  return *l;
}

TEST(DefaultGpuReserve, OneThirtySecondOrOneGiB) {
  EXPECT_EQ(DefaultGpuReserve(141 * kGiB), 141 * kGiB / 32);  // 4.41 GiB
  EXPECT_EQ(DefaultGpuReserve(16 * kGiB), kGiB);
}

// An H200 worker: 141 GiB total, 139.5 GiB free after its context; the rest by hand.
TEST(PlanDeviceMemory, PoolTakesWhatIsLeftInWholePages) {
  const KvPoolLayout layout = FlashLayout();
  DeviceMemoryRequest r;
  r.total = 141 * kGiB;
  r.free = 139 * kGiB + 512 * kMiB;
  r.weights = 30 * kGiB;
  r.workspace = 2 * kGiB;
  r.exchange = 75'806'272;
  const absl::StatusOr<DeviceMemoryBudget> b = PlanDeviceMemory(r, layout, 1'048'576);
  ASSERT_TRUE(b.ok()) << b.status();
  const uint64_t reserve = 141 * kGiB / 32;
  const uint64_t left = r.free - reserve - 30 * kGiB - 2 * kGiB - 75'806'272;
  EXPECT_EQ(b->reserve, reserve);
  EXPECT_EQ(b->pages, int64_t(left / 65536));
  EXPECT_EQ(b->kv_pool, left / 65536 * 65536);
  EXPECT_EQ(b->unused, left % 65536);
  EXPECT_EQ(b->weights + b->workspace + b->exchange + b->reserve + b->kv_pool + b->unused,
            b->available);
  // ~103 GiB of pool at ~3.5 KB/token holds the whole 1M context for one sequence.
  EXPECT_EQ(b->longest_context, 1'048'576);
  EXPECT_THAT(b->Describe(layout), HasSubstr("pages of 64.00 KiB"));
}

TEST(PlanDeviceMemory, KvMemoryIsTakenAsAsked) {
  const KvPoolLayout layout = FlashLayout();
  DeviceMemoryRequest r;
  r.total = 80 * kGiB;
  r.free = 79 * kGiB;
  r.reserve = 2 * kGiB;
  r.weights = 40 * kGiB;
  r.kv_memory = kGiB + 1000;  // rounds down to whole pages
  const DeviceMemoryBudget b = *PlanDeviceMemory(r, layout, 1'048'576);
  EXPECT_EQ(b.pages, 16384);
  EXPECT_EQ(b.kv_pool, kGiB);
  EXPECT_EQ(b.unused, 79 * kGiB - 2 * kGiB - 40 * kGiB - kGiB);
  // The longest context is the last T whose pages fit (1 GiB: some 300k tokens, below the cap).
  EXPECT_LT(b.longest_context, 1'048'576);
  EXPECT_LE(layout.SequencePages(b.longest_context).Total(), b.pages);
  EXPECT_GT(layout.SequencePages(b.longest_context + 1).Total(), b.pages);

  r.kv_memory = 38 * kGiB;  // 37 GiB are left
  const absl::StatusOr<DeviceMemoryBudget> over = PlanDeviceMemory(r, layout, 1'048'576);
  ASSERT_FALSE(over.ok());
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(over.status().message(), HasSubstr("--kv-memory 38.00 GiB does not fit"));
  EXPECT_THAT(over.status().message(), HasSubstr("leave 37.00 GiB of the 79.00 GiB available"));
}

TEST(PlanDeviceMemory, FixedClaimsBeyondTheDeviceAreRefused) {
  DeviceMemoryRequest r;
  r.total = 80 * kGiB;
  r.free = 79 * kGiB;
  r.reserve = 2 * kGiB;
  r.weights = 78 * kGiB;
  const absl::StatusOr<DeviceMemoryBudget> b = PlanDeviceMemory(r, FlashLayout(), 1'048'576);
  ASSERT_FALSE(b.ok());
  EXPECT_THAT(b.status().message(),
              HasSubstr("weights 78.00 GiB + workspace 0 B + exchange 0 B + reserve 2.00 GiB "
                        "exceed the 79.00 GiB available by 1.00 GiB"));
}

TEST(PlanDeviceMemory, APoolBelowOneEmptySequenceIsRefused) {
  const KvPoolLayout layout = FlashLayout();
  DeviceMemoryRequest r;
  r.total = 80 * kGiB;
  r.free = 79 * kGiB;
  r.kv_memory = 65536;  // one page; a V4-Flash sequence needs its rings and states first
  const absl::StatusOr<DeviceMemoryBudget> b = PlanDeviceMemory(r, layout, 1'048'576);
  ASSERT_FALSE(b.ok());
  EXPECT_THAT(b.status().message(), HasSubstr("cannot hold one sequence's sliding-window rings"));
  EXPECT_GT(layout.SequencePages(0).Total(), 1);
}

TEST(PlanDeviceMemory, WorkersSharingADeviceSplitWhatIsFree) {
  DeviceMemoryRequest r;
  r.total = 80 * kGiB;
  r.free = 60 * kGiB;
  r.reserve = kGiB;
  r.weights = 20 * kGiB;
  r.sharing = 2;
  const DeviceMemoryBudget b = *PlanDeviceMemory(r, FlashLayout(), 1'048'576);
  EXPECT_EQ(b.available, 30 * kGiB);
  EXPECT_EQ(b.kv_pool, 9 * kGiB);
  r.weights = 30 * kGiB;
  const absl::StatusOr<DeviceMemoryBudget> over = PlanDeviceMemory(r, FlashLayout(), 1'048'576);
  ASSERT_FALSE(over.ok());
  EXPECT_THAT(over.status().message(), HasSubstr("shared by 2 workers"));
  r.sharing = 0;
  EXPECT_EQ(PlanDeviceMemory(r, FlashLayout(), 1'048'576).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace flotilla
