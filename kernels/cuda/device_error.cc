#include "kernels/cuda/device_error.h"

namespace flotilla::kernels::cuda {

std::string DeviceErrorMessage(const DeviceError& e) {
  const std::string pos = std::to_string(e.position), val = std::to_string(e.value);
  const std::string range = "0 to " + std::to_string(e.limit - 1);
  switch (e.code) {
    case kDeviceErrorNone:
      return "";
    case kDeviceErrorGatherIndex:
      return "GatherRows: index[" + pos + "] names source row " + val + "; expected rows " + range +
             " (found on the device; the row was not copied)";
    case kDeviceErrorScatterIndex:
      return "ScatterRows: index[" + pos + "] names destination row " + val + "; expected rows " +
             range + " (found on the device; the row was not copied)";
    case kDeviceErrorSlotOffset:
      return "CompressPool: slot_offsets[" + pos + "] = " + val + "; expected " + range +
             " (d channels inside kv / score; found on the device, the entry was not written)";
  }
  return "unknown device error code " + std::to_string(e.code) + " at position " + pos;
}

}  // namespace flotilla::kernels::cuda
