// Where a worker computes: `--device cpu|cuda|cuda:N`, and which GPU of its node a worker takes
// (docs/gpu-model.md). Pure: the launcher's facts (local rank and size, CUDA_VISIBLE_DEVICES,
// the device count the runtime reports) come in as arguments, so every rule is unit-tested
// without a GPU or mpirun.
//
// One worker per GPU. Open MPI numbers the processes of a node 0..local_size-1; the coordinator
// is mapped first, onto the first node, as its local rank 0. So a worker's index among the
// workers of its node is its local rank, less one where the coordinator shares the node, and it
// takes GPU `index` of the GPUs the node offers (--gpus-per-node G, else every visible device).
// A CUDA_VISIBLE_DEVICES list already set by a scheduler is indexed, not replaced.
#pragma once

#include <optional>
#include <string>

#include "absl/strings/string_view.h"
#include "common/status.h"

namespace flotilla {

enum class DeviceKind { kCpu, kCuda };

struct DeviceChoice {
  DeviceKind kind = DeviceKind::kCpu;
  int ordinal = -1;  // cuda:N; -1 = by local rank
  bool operator==(const DeviceChoice&) const = default;
};

// "cpu", "cuda", "cuda:N" (N a non-negative decimal). INVALID_ARGUMENT names `flag` and the
// accepted forms.
absl::StatusOr<DeviceChoice> ParseDevice(absl::string_view text, absl::string_view flag = "--device");
std::string DeviceString(const DeviceChoice& device);  // "cpu", "cuda", "cuda:3"

// What a worker process knows of its node when it chooses a GPU.
struct NodeFacts {
  int local_rank = 0;             // this process among the node's processes
  int local_size = 1;             // processes on this node (coordinator included)
  bool coordinator_here = false;  // the coordinator runs on this node (as local rank 0)
  int gpus_per_node = 0;          // --gpus-per-node; 0 = every device the runtime reports
  int device_count = 0;           // the CUDA runtime's count (after CUDA_VISIBLE_DEVICES)
  std::optional<std::string> visible_devices;  // CUDA_VISIBLE_DEVICES, nullopt when unset
  bool share = false;  // allow more workers than GPUs on a node (tests): round-robin
};

struct GpuPlacement {
  int worker_index = 0;     // among the workers of the node
  int workers_on_node = 0;
  int ordinal = 0;          // the runtime's device number: the argument of cudaSetDevice
  std::string physical;     // the CUDA_VISIBLE_DEVICES entry it stands for (or the ordinal)
  int sharing = 1;          // workers on this GPU
  // "GPU 3 (CUDA_VISIBLE_DEVICES entry 7) for worker 3 of 8 on this node"
  std::string Describe() const;
};

// The GPU of the worker described by `node`, or of `device` when it names an ordinal.
// FAILED_PRECONDITION when the node has no GPU, offers fewer than there are workers (unless
// `share`), --gpus-per-node exceeds the devices present, or the process is not a worker.
absl::StatusOr<GpuPlacement> PlaceGpu(const NodeFacts& node, const DeviceChoice& device);

}  // namespace flotilla
