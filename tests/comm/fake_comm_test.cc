// FakeComm with 1..4 ranks (threads) through the shared Comm cases (label cpu).
#include "comm/fake_comm.h"

#include <functional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/comm/comm_cases.h"

namespace flotilla::comm_test {
namespace {

// Runs `body` on every rank of a fresh n-rank fake group, one thread per rank.
void RunRanks(int n, const std::function<void(Comm&)>& body) {
  CommOptions options;
  options.timeout = absl::Seconds(20);
  std::vector<std::unique_ptr<Comm>> comms = FakeCommGroup::Create(n, options);
  ASSERT_EQ(static_cast<int>(comms.size()), n);
  std::vector<std::thread> threads;
  for (auto& comm : comms) threads.emplace_back([&body, &comm] { body(*comm); });
  for (auto& thread : threads) thread.join();
}

class FakeCommTest : public ::testing::TestWithParam<int> {};

TEST_P(FakeCommTest, RanksAndSizes) {
  RunRanks(GetParam(), [&](Comm& comm) {
    EXPECT_EQ(comm.size(), GetParam());
    EXPECT_EQ(comm.world_rank(comm.rank()), comm.rank());
  });
}
TEST_P(FakeCommTest, AllToAllVPayloads) { RunRanks(GetParam(), AllToAllVPayloads); }
TEST_P(FakeCommTest, AllToAllVEmpty) { RunRanks(GetParam(), AllToAllVEmpty); }
TEST_P(FakeCommTest, AllToAllVLarge) { RunRanks(GetParam(), AllToAllVLarge); }
TEST_P(FakeCommTest, AllReduceSumRankOrder) {
  RunRanks(GetParam(), [](Comm& comm) { AllReduceSum(comm, /*rank_order_exact=*/true); });
}
TEST_P(FakeCommTest, AllGatherRankOrder) { RunRanks(GetParam(), AllGatherRankOrder); }
TEST_P(FakeCommTest, BroadcastFromEachRoot) { RunRanks(GetParam(), BroadcastFromEachRoot); }
TEST_P(FakeCommTest, BarrierWaitsForLastRank) { RunRanks(GetParam(), BarrierWaitsForLastRank); }
TEST_P(FakeCommTest, SplitTpGroups) { RunRanks(GetParam(), SplitTpGroups); }
TEST_P(FakeCommTest, InvalidArgumentsAreLocal) { RunRanks(GetParam(), InvalidArgumentsAreLocal); }
TEST_P(FakeCommTest, SizeMismatchIsReported) { RunRanks(GetParam(), SizeMismatchIsReported); }
TEST_P(FakeCommTest, DeadlineNamesMissingRank) {
  if (GetParam() < 2) GTEST_SKIP() << "needs a peer to miss";
  RunRanks(GetParam(), [](Comm& comm) { DeadlineNamesMissingRank(comm, nullptr); });
}
TEST_P(FakeCommTest, DeadlineInAllToAllV) {
  if (GetParam() < 2) GTEST_SKIP() << "needs a peer to miss";
  RunRanks(GetParam(), [](Comm& comm) { DeadlineInAllToAllV(comm, nullptr); });
}
TEST_P(FakeCommTest, AbortReachesWaitingRanks) { RunRanks(GetParam(), AbortReachesWaitingRanks); }

INSTANTIATE_TEST_SUITE_P(Ranks, FakeCommTest, ::testing::Values(1, 2, 3, 4),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return absl::StrCat("n", info.param);
                         });

// Calls in a different order on two ranks: both fail fast instead of hanging.
TEST(FakeCommMismatchTest, DifferentCallsFailFast) {
  RunRanks(2, [](Comm& comm) {
    const absl::Status st = comm.rank() == 0 ? comm.Barrier({"mismatch", 1})
                                             : comm.AllReduceSum(nullptr, 0, {"mismatch", 1});
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.code(), absl::StatusCode::kDeadlineExceeded) << st;
  });
}

}  // namespace
}  // namespace flotilla::comm_test
