#include "comm/comm.h"

#include <algorithm>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "comm/poll_backoff.h"

namespace flotilla {

Comm::Comm(int rank, std::vector<int> world_ranks, const CommOptions& options)
    : rank_(rank),
      size_(static_cast<int>(world_ranks.size())),
      world_ranks_(std::move(world_ranks)),
      options_(options) {}

std::string Comm::PeerName(int group_rank) const {
  if (group_rank < 0 || group_rank >= size_) return absl::StrCat("rank ", group_rank);
  const int world = world_ranks_[group_rank];
  if (world == group_rank) return absl::StrCat("rank ", group_rank);
  return absl::StrCat("rank ", group_rank, " (world ", world, ")");
}

std::string Comm::PeerList(absl::Span<const int> group_ranks) const {
  std::string out = "[";
  for (size_t i = 0; i < group_ranks.size(); ++i) {
    const int r = group_ranks[i];
    absl::StrAppend(&out, i == 0 ? "" : ", ", r);
    if (r >= 0 && r < size_ && world_ranks_[r] != r)
      absl::StrAppend(&out, " (world ", world_ranks_[r], ")");
  }
  return absl::StrCat(out, "]");
}

std::string Comm::DescribeAs(int group_rank, const CallContext& call) const {
  std::string who = absl::StrCat("rank ", group_rank, "/", size_);
  if (world_ranks_[group_rank] != group_rank) {
    absl::StrAppend(&who, " (world ", world_ranks_[group_rank], ")");
  }
  return absl::StrCat(who, ": ", call.op, " '", call.site.what, "' step ", call.site.step);
}

absl::Status Comm::TimeoutError(const CallContext& call, const std::string& waiting_on) const {
  return absl::DeadlineExceededError(absl::StrCat(Describe(call), " did not complete within ",
                                                  absl::FormatDuration(call.timeout), "; ",
                                                  waiting_on));
}

absl::Status Comm::Annotate(const CallContext& call, const absl::Status& status) const {
  return absl::Status(status.code(), absl::StrCat(Describe(call), ": ", status.message()));
}

std::vector<int> Comm::SplitMembers(absl::Span<const int> colors, absl::Span<const int> keys,
                                    int color) {
  std::vector<int> members;
  for (size_t r = 0; r < colors.size(); ++r) {
    if (colors[r] == color) members.push_back(static_cast<int>(r));
  }
  std::stable_sort(members.begin(), members.end(), [&](int a, int b) { return keys[a] < keys[b]; });
  return members;
}

absl::StatusOr<Comm::CallContext> Comm::Begin(const char* op, const CallSite& site,
                                              std::optional<absl::Duration> timeout) const {
  CallContext call{op, site, timeout.value_or(options_.timeout), {}};
  if (call.site.what == nullptr) call.site.what = "";
  if (shut_down_) {
    return absl::FailedPreconditionError(absl::StrCat(Describe(call), ": comm was shut down"));
  }
  if (!broken_.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        Describe(call), ": comm unusable after an earlier error: ", broken_.message()));
  }
  if (call.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        Describe(call), ": timeout must be positive, got ", absl::FormatDuration(call.timeout)));
  }
  call.deadline = SteadyDeadline(call.timeout);
  return call;
}

absl::Status Comm::Fail(absl::Status status) {
  if (!status.ok() && broken_.ok()) broken_ = status;
  return status;
}

absl::Status Comm::AllToAllV(const void* send, absl::Span<const size_t> send_bytes, void* recv,
                             absl::Span<const size_t> recv_bytes, const CallSite& site,
                             std::optional<absl::Duration> timeout) {
  ASSIGN_OR_RETURN(CallContext call, Begin("AllToAllV", site, timeout));
  if (send_bytes.size() != static_cast<size_t>(size_) ||
      recv_bytes.size() != static_cast<size_t>(size_)) {
    return absl::InvalidArgumentError(
        absl::StrCat(Describe(call), ": send_bytes and recv_bytes need ", size_, " entries, got ",
                     send_bytes.size(), " and ", recv_bytes.size()));
  }
  const size_t total_send = std::accumulate(send_bytes.begin(), send_bytes.end(), size_t{0});
  const size_t total_recv = std::accumulate(recv_bytes.begin(), recv_bytes.end(), size_t{0});
  if ((total_send > 0 && send == nullptr) || (total_recv > 0 && recv == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(Describe(call), ": null buffer for ", total_send,
                                                   " send / ", total_recv, " recv bytes"));
  }
  return Fail(DoAllToAllV(send, send_bytes, recv, recv_bytes, call));
}

absl::Status Comm::AllReduceSum(float* data, size_t count, const CallSite& site,
                                std::optional<absl::Duration> timeout) {
  ASSIGN_OR_RETURN(CallContext call, Begin("AllReduceSum", site, timeout));
  if (count > 0 && data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(Describe(call), ": null buffer for ", count, " floats"));
  }
  return Fail(DoAllReduceSum(data, count, call));
}

absl::Status Comm::AllGather(const void* send, size_t bytes_per_rank, void* recv,
                             const CallSite& site, std::optional<absl::Duration> timeout) {
  ASSIGN_OR_RETURN(CallContext call, Begin("AllGather", site, timeout));
  if (bytes_per_rank > 0 && (send == nullptr || recv == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat(Describe(call), ": null buffer for ", bytes_per_rank, " bytes per rank"));
  }
  return Fail(DoAllGather(send, bytes_per_rank, recv, call));
}

absl::Status Comm::Broadcast(void* data, size_t bytes, int root, const CallSite& site,
                             std::optional<absl::Duration> timeout) {
  ASSIGN_OR_RETURN(CallContext call, Begin("Broadcast", site, timeout));
  if (root < 0 || root >= size_) {
    return absl::InvalidArgumentError(
        absl::StrCat(Describe(call), ": root ", root, " outside [0, ", size_, ")"));
  }
  if (bytes > 0 && data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(Describe(call), ": null buffer for ", bytes, " bytes"));
  }
  return Fail(DoBroadcast(data, bytes, root, call));
}

absl::Status Comm::Barrier(const CallSite& site, std::optional<absl::Duration> timeout) {
  ASSIGN_OR_RETURN(CallContext call, Begin("Barrier", site, timeout));
  return Fail(DoBarrier(call));
}

absl::StatusOr<std::unique_ptr<Comm>> Comm::Split(int color, int key, const CallSite& site,
                                                  std::optional<absl::Duration> timeout) {
  ASSIGN_OR_RETURN(CallContext call, Begin("Split", site, timeout));
  if (color < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(Describe(call), ": color must be >= 0, got ", color));
  }
  absl::StatusOr<std::unique_ptr<Comm>> child = DoSplit(color, key, call);
  if (!child.ok()) return Fail(child.status());
  return child;
}

void Comm::Abort(const absl::Status& status) {
  DoAbort(status.ok() ? absl::UnknownError("Abort() called with an OK status") : status);
}

absl::Status Comm::Shutdown() {
  if (shut_down_) return absl::OkStatus();
  shut_down_ = true;
  return DoShutdown();
}

}  // namespace flotilla
