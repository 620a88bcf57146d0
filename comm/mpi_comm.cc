#include "comm/mpi_comm.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "comm/poll_backoff.h"

namespace flotilla {
namespace {

constexpr size_t kMaxMessageBytes = size_t{1} << 30;  // MPI counts are int
constexpr int kAbortTag = 1;
constexpr auto kAbortPollInterval = std::chrono::milliseconds(1);

std::mutex g_process_mu;
bool g_initialized_by_us = false;
bool g_finalized_by_us = false;
std::atomic<int> g_live_comms{0};

std::string MpiErrorString(int rc) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) return absl::StrCat("MPI error ", rc);
  return std::string(text, len);
}

bool MpiUsable() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

absl::Status SetupError(int world_rank, int rc, const char* mpi_call) {
  return absl::InternalError(
      absl::StrCat("world rank ", world_rank, ": ", mpi_call, " failed: ", MpiErrorString(rc)));
}

// Wraps an MPI call outside a CallContext (setup): on error returns a Status naming the rank and
// the call.
#define FLOTILLA_MPI_SETUP_CALL(world_rank, expr)                                \
  do {                                                                           \
    const int _mpi_rc = (expr);                                                  \
    if (_mpi_rc != MPI_SUCCESS) return SetupError((world_rank), _mpi_rc, #expr); \
  } while (0)

// Wraps an MPI call inside an operation: the Status names rank, operation, step and call.
#define FLOTILLA_MPI_CALL(call_ctx, expr)                                    \
  do {                                                                       \
    const int _mpi_rc = (expr);                                              \
    if (_mpi_rc != MPI_SUCCESS) return MpiError((call_ctx), _mpi_rc, #expr); \
  } while (0)

// Polls `request` until it completes or `timeout` passes.
absl::Status WaitSetup(int world_rank, MPI_Request* request, absl::Duration timeout,
                       const char* what) {
  const auto deadline = SteadyDeadline(timeout);
  PollBackoff backoff;
  for (;;) {
    int done = 0;
    FLOTILLA_MPI_SETUP_CALL(world_rank, MPI_Test(request, &done, MPI_STATUS_IGNORE));
    if (done) return absl::OkStatus();
    if (std::chrono::steady_clock::now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("world rank ", world_rank, ": ", what, " did not complete within ",
                       absl::FormatDuration(timeout), "; some rank has not called it"));
    }
    backoff.Pause();
  }
}

}  // namespace

// Out-of-band fatal-error notices on a private duplicate of MPI_COMM_WORLD, shared by every comm
// split from one World(). Abort() sends its message to every world rank; comms waiting in a call
// poll for it and fail with ABORTED quoting it.
class MpiAbortChannel {
 public:
  MpiAbortChannel(MPI_Comm comm, int world_rank, int world_size)
      : comm_(comm), world_rank_(world_rank), world_size_(world_size) {}
  ~MpiAbortChannel() {
    if (comm_ != MPI_COMM_NULL && MpiUsable()) MPI_Comm_free(&comm_);
  }
  MpiAbortChannel(const MpiAbortChannel&) = delete;
  MpiAbortChannel& operator=(const MpiAbortChannel&) = delete;

  // ABORTED once some rank's notice has arrived (sticky), else OK.
  absl::Status Poll() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!notice_.ok()) return notice_;
    int flag = 0;
    MPI_Status status;
    if (MPI_Iprobe(MPI_ANY_SOURCE, kAbortTag, comm_, &flag, &status) != MPI_SUCCESS || !flag) {
      return absl::OkStatus();
    }
    int len = 0;
    MPI_Get_count(&status, MPI_CHAR, &len);
    std::string message(std::max(len, 0), '\0');
    MPI_Recv(message.data(), len, MPI_CHAR, status.MPI_SOURCE, kAbortTag, comm_, MPI_STATUS_IGNORE);
    notice_ = absl::AbortedError(message);
    return notice_;
  }

  // Prints `message`, sends it to every other rank, gives them `grace` to report it, then ends
  // the job. Library code otherwise never exits; this is the one fatal path (design §7).
  [[noreturn]] void AbortJob(const std::string& message, absl::Duration grace) {
    std::fprintf(stderr, "[flotilla] fatal error, aborting all ranks: %s\n", message.c_str());
    std::fflush(stderr);
    if (MpiUsable()) {
      std::vector<MPI_Request> requests;
      for (int peer = 0; peer < world_size_; ++peer) {
        if (peer == world_rank_) continue;
        MPI_Request request;
        if (MPI_Isend(message.data(), static_cast<int>(message.size()), MPI_CHAR, peer, kAbortTag,
                      comm_, &request) == MPI_SUCCESS) {
          requests.push_back(request);
        }
      }
      const auto end = SteadyDeadline(grace);
      while (std::chrono::steady_clock::now() < end) {
        int done = 0;
        if (!requests.empty()) {
          MPI_Testall(static_cast<int>(requests.size()), requests.data(), &done,
                      MPI_STATUSES_IGNORE);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    std::abort();
  }

 private:
  std::mutex mu_;
  MPI_Comm comm_;
  int world_rank_;
  int world_size_;
  absl::Status notice_;
};

absl::StatusOr<std::unique_ptr<MpiComm>> MpiComm::World(const CommOptions& options, int* argc,
                                                        char*** argv) {
  {
    std::lock_guard<std::mutex> lock(g_process_mu);
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      if (g_finalized_by_us) return absl::FailedPreconditionError("MPI was already finalized");
      int provided = 0;
      const int rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
      if (rc != MPI_SUCCESS) {
        return absl::InternalError(absl::StrCat("MPI_Init_thread failed: ", MpiErrorString(rc)));
      }
      g_initialized_by_us = true;
    }
  }
  int world_rank = -1, world_size = 0, provided = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  FLOTILLA_MPI_SETUP_CALL(world_rank, MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  FLOTILLA_MPI_SETUP_CALL(world_rank, MPI_Comm_size(MPI_COMM_WORLD, &world_size));
  FLOTILLA_MPI_SETUP_CALL(world_rank, MPI_Query_thread(&provided));
  if (provided < MPI_THREAD_SERIALIZED) {
    return absl::FailedPreconditionError(
        absl::StrCat("world rank ", world_rank, ": MPI provides thread level ", provided,
                     ", MpiComm needs at least MPI_THREAD_SERIALIZED"));
  }
  // Two duplicates: one for data, one for abort notices. Non-blocking so setup is bounded too.
  MPI_Comm data = MPI_COMM_NULL, control = MPI_COMM_NULL;
  MPI_Request request;
  FLOTILLA_MPI_SETUP_CALL(world_rank, MPI_Comm_idup(MPI_COMM_WORLD, &data, &request));
  RETURN_IF_ERROR(WaitSetup(world_rank, &request, options.timeout, "MpiComm::World MPI_Comm_idup"));
  FLOTILLA_MPI_SETUP_CALL(world_rank, MPI_Comm_idup(MPI_COMM_WORLD, &control, &request));
  RETURN_IF_ERROR(WaitSetup(world_rank, &request, options.timeout, "MpiComm::World MPI_Comm_idup"));
  FLOTILLA_MPI_SETUP_CALL(world_rank, MPI_Comm_set_errhandler(data, MPI_ERRORS_RETURN));
  FLOTILLA_MPI_SETUP_CALL(world_rank, MPI_Comm_set_errhandler(control, MPI_ERRORS_RETURN));
  auto channel = std::make_shared<MpiAbortChannel>(control, world_rank, world_size);
  std::vector<int> world_ranks(world_size);
  for (int r = 0; r < world_size; ++r) world_ranks[r] = r;
  return std::unique_ptr<MpiComm>(
      new MpiComm(data, world_rank, std::move(world_ranks), std::move(channel), options));
}

absl::Status MpiComm::FinalizeProcess() {
  std::lock_guard<std::mutex> lock(g_process_mu);
  if (g_live_comms.load() > 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "MpiComm::FinalizeProcess: ", g_live_comms.load(), " MpiComm objects are still alive"));
  }
  if (!g_initialized_by_us || g_finalized_by_us || !MpiUsable()) return absl::OkStatus();
  g_finalized_by_us = true;
  const int rc = MPI_Finalize();
  if (rc != MPI_SUCCESS) {
    return absl::InternalError(absl::StrCat("MPI_Finalize failed: ", MpiErrorString(rc)));
  }
  return absl::OkStatus();
}

MpiComm::MpiComm(MPI_Comm comm, int rank, std::vector<int> world_ranks,
                 std::shared_ptr<MpiAbortChannel> abort_channel, const CommOptions& options)
    : Comm(rank, std::move(world_ranks), options),
      comm_(comm),
      abort_channel_(std::move(abort_channel)) {
  ++g_live_comms;
  int* tag_ub = nullptr;
  int flag = 0;
  if (MPI_Comm_get_attr(comm_, MPI_TAG_UB, &tag_ub, &flag) == MPI_SUCCESS && flag) {
    tag_ub_ = *tag_ub;
  }
}

MpiComm::~MpiComm() {
  (void)Shutdown();
  --g_live_comms;
}

absl::Status MpiComm::MpiError(const CallContext& call, int rc, absl::string_view mpi_call) const {
  int error_class = rc;
  MPI_Error_class(rc, &error_class);
  const absl::StatusCode code = error_class == MPI_ERR_TRUNCATE ? absl::StatusCode::kInvalidArgument
                                                                : absl::StatusCode::kInternal;
  return absl::Status(
      code, absl::StrCat(Describe(call), ": ", mpi_call, " failed: ", MpiErrorString(rc)));
}

absl::Status MpiComm::Exchange(const CallContext& call, const std::vector<Transfer>& transfers,
                               const std::function<void()>& local_work) {
  const int tag = static_cast<int>(seq_++ % (static_cast<uint64_t>(tag_ub_) + 1));
  // One request per message piece; owner[i] is the transfer of request i.
  std::vector<MPI_Request> requests;
  std::vector<size_t> owner;
  std::vector<int> piece_bytes;

  // Cancels pending receives (so their buffers are free again) and releases pending sends.
  auto cleanup = [&]() {
    for (size_t i = 0; i < requests.size(); ++i) {
      if (requests[i] != MPI_REQUEST_NULL && !transfers[owner[i]].is_send) {
        MPI_Cancel(&requests[i]);
      }
    }
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
    for (size_t i = 0; i < requests.size(); ++i) {
      while (requests[i] != MPI_REQUEST_NULL && !transfers[owner[i]].is_send &&
             std::chrono::steady_clock::now() < end) {
        int done = 0;
        if (MPI_Test(&requests[i], &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) break;
        if (!done) std::this_thread::yield();
      }
      if (requests[i] != MPI_REQUEST_NULL) MPI_Request_free(&requests[i]);
    }
  };
  auto post = [&](size_t idx, bool is_send) -> absl::Status {
    const Transfer& t = transfers[idx];
    if (t.is_send != is_send) return absl::OkStatus();
    char* p = static_cast<char*>(t.buf);
    size_t left = t.bytes;
    do {
      const size_t n = std::min(left, kMaxMessageBytes);
      MPI_Request request = MPI_REQUEST_NULL;
      const int rc =
          is_send ? MPI_Isend(p, static_cast<int>(n), MPI_BYTE, t.peer, tag, comm_, &request)
                  : MPI_Irecv(p, static_cast<int>(n), MPI_BYTE, t.peer, tag, comm_, &request);
      if (rc != MPI_SUCCESS) {
        return MpiError(call, rc,
                        absl::StrCat(is_send ? "MPI_Isend to " : "MPI_Irecv from ",
                                     PeerName(t.peer), " (", n, " bytes)"));
      }
      requests.push_back(request);
      owner.push_back(idx);
      piece_bytes.push_back(static_cast<int>(n));
      p += n;
      left -= n;
    } while (left > 0);
    return absl::OkStatus();
  };
  // Receives first, so that sends find them posted.
  for (bool is_send : {false, true}) {
    for (size_t i = 0; i < transfers.size(); ++i) {
      absl::Status status = post(i, is_send);
      if (!status.ok()) {
        cleanup();
        return status;
      }
    }
  }

  if (local_work) local_work();

  const int n = static_cast<int>(requests.size());
  std::vector<int> indices(n);
  std::vector<MPI_Status> statuses(n);
  size_t remaining = requests.size();
  PollBackoff backoff;
  auto next_abort_poll = std::chrono::steady_clock::now() + kAbortPollInterval;
  while (remaining > 0) {
    int completed = 0;
    const int rc = MPI_Testsome(n, requests.data(), &completed, indices.data(), statuses.data());
    if (rc != MPI_SUCCESS && rc != MPI_ERR_IN_STATUS) {
      cleanup();
      return MpiError(call, rc, "MPI_Testsome(n, requests, &completed, indices, statuses)");
    }
    if (completed == MPI_UNDEFINED) break;
    for (int k = 0; k < completed; ++k) {
      const int i = indices[k];
      const Transfer& t = transfers[owner[i]];
      if (rc == MPI_ERR_IN_STATUS && statuses[k].MPI_ERROR != MPI_SUCCESS) {
        const int err = statuses[k].MPI_ERROR;
        cleanup();
        int error_class = err;
        MPI_Error_class(err, &error_class);
        if (error_class == MPI_ERR_TRUNCATE) {
          return absl::InvalidArgumentError(absl::StrCat(Describe(call), ": expected ", t.bytes,
                                                         " bytes from ", PeerName(t.peer),
                                                         ", which sends more (MPI_ERR_TRUNCATE)"));
        }
        return absl::InternalError(
            absl::StrCat(Describe(call), ": ", t.is_send ? "MPI_Isend to " : "MPI_Irecv from ",
                         PeerName(t.peer), " failed: ", MpiErrorString(err)));
      }
      if (!t.is_send) {
        int got = 0;
        MPI_Get_count(&statuses[k], MPI_BYTE, &got);
        if (got != piece_bytes[i]) {
          cleanup();
          return absl::InvalidArgumentError(
              absl::StrCat(Describe(call), ": expected ", t.bytes, " bytes from ", PeerName(t.peer),
                           ", which sends fewer (a ", got, "-byte message where ", piece_bytes[i],
                           " were expected)"));
        }
      }
      --remaining;
    }
    if (remaining == 0) break;
    const auto now = std::chrono::steady_clock::now();
    if (now >= call.deadline) {
      std::set<int> missing;
      for (int i = 0; i < n; ++i) {
        if (requests[i] != MPI_REQUEST_NULL) missing.insert(transfers[owner[i]].peer);
      }
      cleanup();
      return TimeoutError(call,
                          absl::StrCat("no answer from ranks ",
                                       PeerList(std::vector<int>(missing.begin(), missing.end()))));
    }
    if (now >= next_abort_poll) {
      absl::Status notice = abort_channel_->Poll();
      if (!notice.ok()) {
        cleanup();
        return absl::AbortedError(absl::StrCat(Describe(call), ": ", notice.message()));
      }
      next_abort_poll = now + kAbortPollInterval;
    }
    backoff.Pause();
  }
  return absl::OkStatus();
}

absl::Status MpiComm::DoAllToAllV(const void* send, absl::Span<const size_t> send_bytes, void* recv,
                                  absl::Span<const size_t> recv_bytes, const CallContext& call) {
  const int n = size(), me = rank();
  std::vector<size_t> send_offset(n + 1, 0), recv_offset(n + 1, 0);
  for (int p = 0; p < n; ++p) {
    send_offset[p + 1] = send_offset[p] + send_bytes[p];
    recv_offset[p + 1] = recv_offset[p] + recv_bytes[p];
  }
  auto send_block = [&](int p) {
    return const_cast<char*>(static_cast<const char*>(send)) + send_offset[p];
  };
  auto recv_block = [&](int p) { return static_cast<char*>(recv) + recv_offset[p]; };
  std::vector<Transfer> transfers;
  transfers.reserve(2 * n);
  // Start with the next rank so that not every rank sends to rank 0 first.
  for (int i = 1; i < n; ++i) {
    const int from = (me - i + n) % n, to = (me + i) % n;
    transfers.push_back({from, false, recv_block(from), recv_bytes[from]});
    transfers.push_back({to, true, send_block(to), send_bytes[to]});
  }
  if (send_bytes[me] != recv_bytes[me]) {
    // Still exchange with the peers, so that they do not wait for this rank in vain.
    RETURN_IF_ERROR(Exchange(call, transfers));
    return absl::InvalidArgumentError(absl::StrCat(Describe(call), ": sends ", send_bytes[me],
                                                   " bytes to itself but expects ",
                                                   recv_bytes[me]));
  }
  return Exchange(call, transfers, [&] {
    if (send_bytes[me] > 0) std::memcpy(recv_block(me), send_block(me), send_bytes[me]);
  });
}

absl::Status MpiComm::DoAllReduceSum(float* data, size_t count, const CallContext& call) {
  const int n = size(), me = rank();
  if (n == 1) return absl::OkStatus();
  // Chunk q of the vector is reduced by rank q: [Begin(q), Begin(q + 1)).
  auto begin = [&](int q) { return (count / n) * q + std::min<size_t>(q, count % n); };
  const size_t my_begin = begin(me), my_len = begin(me + 1) - my_begin;

  // 1. Reduce-scatter: every rank sends chunk q to rank q, which sums in rank order.
  std::vector<float> gathered(my_len * n);
  std::vector<Transfer> transfers;
  for (int i = 1; i < n; ++i) {
    const int from = (me - i + n) % n, to = (me + i) % n;
    transfers.push_back({from, false, gathered.data() + from * my_len, my_len * sizeof(float)});
    transfers.push_back({to, true, data + begin(to), (begin(to + 1) - begin(to)) * sizeof(float)});
  }
  RETURN_IF_ERROR(Exchange(call, transfers));
  // Every element is summed once, here, in rank order; phase 2 copies the result everywhere.
  float* out = data + my_begin;  // this rank's chunk was sent to nobody: reduce in place
  std::memcpy(gathered.data() + me * my_len, out, my_len * sizeof(float));
  std::memcpy(out, gathered.data(), my_len * sizeof(float));
  for (int p = 1; p < n; ++p) {
    const float* x = gathered.data() + p * my_len;
    for (size_t i = 0; i < my_len; ++i) out[i] += x[i];
  }

  // 2. All-gather the reduced chunks.
  transfers.clear();
  for (int i = 1; i < n; ++i) {
    const int from = (me - i + n) % n, to = (me + i) % n;
    transfers.push_back(
        {from, false, data + begin(from), (begin(from + 1) - begin(from)) * sizeof(float)});
    transfers.push_back({to, true, out, my_len * sizeof(float)});
  }
  return Exchange(call, transfers);
}

absl::Status MpiComm::DoAllGather(const void* send, size_t bytes_per_rank, void* recv,
                                  const CallContext& call) {
  const int n = size(), me = rank();
  char* out = static_cast<char*>(recv);
  char* own = const_cast<char*>(static_cast<const char*>(send));
  std::vector<Transfer> transfers;
  for (int i = 1; i < n; ++i) {
    const int from = (me - i + n) % n, to = (me + i) % n;
    transfers.push_back({from, false, out + from * bytes_per_rank, bytes_per_rank});
    transfers.push_back({to, true, own, bytes_per_rank});
  }
  return Exchange(call, transfers, [&] {
    if (out + me * bytes_per_rank != own && bytes_per_rank > 0) {
      std::memcpy(out + me * bytes_per_rank, own, bytes_per_rank);
    }
  });
}

absl::Status MpiComm::DoBroadcast(void* data, size_t bytes, int root, const CallContext& call) {
  const int n = size(), me = rank();
  std::vector<Transfer> transfers;
  if (me == root) {
    for (int i = 1; i < n; ++i) transfers.push_back({(me + i) % n, true, data, bytes});
  } else {
    transfers.push_back({root, false, data, bytes});
  }
  return Exchange(call, transfers);
}

absl::Status MpiComm::DoBarrier(const CallContext& call) {
  // Linear: a zero-byte message to and from every peer, so a timeout names every absent rank.
  const int n = size(), me = rank();
  std::vector<Transfer> transfers;
  for (int i = 1; i < n; ++i) {
    transfers.push_back({(me - i + n) % n, false, nullptr, 0});
    transfers.push_back({(me + i) % n, true, nullptr, 0});
  }
  return Exchange(call, transfers);
}

absl::StatusOr<std::unique_ptr<Comm>> MpiComm::DoSplit(int color, int key,
                                                       const CallContext& call) {
  const int n = size();
  // MPI_Comm_split is blocking; the bounded all-gather first proves that every rank is here.
  const int mine[2] = {color, key};
  std::vector<int> all(2 * n);
  RETURN_IF_ERROR(DoAllGather(mine, sizeof(mine), all.data(), call));
  std::vector<int> colors(n), keys(n);
  for (int r = 0; r < n; ++r) {
    colors[r] = all[2 * r];
    keys[r] = all[2 * r + 1];
  }
  const std::vector<int> members = SplitMembers(colors, keys, color);
  MPI_Comm child = MPI_COMM_NULL;
  FLOTILLA_MPI_CALL(call, MPI_Comm_split(comm_, color, key, &child));
  FLOTILLA_MPI_CALL(call, MPI_Comm_set_errhandler(child, MPI_ERRORS_RETURN));
  int child_rank = -1;
  FLOTILLA_MPI_CALL(call, MPI_Comm_rank(child, &child_rank));
  std::vector<int> world_ranks;
  for (int m : members) world_ranks.push_back(world_rank(m));
  if (child_rank < 0 || child_rank >= static_cast<int>(members.size()) ||
      members[child_rank] != rank()) {
    MPI_Comm_free(&child);
    return absl::InternalError(absl::StrCat(Describe(call), ": MPI_Comm_split gave rank ",
                                            child_rank, ", expected the position of ", rank(),
                                            " in ", PeerList(members)));
  }
  return std::unique_ptr<Comm>(
      new MpiComm(child, child_rank, std::move(world_ranks), abort_channel_, options()));
}

void MpiComm::DoAbort(const absl::Status& status) {
  abort_channel_->AbortJob(
      absl::StrCat("world rank ", world_rank(rank()), " aborted: ", status.ToString()),
      options().abort_grace);
}

absl::Status MpiComm::DoShutdown() {
  if (comm_ == MPI_COMM_NULL || !MpiUsable()) return absl::OkStatus();
  const int rc = MPI_Comm_free(&comm_);
  comm_ = MPI_COMM_NULL;
  if (rc != MPI_SUCCESS) {
    return absl::InternalError(
        absl::StrCat("rank ", rank(), ": MPI_Comm_free failed: ", MpiErrorString(rc)));
  }
  return absl::OkStatus();
}

}  // namespace flotilla
