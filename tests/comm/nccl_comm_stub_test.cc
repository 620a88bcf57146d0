// Built when NcclComm is the stub (no CUDA toolkit / NCCL): the factory says so.
#include "gtest/gtest.h"
#include "comm/fake_comm.h"
#include "comm/nccl_comm.h"

namespace flotilla {
namespace {

TEST(NcclCommStubTest, CreateIsUnimplemented) {
  std::vector<std::unique_ptr<Comm>> bootstrap = FakeCommGroup::Create(1);
  EXPECT_EQ(NcclComm::Create(*bootstrap[0], 0).status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(NcclComm::VisibleDeviceCount().status().code(), absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace flotilla
