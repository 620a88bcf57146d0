// Built instead of nccl_comm.cc when the CUDA toolkit or NCCL is absent (STYLE rule 3).
#include "comm/nccl_comm.h"

namespace flotilla {

absl::StatusOr<std::unique_ptr<NcclComm>> NcclComm::Create(Comm& bootstrap, int cuda_device,
                                                           const CommOptions& options) {
  return absl::UnimplementedError(
      "NcclComm: this build has no CUDA toolkit / NCCL (FLOTILLA_CUDA=OFF or not found)");
}

absl::StatusOr<int> NcclComm::VisibleDeviceCount() {
  return absl::UnimplementedError("NcclComm: this build has no CUDA toolkit / NCCL");
}

}  // namespace flotilla
