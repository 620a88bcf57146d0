#include "sharding/device_placement.h"

#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace flotilla {

absl::StatusOr<DeviceChoice> ParseDevice(absl::string_view text, absl::string_view flag) {
  if (text == "cpu") return DeviceChoice{DeviceKind::kCpu, -1};
  if (text == "cuda") return DeviceChoice{DeviceKind::kCuda, -1};
  absl::string_view rest = text;
  int ordinal = -1;
  if (absl::ConsumePrefix(&rest, "cuda:") && !rest.empty() &&
      rest.find_first_not_of("0123456789") == absl::string_view::npos &&
      absl::SimpleAtoi(rest, &ordinal) && ordinal >= 0) {
    return DeviceChoice{DeviceKind::kCuda, ordinal};
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s: \"%s\" is not a device; expected cpu, cuda (a GPU by local rank) or cuda:N", flag,
      text));
}

std::string DeviceString(const DeviceChoice& device) {
  if (device.kind == DeviceKind::kCpu) return "cpu";
  return device.ordinal < 0 ? "cuda" : absl::StrFormat("cuda:%d", device.ordinal);
}

std::string GpuPlacement::Describe() const {
  std::string s = absl::StrFormat("GPU %d", ordinal);
  if (physical != std::to_string(ordinal)) {
    absl::StrAppendFormat(&s, " (CUDA_VISIBLE_DEVICES entry %s)", physical);
  }
  absl::StrAppendFormat(&s, " for worker %d of %d on this node", worker_index, workers_on_node);
  if (sharing > 1) absl::StrAppendFormat(&s, ", shared by %d workers", sharing);
  return s;
}

absl::StatusOr<GpuPlacement> PlaceGpu(const NodeFacts& node, const DeviceChoice& device) {
  if (device.kind != DeviceKind::kCuda) {
    return absl::InvalidArgumentError("PlaceGpu: the device is not cuda");
  }
  if (node.local_size < 1 || node.local_rank < 0 || node.local_rank >= node.local_size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "local rank %d of %d processes on this node is not a valid position", node.local_rank,
        node.local_size));
  }
  if (node.device_count <= 0) {
    return absl::FailedPreconditionError(
        node.visible_devices.has_value()
            ? absl::StrFormat("no CUDA device on this node (CUDA_VISIBLE_DEVICES=%s)",
                              *node.visible_devices)
            : std::string("no CUDA device on this node"));
  }
  std::vector<std::string> visible;
  if (node.visible_devices.has_value()) {
    for (absl::string_view entry : absl::StrSplit(*node.visible_devices, ',')) {
      visible.emplace_back(absl::StripAsciiWhitespace(entry));
    }
  }
  auto physical = [&](int ordinal) {
    return ordinal < int(visible.size()) ? visible[size_t(ordinal)] : std::to_string(ordinal);
  };

  const int first_worker = node.coordinator_here ? 1 : 0;
  const int workers = node.local_size - first_worker;
  if (node.local_rank < first_worker) {
    return absl::FailedPreconditionError(
        "local rank 0 of the coordinator's node is the coordinator, which takes no GPU");
  }
  GpuPlacement p;
  p.worker_index = node.local_rank - first_worker;
  p.workers_on_node = workers;

  if (device.ordinal >= 0) {  // cuda:N, as asked
    if (device.ordinal >= node.device_count) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "--device cuda:%d: this node has %d CUDA device(s) (0..%d)", device.ordinal,
          node.device_count, node.device_count - 1));
    }
    p.ordinal = device.ordinal;
    p.physical = physical(p.ordinal);
    return p;
  }

  int gpus = node.gpus_per_node > 0 ? node.gpus_per_node : node.device_count;
  if (gpus > node.device_count) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "--gpus-per-node %d but this node has %d CUDA device(s)%s", gpus, node.device_count,
        node.visible_devices ? absl::StrFormat(" (CUDA_VISIBLE_DEVICES=%s)",
                                               *node.visible_devices)
                             : std::string()));
  }
  if (workers > gpus && !node.share) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%d workers on this node but %d GPU(s) for them: one worker per GPU (launch with "
        "--gpus-per-node %d so mpirun places %d workers per node)",
        workers, gpus, gpus, gpus));
  }
  p.ordinal = p.worker_index % gpus;
  p.physical = physical(p.ordinal);
  // Workers w with w % gpus == ordinal share this GPU.
  p.sharing = workers / gpus + (p.ordinal < workers % gpus ? 1 : 0);
  if (p.sharing < 1) p.sharing = 1;
  return p;
}

}  // namespace flotilla
