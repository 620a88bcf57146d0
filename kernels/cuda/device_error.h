// Errors a kernel finds in data only the device reads (index lists, slot offsets): the first one
// is recorded in a DeviceError in device memory (the code by atomicCAS, so later ones do not
// overwrite it) and the bad element is skipped, so a bad index never reads or writes outside its
// buffer. The CUDA backend's queue reads the record when it synchronizes and turns it into an
// error naming the op, the position and the value. Plain C++: host code and CPU tests use it.
#pragma once

#include <cstdint>
#include <string>

namespace flotilla::kernels::cuda {

enum DeviceErrorCode : int32_t {
  kDeviceErrorNone = 0,
  kDeviceErrorGatherIndex = 1,   // GatherRows: index[position] = value names no source row
  kDeviceErrorScatterIndex = 2,  // ScatterRows: index[position] = value names no destination row
  kDeviceErrorSlotOffset = 3,    // CompressPool: slot_offsets[position] = value outside the state
  kDeviceErrorPickIndex = 4,     // PickedEntries: picks[position] = value names no visible entry
  kDeviceErrorPickCount = 5,     // PickedEntries: num_picks[position] or the total (position -1)
  kDeviceErrorPagedUnit = 6,     // UnpackKvEntriesPaged: units[position] = value outside the table
  kDeviceErrorPagedCount = 7,    // UnpackKvEntriesPaged: count = value above max_rows
  kDeviceErrorTopKCount = 8,     // IndexerTopK: num_picks[position] = value above top_k
};

struct DeviceError {
  int32_t code = kDeviceErrorNone;
  int32_t pad = 0;
  int64_t position = 0;
  int64_t value = 0;
  int64_t limit = 0;  // the valid range is [0, limit)
};

// "GatherRows: index[3] = 17 names row 17; expected rows 0 to 9 (found on the device)".
std::string DeviceErrorMessage(const DeviceError& e);

}  // namespace flotilla::kernels::cuda
