// NcclComm over NCCL and the CUDA runtime (host code; linked with CUDA::cudart and libnccl).
#include "comm/nccl_comm.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "comm/poll_backoff.h"

namespace flotilla {
namespace {

using Clock = std::chrono::steady_clock;

absl::Status CudaError(const std::string& who, cudaError_t error, const char* cuda_call) {
  return absl::InternalError(absl::StrCat(
      who, ": ", cuda_call, " failed: ", cudaGetErrorName(error), ": ", cudaGetErrorString(error)));
}

absl::Status NcclError(const std::string& who, ncclComm_t comm, ncclResult_t result,
                       const char* nccl_call) {
  const absl::StatusCode code = result == ncclInvalidArgument || result == ncclInvalidUsage
                                    ? absl::StatusCode::kInvalidArgument
                                    : absl::StatusCode::kInternal;
  const char* last = ncclGetLastError(comm);
  return absl::Status(
      code, absl::StrCat(who, ": ", nccl_call, " failed: ", ncclGetErrorString(result),
                         last != nullptr && *last != '\0' ? " (" : "", last != nullptr ? last : "",
                         last != nullptr && *last != '\0' ? ")" : ""));
}

// Wraps a CUDA runtime call: the Status names the rank / operation (`who`) and the call.
#define FLOTILLA_CUDA_CALL(who, expr)                                      \
  do {                                                                     \
    const cudaError_t _cuda_rc = (expr);                                   \
    if (_cuda_rc != cudaSuccess) return CudaError((who), _cuda_rc, #expr); \
  } while (0)

// Wraps an NCCL call on a non-blocking communicator, where ncclInProgress is not an error.
#define FLOTILLA_NCCL_CALL(who, comm, expr)                      \
  do {                                                           \
    const ncclResult_t _nccl_rc = (expr);                        \
    if (_nccl_rc != ncclSuccess && _nccl_rc != ncclInProgress) { \
      return NcclError((who), (comm), _nccl_rc, #expr);          \
    }                                                            \
  } while (0)

// Polls a non-blocking communicator until its pending init / split / finalize / group is done.
absl::Status WaitForComm(ncclComm_t comm, const std::string& who, Clock::time_point deadline,
                         absl::Duration timeout) {
  PollBackoff backoff;
  for (;;) {
    ncclResult_t state = ncclSuccess;
    FLOTILLA_NCCL_CALL(who, comm, ncclCommGetAsyncError(comm, &state));
    if (state == ncclSuccess) return absl::OkStatus();
    if (state != ncclInProgress) return NcclError(who, comm, state, "ncclCommGetAsyncError");
    if (Clock::now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(who, " did not complete within ", absl::FormatDuration(timeout),
                       "; NCCL does not report which peers are missing"));
    }
    backoff.Pause();
  }
}

// Owns the CUDA / NCCL handles of one communicator; releases them by abort unless moved out.
struct NcclHandles {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  float* scratch = nullptr;  // device: one float for Barrier

  NcclHandles() = default;
  NcclHandles(const NcclHandles&) = delete;
  NcclHandles& operator=(const NcclHandles&) = delete;
  NcclHandles(NcclHandles&& other) noexcept { *this = std::move(other); }
  NcclHandles& operator=(NcclHandles&& other) noexcept {
    std::swap(comm, other.comm);
    std::swap(stream, other.stream);
    std::swap(scratch, other.scratch);
    return *this;
  }
  ~NcclHandles() { Release(); }
  void Release() {
    if (comm != nullptr) ncclCommAbort(comm);
    if (scratch != nullptr) cudaFree(scratch);
    if (stream != nullptr) cudaStreamDestroy(stream);
    comm = nullptr;
    scratch = nullptr;
    stream = nullptr;
  }
};

// Creates the stream and scratch buffer of `handles` on the current device.
absl::Status CreateStreamAndScratch(const std::string& who, NcclHandles& handles) {
  FLOTILLA_CUDA_CALL(who, cudaStreamCreateWithFlags(&handles.stream, cudaStreamNonBlocking));
  FLOTILLA_CUDA_CALL(who, cudaMalloc(&handles.scratch, sizeof(float)));
  FLOTILLA_CUDA_CALL(who, cudaMemset(handles.scratch, 0, sizeof(float)));
  return absl::OkStatus();
}

ncclConfig_t NonBlockingConfig() {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  return config;
}

class NcclCommImpl final : public NcclComm {
 public:
  NcclCommImpl(int rank, std::vector<int> world_ranks, int cuda_device, NcclHandles handles,
               Comm* bootstrap, const CommOptions& options)
      : NcclComm(rank, std::move(world_ranks), cuda_device, options),
        handles_(std::move(handles)),
        bootstrap_(bootstrap) {}
  ~NcclCommImpl() override { (void)Shutdown(); }

  CUstream_st* stream() const override { return handles_.stream; }

 private:
  absl::Status DoAllToAllV(const void* send, absl::Span<const size_t> send_bytes, void* recv,
                           absl::Span<const size_t> recv_bytes, const CallContext& call) override {
    const std::string who = Describe(call);
    FLOTILLA_CUDA_CALL(who, cudaSetDevice(cuda_device()));
    RETURN_IF_ERROR(CheckNotAborted(who));
    const int n = size(), me = rank();
    std::vector<size_t> send_offset(n + 1, 0), recv_offset(n + 1, 0);
    for (int p = 0; p < n; ++p) {
      send_offset[p + 1] = send_offset[p] + send_bytes[p];
      recv_offset[p + 1] = recv_offset[p] + recv_bytes[p];
    }
    const char* in = static_cast<const char*>(send);
    char* out = static_cast<char*>(recv);
    if (send_bytes[me] != recv_bytes[me]) {
      return absl::InvalidArgumentError(absl::StrCat(
          who, ": sends ", send_bytes[me], " bytes to itself but expects ", recv_bytes[me]));
    }
    if (send_bytes[me] > 0) {
      FLOTILLA_CUDA_CALL(
          who, cudaMemcpyAsync(out + recv_offset[me], in + send_offset[me], send_bytes[me],
                               cudaMemcpyDeviceToDevice, handles_.stream));
    }
    // Empty blocks post nothing: NCCL needs matching counts on both sides, which the Comm
    // contract already requires (a mismatch shows up as a timeout, NCCL cannot detect it).
    absl::Status posted;
    FLOTILLA_NCCL_CALL(who, handles_.comm, ncclGroupStart());
    for (int i = 1; i < n && posted.ok(); ++i) {
      const int to = (me + i) % n, from = (me - i + n) % n;
      if (send_bytes[to] > 0) {
        const ncclResult_t rc = ncclSend(in + send_offset[to], send_bytes[to], ncclUint8, to,
                                         handles_.comm, handles_.stream);
        if (rc != ncclSuccess && rc != ncclInProgress) {
          posted = NcclError(who, handles_.comm, rc, "ncclSend");
        }
      }
      if (recv_bytes[from] > 0 && posted.ok()) {
        const ncclResult_t rc = ncclRecv(out + recv_offset[from], recv_bytes[from], ncclUint8, from,
                                         handles_.comm, handles_.stream);
        if (rc != ncclSuccess && rc != ncclInProgress) {
          posted = NcclError(who, handles_.comm, rc, "ncclRecv");
        }
      }
    }
    const ncclResult_t end = ncclGroupEnd();  // always closes the group, even after an error
    RETURN_IF_ERROR(posted);
    if (end != ncclSuccess && end != ncclInProgress) {
      return NcclError(who, handles_.comm, end, "ncclGroupEnd()");
    }
    return Complete(call);
  }

  absl::Status DoAllReduceSum(float* data, size_t count, const CallContext& call) override {
    if (count == 0) return absl::OkStatus();
    const std::string who = Describe(call);
    FLOTILLA_CUDA_CALL(who, cudaSetDevice(cuda_device()));
    RETURN_IF_ERROR(CheckNotAborted(who));
    FLOTILLA_NCCL_CALL(
        who, handles_.comm,
        ncclAllReduce(data, data, count, ncclFloat, ncclSum, handles_.comm, handles_.stream));
    return Complete(call);
  }

  absl::Status DoAllGather(const void* send, size_t bytes_per_rank, void* recv,
                           const CallContext& call) override {
    if (bytes_per_rank == 0) return absl::OkStatus();
    const std::string who = Describe(call);
    FLOTILLA_CUDA_CALL(who, cudaSetDevice(cuda_device()));
    RETURN_IF_ERROR(CheckNotAborted(who));
    FLOTILLA_NCCL_CALL(
        who, handles_.comm,
        ncclAllGather(send, recv, bytes_per_rank, ncclUint8, handles_.comm, handles_.stream));
    return Complete(call);
  }

  absl::Status DoBroadcast(void* data, size_t bytes, int root, const CallContext& call) override {
    if (bytes == 0) return absl::OkStatus();
    const std::string who = Describe(call);
    FLOTILLA_CUDA_CALL(who, cudaSetDevice(cuda_device()));
    RETURN_IF_ERROR(CheckNotAborted(who));
    FLOTILLA_NCCL_CALL(
        who, handles_.comm,
        ncclBroadcast(data, data, bytes, ncclUint8, root, handles_.comm, handles_.stream));
    return Complete(call);
  }

  absl::Status DoBarrier(const CallContext& call) override {
    const std::string who = Describe(call);
    FLOTILLA_CUDA_CALL(who, cudaSetDevice(cuda_device()));
    RETURN_IF_ERROR(CheckNotAborted(who));
    FLOTILLA_NCCL_CALL(who, handles_.comm,
                       ncclAllReduce(handles_.scratch, handles_.scratch, 1, ncclFloat, ncclSum,
                                     handles_.comm, handles_.stream));
    return Complete(call);
  }

  absl::StatusOr<std::unique_ptr<Comm>> DoSplit(int color, int key,
                                                const CallContext& call) override {
    const std::string who = Describe(call);
    FLOTILLA_CUDA_CALL(who, cudaSetDevice(cuda_device()));
    RETURN_IF_ERROR(CheckNotAborted(who));
    const int n = size();
    // Learn the membership (for world ranks in messages) with a bounded all-gather first.
    int* pairs = nullptr;
    FLOTILLA_CUDA_CALL(who, cudaMalloc(&pairs, 2 * n * sizeof(int)));
    std::vector<int> all(2 * n);
    const int mine[2] = {color, key};
    absl::Status gathered = [&]() -> absl::Status {
      FLOTILLA_CUDA_CALL(who, cudaMemcpyAsync(pairs + 2 * rank(), mine, sizeof(mine),
                                              cudaMemcpyHostToDevice, handles_.stream));
      RETURN_IF_ERROR(DoAllGather(pairs + 2 * rank(), sizeof(mine), pairs, call));
      FLOTILLA_CUDA_CALL(
          who, cudaMemcpy(all.data(), pairs, 2 * n * sizeof(int), cudaMemcpyDeviceToHost));
      return absl::OkStatus();
    }();
    cudaFree(pairs);
    RETURN_IF_ERROR(gathered);
    std::vector<int> colors(n), keys(n);
    for (int r = 0; r < n; ++r) {
      colors[r] = all[2 * r];
      keys[r] = all[2 * r + 1];
    }
    const std::vector<int> members = SplitMembers(colors, keys, color);

    NcclHandles child;
    ncclConfig_t config = NonBlockingConfig();
    FLOTILLA_NCCL_CALL(who, handles_.comm,
                       ncclCommSplit(handles_.comm, color, key, &child.comm, &config));
    if (absl::Status st = WaitForComm(handles_.comm, who, call.deadline, call.timeout); !st.ok()) {
      return Broken(st);
    }
    if (child.comm == nullptr) {
      return absl::InternalError(absl::StrCat(who, ": ncclCommSplit returned no communicator"));
    }
    RETURN_IF_ERROR(WaitForComm(child.comm, who, call.deadline, call.timeout));
    int child_rank = -1;
    FLOTILLA_NCCL_CALL(who, child.comm, ncclCommUserRank(child.comm, &child_rank));
    if (child_rank < 0 || child_rank >= static_cast<int>(members.size()) ||
        members[child_rank] != rank()) {
      return absl::InternalError(absl::StrCat(who, ": ncclCommSplit gave rank ", child_rank,
                                              ", expected the position of ", rank(), " in ",
                                              PeerList(members)));
    }
    RETURN_IF_ERROR(CreateStreamAndScratch(who, child));
    std::vector<int> world_ranks;
    for (int m : members) world_ranks.push_back(world_rank(m));
    return std::unique_ptr<Comm>(new NcclCommImpl(child_rank, std::move(world_ranks), cuda_device(),
                                                  std::move(child), bootstrap_, options()));
  }

  // May run on another thread than the comm's: it only raises a flag, which the comm's own
  // thread turns into ncclCommAbort (in Complete() or at its next call).
  void DoAbort(const absl::Status& status) override {
    abort_requested_.store(true);
    if (bootstrap_ != nullptr) bootstrap_->Abort(status);
  }

  absl::Status DoShutdown() override {
    absl::Status status;
    cudaSetDevice(cuda_device());
    if (handles_.comm != nullptr && healthy_ && !abort_requested_.load()) {
      // Graceful: flush and wait for global quiescence (bounded), then free locally.
      const std::string who = absl::StrCat("rank ", rank(), ": NcclComm::Shutdown");
      const ncclResult_t rc = ncclCommFinalize(handles_.comm);
      if (rc != ncclSuccess && rc != ncclInProgress) {
        status = NcclError(who, handles_.comm, rc, "ncclCommFinalize");
      } else {
        status =
            WaitForComm(handles_.comm, who, SteadyDeadline(options().timeout), options().timeout);
      }
      if (status.ok()) {
        const ncclResult_t destroyed = ncclCommDestroy(handles_.comm);
        if (destroyed != ncclSuccess) {
          status = NcclError(who, handles_.comm, destroyed, "ncclCommDestroy");
        } else {
          handles_.comm = nullptr;
        }
      }
    }
    handles_.Release();  // aborts a comm that is still there
    return status;
  }

  // Waits until the operations just enqueued have completed on the device, or the deadline.
  absl::Status Complete(const CallContext& call) {
    PollBackoff backoff;
    for (;;) {
      if (abort_requested_.load()) {
        return Broken(absl::AbortedError(absl::StrCat(Describe(call), ": Abort() was called")));
      }
      ncclResult_t state = ncclSuccess;
      const ncclResult_t rc = ncclCommGetAsyncError(handles_.comm, &state);
      if (rc != ncclSuccess)
        return Broken(NcclError(Describe(call), handles_.comm, rc, "ncclCommGetAsyncError"));
      if (state != ncclSuccess && state != ncclInProgress) {
        return Broken(NcclError(Describe(call), handles_.comm, state, "NCCL operation"));
      }
      if (state == ncclSuccess) {  // enqueued; now wait for the stream
        const cudaError_t done = cudaStreamQuery(handles_.stream);
        if (done == cudaSuccess) return absl::OkStatus();
        if (done != cudaErrorNotReady) {
          return Broken(CudaError(Describe(call), done, "cudaStreamQuery(stream)"));
        }
      }
      if (Clock::now() >= call.deadline) {
        return Broken(TimeoutError(
            call, "NCCL does not report which peers are missing; communicator aborted"));
      }
      backoff.Pause();
    }
  }

  // Aborts the NCCL communicator (unblocking the stream) after an error; returns `status`.
  absl::Status Broken(absl::Status status) {
    healthy_ = false;
    if (handles_.comm != nullptr) ncclCommAbort(handles_.comm);
    handles_.comm = nullptr;
    return status;
  }

  // Fails the call before anything is enqueued once Abort() was called.
  absl::Status CheckNotAborted(const std::string& who) {
    if (!abort_requested_.load()) return absl::OkStatus();
    return Broken(absl::AbortedError(absl::StrCat(who, ": Abort() was called")));
  }

  NcclHandles handles_;
  Comm* bootstrap_;  // not owned; outlives this comm
  bool healthy_ = true;
  std::atomic<bool> abort_requested_{false};
};

}  // namespace

absl::StatusOr<std::unique_ptr<NcclComm>> NcclComm::Create(Comm& bootstrap, int cuda_device,
                                                           const CommOptions& options) {
  const int rank = bootstrap.rank(), n = bootstrap.size();
  const std::string who = absl::StrCat("world rank ", bootstrap.world_rank(rank),
                                       ": NcclComm::Create on device ", cuda_device);
  const auto deadline = SteadyDeadline(options.timeout);
  FLOTILLA_CUDA_CALL(who, cudaSetDevice(cuda_device));
  ncclUniqueId id{};
  if (rank == 0) FLOTILLA_NCCL_CALL(who, nullptr, ncclGetUniqueId(&id));
  RETURN_IF_ERROR(
      bootstrap.Broadcast(&id, sizeof(id), 0, {"NcclComm::Create unique id", -1}, options.timeout));

  NcclHandles handles;
  ncclConfig_t config = NonBlockingConfig();
  FLOTILLA_NCCL_CALL(who, nullptr, ncclCommInitRankConfig(&handles.comm, n, id, rank, &config));
  RETURN_IF_ERROR(WaitForComm(handles.comm, who, deadline, options.timeout));
  RETURN_IF_ERROR(CreateStreamAndScratch(who, handles));
  std::vector<int> world_ranks(n);
  for (int r = 0; r < n; ++r) world_ranks[r] = bootstrap.world_rank(r);
  return std::unique_ptr<NcclComm>(new NcclCommImpl(rank, std::move(world_ranks), cuda_device,
                                                    std::move(handles), &bootstrap, options));
}

absl::StatusOr<int> NcclComm::VisibleDeviceCount() {
  int count = 0;
  const cudaError_t rc = cudaGetDeviceCount(&count);
  if (rc != cudaSuccess) {
    return absl::UnavailableError(absl::StrCat("cudaGetDeviceCount failed: ", cudaGetErrorName(rc),
                                               ": ", cudaGetErrorString(rc)));
  }
  return count;
}

}  // namespace flotilla
