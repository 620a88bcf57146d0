// NcclComm through the shared Comm cases (label cuda): one rank per visible GPU (up to 4), each a
// thread, bootstrapped over an in-process FakeComm. Skips without a GPU. The cases use host
// buffers, so a staging adapter copies them to and from the device around every call.
#include "comm/nccl_comm.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <functional>
#include <thread>

#include "common/status.h"
#include "gtest/gtest.h"
#include "tests/comm/comm_cases.h"
#include "comm/fake_comm.h"

namespace flotilla::comm_test {
namespace {

// A device buffer for the duration of one call.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes_ > 0 && cudaMalloc(&ptr_, bytes_) != cudaSuccess) ptr_ = nullptr;
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  bool ok() const { return bytes_ == 0 || ptr_ != nullptr; }
  char* get() const { return static_cast<char*>(ptr_); }

 private:
  size_t bytes_;
  void* ptr_ = nullptr;
};

absl::Status CudaStatus(cudaError_t rc, const char* what) {
  if (rc == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(std::string(what) + ": " + cudaGetErrorString(rc));
}

// Presents an NcclComm (device buffers) as a host-buffer Comm for the shared cases.
class HostStagedComm final : public Comm {
 public:
  explicit HostStagedComm(std::unique_ptr<Comm> inner, int device)
      : Comm(inner->rank(), WorldRanks(*inner), inner->options()),
        inner_(std::move(inner)),
        device_(device) {}
  ~HostStagedComm() override { (void)Shutdown(); }

 private:
  static std::vector<int> WorldRanks(const Comm& comm) {
    std::vector<int> ranks(comm.size());
    for (int r = 0; r < comm.size(); ++r) ranks[r] = comm.world_rank(r);
    return ranks;
  }

  absl::Status DoAllToAllV(const void* send, absl::Span<const size_t> send_bytes, void* recv,
                           absl::Span<const size_t> recv_bytes, const CallContext& call) override {
    size_t total_send = 0, total_recv = 0;
    for (size_t b : send_bytes) total_send += b;
    for (size_t b : recv_bytes) total_recv += b;
    cudaSetDevice(device_);
    DeviceBuffer d_send(total_send), d_recv(total_recv);
    if (!d_send.ok() || !d_recv.ok()) return absl::ResourceExhaustedError("cudaMalloc");
    if (total_send > 0) {
      RETURN_IF_ERROR(
          CudaStatus(cudaMemcpy(d_send.get(), send, total_send, cudaMemcpyHostToDevice), "H2D"));
    }
    absl::Status st = inner_->AllToAllV(d_send.get(), send_bytes, d_recv.get(), recv_bytes,
                                        call.site, call.timeout);
    if (!st.ok()) return st;
    if (total_recv == 0) return absl::OkStatus();
    return CudaStatus(cudaMemcpy(recv, d_recv.get(), total_recv, cudaMemcpyDeviceToHost), "D2H");
  }
  absl::Status DoAllReduceSum(float* data, size_t count, const CallContext& call) override {
    cudaSetDevice(device_);
    DeviceBuffer d(count * sizeof(float));
    if (!d.ok()) return absl::ResourceExhaustedError("cudaMalloc");
    const size_t bytes = count * sizeof(float);
    if (bytes > 0) {
      RETURN_IF_ERROR(CudaStatus(cudaMemcpy(d.get(), data, bytes, cudaMemcpyHostToDevice), "H2D"));
    }
    absl::Status st =
        inner_->AllReduceSum(reinterpret_cast<float*>(d.get()), count, call.site, call.timeout);
    if (!st.ok() || bytes == 0) return st;
    return CudaStatus(cudaMemcpy(data, d.get(), bytes, cudaMemcpyDeviceToHost), "D2H");
  }
  absl::Status DoAllGather(const void* send, size_t bytes_per_rank, void* recv,
                           const CallContext& call) override {
    cudaSetDevice(device_);
    DeviceBuffer d_send(bytes_per_rank), d_recv(bytes_per_rank * size());
    if (!d_send.ok() || !d_recv.ok()) return absl::ResourceExhaustedError("cudaMalloc");
    if (bytes_per_rank > 0) {
      RETURN_IF_ERROR(CudaStatus(
          cudaMemcpy(d_send.get(), send, bytes_per_rank, cudaMemcpyHostToDevice), "H2D"));
    }
    absl::Status st =
        inner_->AllGather(d_send.get(), bytes_per_rank, d_recv.get(), call.site, call.timeout);
    if (!st.ok() || bytes_per_rank == 0) return st;
    return CudaStatus(
        cudaMemcpy(recv, d_recv.get(), bytes_per_rank * size(), cudaMemcpyDeviceToHost), "D2H");
  }
  absl::Status DoBroadcast(void* data, size_t bytes, int root, const CallContext& call) override {
    cudaSetDevice(device_);
    DeviceBuffer d(bytes);
    if (!d.ok()) return absl::ResourceExhaustedError("cudaMalloc");
    if (bytes > 0) {
      RETURN_IF_ERROR(CudaStatus(cudaMemcpy(d.get(), data, bytes, cudaMemcpyHostToDevice), "H2D"));
    }
    absl::Status st = inner_->Broadcast(d.get(), bytes, root, call.site, call.timeout);
    if (!st.ok() || bytes == 0) return st;
    return CudaStatus(cudaMemcpy(data, d.get(), bytes, cudaMemcpyDeviceToHost), "D2H");
  }
  absl::Status DoBarrier(const CallContext& call) override {
    return inner_->Barrier(call.site, call.timeout);
  }
  absl::StatusOr<std::unique_ptr<Comm>> DoSplit(int color, int key,
                                                const CallContext& call) override {
    absl::StatusOr<std::unique_ptr<Comm>> child =
        inner_->Split(color, key, call.site, call.timeout);
    if (!child.ok()) return child.status();
    return std::unique_ptr<Comm>(new HostStagedComm(std::move(*child), device_));
  }
  void DoAbort(const absl::Status& status) override { inner_->Abort(status); }
  absl::Status DoShutdown() override { return inner_->Shutdown(); }

  std::unique_ptr<Comm> inner_;
  int device_;
};

int NumRanks() {
  absl::StatusOr<int> devices = NcclComm::VisibleDeviceCount();
  if (!devices.ok()) return 0;
  return std::min(*devices, 4);
}

// One thread per GPU: a FakeComm bootstraps the NcclComm, the case runs on the staged adapter.
void RunOnGpus(const std::function<void(Comm&)>& body) {
  const int n = NumRanks();
  CommOptions options;
  options.timeout = absl::Seconds(20);
  std::vector<std::unique_ptr<Comm>> bootstrap = FakeCommGroup::Create(n, options);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      absl::StatusOr<std::unique_ptr<NcclComm>> nccl =
          NcclComm::Create(*bootstrap[r], /*cuda_device=*/r, options);
      ASSERT_TRUE(nccl.ok()) << nccl.status();
      EXPECT_NE((*nccl)->stream(), nullptr);
      HostStagedComm comm(std::move(*nccl), r);
      body(comm);
    });
  }
  for (auto& thread : threads) thread.join();
}

class NcclCommTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<int> devices = NcclComm::VisibleDeviceCount();
    if (!devices.ok()) GTEST_SKIP() << "no usable CUDA device: " << devices.status();
    if (*devices == 0) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(NcclCommTest, AllToAllVPayloads) { RunOnGpus(AllToAllVPayloads); }
TEST_F(NcclCommTest, AllToAllVEmpty) { RunOnGpus(AllToAllVEmpty); }
TEST_F(NcclCommTest, AllToAllVLarge) { RunOnGpus(AllToAllVLarge); }
TEST_F(NcclCommTest, AllReduceSumIdenticalOnEveryRank) {
  RunOnGpus([](Comm& comm) { AllReduceSum(comm, /*rank_order_exact=*/false); });
}
TEST_F(NcclCommTest, AllGatherRankOrder) { RunOnGpus(AllGatherRankOrder); }
TEST_F(NcclCommTest, BroadcastFromEachRoot) { RunOnGpus(BroadcastFromEachRoot); }
TEST_F(NcclCommTest, BarrierWaitsForLastRank) { RunOnGpus(BarrierWaitsForLastRank); }
TEST_F(NcclCommTest, SplitTpGroups) { RunOnGpus(SplitTpGroups); }
TEST_F(NcclCommTest, InvalidArgumentsAreLocal) { RunOnGpus(InvalidArgumentsAreLocal); }
TEST_F(NcclCommTest, DeadlineNamesMissingRank) {
  if (NumRanks() < 2) GTEST_SKIP() << "needs two GPUs";
  RunOnGpus([](Comm& comm) { DeadlineNamesMissingRank(comm, nullptr, /*names_peers=*/false); });
}

}  // namespace
}  // namespace flotilla::comm_test
