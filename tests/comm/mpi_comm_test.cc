// MpiComm through the shared Comm cases (label mpi). Run under mpiexec -np N: every process runs
// every test on the world comm. Tests named *Deadline* leave broken sub-communicators behind
// and are run as their own CTest entries (--gtest_filter).
#include "comm/mpi_comm.h"

#include <cstdio>

#include "gtest/gtest.h"
#include "tests/comm/comm_cases.h"

namespace flotilla::comm_test {
namespace {

MpiComm* g_world = nullptr;
std::vector<std::unique_ptr<Comm>>* g_graveyard = nullptr;  // broken comms, freed at exit

TEST(MpiCommTest, WorldMatchesMpi) {
  int rank = -1, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  EXPECT_EQ(g_world->rank(), rank);
  EXPECT_EQ(g_world->size(), size);
  EXPECT_NE(g_world->raw(), MPI_COMM_NULL);
}
TEST(MpiCommTest, AllToAllVPayloads) { AllToAllVPayloads(*g_world); }
TEST(MpiCommTest, AllToAllVEmpty) { AllToAllVEmpty(*g_world); }
TEST(MpiCommTest, AllToAllVLarge) { AllToAllVLarge(*g_world); }
TEST(MpiCommTest, AllReduceSumRankOrder) { AllReduceSum(*g_world, /*rank_order_exact=*/true); }
TEST(MpiCommTest, AllGatherRankOrder) { AllGatherRankOrder(*g_world); }
TEST(MpiCommTest, BroadcastFromEachRoot) { BroadcastFromEachRoot(*g_world); }
TEST(MpiCommTest, BarrierWaitsForLastRank) { BarrierWaitsForLastRank(*g_world); }
TEST(MpiCommTest, SplitTpGroups) { SplitTpGroups(*g_world); }
TEST(MpiCommTest, InvalidArgumentsAreLocal) { InvalidArgumentsAreLocal(*g_world); }
TEST(MpiCommTest, SizeMismatchIsReported) { SizeMismatchIsReported(*g_world); }
TEST(MpiCommTest, DeadlineNamesMissingRank) { DeadlineNamesMissingRank(*g_world, g_graveyard); }
TEST(MpiCommTest, DeadlineInAllToAllV) { DeadlineInAllToAllV(*g_world, g_graveyard); }

}  // namespace
}  // namespace flotilla::comm_test

int main(int argc, char** argv) {
  flotilla::CommOptions options;
  options.timeout = absl::Seconds(30);
  absl::StatusOr<std::unique_ptr<flotilla::MpiComm>> world =
      flotilla::MpiComm::World(options, &argc, &argv);
  if (!world.ok()) {
    std::fprintf(stderr, "%s\n", world.status().ToString().c_str());
    return 1;
  }
  if ((*world)->rank() != 0) GTEST_FLAG_SET(brief, true);  // failures only, from ranks > 0
  ::testing::InitGoogleTest(&argc, argv);
  std::vector<std::unique_ptr<flotilla::Comm>> graveyard;
  flotilla::comm_test::g_world = world->get();
  flotilla::comm_test::g_graveyard = &graveyard;
  const int result = RUN_ALL_TESTS();
  // Everyone is done before anyone frees broken communicators or finalizes.
  const absl::Status synced = (*world)->Barrier({"test main exit", -1});
  graveyard.clear();
  world->reset();
  const absl::Status finalized = flotilla::MpiComm::FinalizeProcess();
  if (!synced.ok() || !finalized.ok()) {
    std::fprintf(stderr, "%s\n%s\n", synced.ToString().c_str(), finalized.ToString().c_str());
    return 1;
  }
  return result;
}
