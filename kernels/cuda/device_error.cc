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
    case kDeviceErrorPickIndex:
      return "PickedEntries: picks[" + pos + "] = " + val + "; expected entries " + range +
             " (found on the device; the pick was skipped)";
    case kDeviceErrorPickCount:
      return e.position < 0 ? "PickedEntries: " + val + " entries picked; expected at most " +
                                  std::to_string(e.limit - 1) + " (found on the device)"
                            : "PickedEntries: num_picks[" + pos + "] = " + val + "; expected " +
                                  range + " (found on the device; the row was skipped)";
    case kDeviceErrorPagedUnit:
      return "UnpackKvEntriesPaged: units[" + pos + "] = " + val + "; expected " + range +
             " with a page of the pool (found on the device; the row was not written)";
    case kDeviceErrorPagedCount:
      return "UnpackKvEntriesPaged: count " + val + "; expected " + range +
             " (found on the device; nothing was written)";
    case kDeviceErrorTopKCount:
      return "IndexerTopK: num_picks[" + pos + "] = " + val + "; expected " + range +
             " (found on the device; the row was left as it was)";
  }
  return "unknown device error code " + std::to_string(e.code) + " at position " + pos;
}

}  // namespace flotilla::kernels::cuda
