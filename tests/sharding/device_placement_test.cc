#include "sharding/device_placement.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace flotilla {
namespace {

using ::testing::HasSubstr;

constexpr DeviceChoice kByRank{DeviceKind::kCuda, -1};

NodeFacts Node(int local_rank, int local_size, bool coordinator_here, int gpus_per_node,
               int device_count) {
  NodeFacts n;
  n.local_rank = local_rank;
  n.local_size = local_size;
  n.coordinator_here = coordinator_here;
  n.gpus_per_node = gpus_per_node;
  n.device_count = device_count;
  return n;
}

TEST(ParseDevice, AcceptedForms) {
  EXPECT_EQ(*ParseDevice("cpu"), (DeviceChoice{DeviceKind::kCpu, -1}));
  EXPECT_EQ(*ParseDevice("cuda"), kByRank);
  EXPECT_EQ(*ParseDevice("cuda:0"), (DeviceChoice{DeviceKind::kCuda, 0}));
  EXPECT_EQ(*ParseDevice("cuda:12"), (DeviceChoice{DeviceKind::kCuda, 12}));
  EXPECT_EQ(DeviceString(*ParseDevice("cuda:12")), "cuda:12");
  EXPECT_EQ(DeviceString(kByRank), "cuda");
  EXPECT_EQ(DeviceString(*ParseDevice("cpu")), "cpu");
}

TEST(ParseDevice, RefusesOtherForms) {
  for (const char* bad : {"", "gpu", "CUDA", "cuda:", "cuda:-1", "cuda:1x", "cuda: 1", "cuda:+1",
                          "cuda:99999999999", "cpu:0"}) {
    const absl::StatusOr<DeviceChoice> d = ParseDevice(bad, "--device");
    ASSERT_FALSE(d.ok()) << bad;
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(d.status().message(), HasSubstr("--device"));
    EXPECT_THAT(d.status().message(), HasSubstr("cuda:N"));
  }
}

// The coordinator's node of an 8-GPU job: mpirun places the coordinator (local rank 0) and
// workers 0..7 (local ranks 1..8).
TEST(PlaceGpu, CoordinatorNodeSkipsLocalRankZero) {
  NodeFacts node = Node(0, 9, true, 8, 8);
  for (int r = 1; r <= 8; ++r) {
    node.local_rank = r;
    const absl::StatusOr<GpuPlacement> p = PlaceGpu(node, kByRank);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(p->worker_index, r - 1);
    EXPECT_EQ(p->ordinal, r - 1);
    EXPECT_EQ(p->workers_on_node, 8);
    EXPECT_EQ(p->sharing, 1);
  }
  node.local_rank = 0;
  const absl::StatusOr<GpuPlacement> coordinator = PlaceGpu(node, kByRank);
  ASSERT_FALSE(coordinator.ok());
  EXPECT_THAT(coordinator.status().message(), HasSubstr("coordinator"));
}

TEST(PlaceGpu, OtherNodesStartAtLocalRankZero) {
  const NodeFacts node = Node(3, 8, false, 8, 8);
  const absl::StatusOr<GpuPlacement> p = PlaceGpu(node, kByRank);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->ordinal, 3);
  EXPECT_EQ(p->Describe(), "GPU 3 for worker 3 of 8 on this node");
}

// A scheduler gave the job GPUs 4-7: worker 2 takes the third of them, runtime ordinal 2.
TEST(PlaceGpu, IndexesTheSchedulersVisibleList) {
  NodeFacts node = Node(2, 4, false, 4, 4);
  node.visible_devices = "4, 5,6,7";
  const absl::StatusOr<GpuPlacement> p = PlaceGpu(node, kByRank);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->ordinal, 2);
  EXPECT_EQ(p->physical, "6");
  EXPECT_EQ(p->Describe(), "GPU 2 (CUDA_VISIBLE_DEVICES entry 6) for worker 2 of 4 on this node");
}

TEST(PlaceGpu, GpusPerNodeDefaultsToEveryDevice) {
  const NodeFacts node = Node(2, 3, true, 0, 2);
  const absl::StatusOr<GpuPlacement> p = PlaceGpu(node, kByRank);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->ordinal, 1);
}

TEST(PlaceGpu, MoreWorkersThanGpusIsRefused) {
  const NodeFacts node = Node(1, 10, true, 8, 8);
  const absl::StatusOr<GpuPlacement> p = PlaceGpu(node, kByRank);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(p.status().message(), HasSubstr("9 workers on this node but 8 GPU(s)"));
}

TEST(PlaceGpu, GpusPerNodeBeyondTheDevicesIsRefused) {
  NodeFacts node = Node(0, 8, false, 8, 4);
  node.visible_devices = "0,1,2,3";
  const absl::StatusOr<GpuPlacement> p = PlaceGpu(node, kByRank);
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(p.status().message(),
              HasSubstr("--gpus-per-node 8 but this node has 4 CUDA device(s) "
                        "(CUDA_VISIBLE_DEVICES=0,1,2,3)"));
}

TEST(PlaceGpu, NoDeviceIsRefused) {
  NodeFacts node = Node(0, 1, false, 0, 0);
  node.visible_devices = "";
  const absl::StatusOr<GpuPlacement> p = PlaceGpu(node, kByRank);
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(p.status().message(), HasSubstr("no CUDA device"));
}

// Tests run several workers on one GPU: round-robin, each told how many share its GPU.
TEST(PlaceGpu, SharingRoundRobin) {
  NodeFacts node = Node(0, 4, true, 0, 2);
  node.share = true;
  const int expect_ordinal[] = {0, 1, 0};
  const int expect_sharing[] = {2, 1, 2};
  for (int w = 0; w < 3; ++w) {
    node.local_rank = w + 1;
    const absl::StatusOr<GpuPlacement> p = PlaceGpu(node, kByRank);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(p->ordinal, expect_ordinal[w]) << w;
    EXPECT_EQ(p->sharing, expect_sharing[w]) << w;
  }
}

TEST(PlaceGpu, ExplicitOrdinal) {
  const NodeFacts node = Node(0, 1, false, 0, 2);
  const absl::StatusOr<GpuPlacement> p = PlaceGpu(node, DeviceChoice{DeviceKind::kCuda, 1});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->ordinal, 1);
  const absl::StatusOr<GpuPlacement> bad = PlaceGpu(node, DeviceChoice{DeviceKind::kCuda, 2});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("cuda:2: this node has 2 CUDA device(s) (0..1)"));
}

}  // namespace
}  // namespace flotilla
