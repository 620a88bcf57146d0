#include "comm/control_endpoints.h"

#include <cstring>

namespace flotilla {

absl::StatusOr<std::vector<std::string>> ExchangeControlEndpoints(Comm& world,
                                                                  const std::string& mine) {
  constexpr size_t kRecord = 256;
  if (mine.size() >= kRecord) {
    return absl::InvalidArgumentError("control endpoint '" + mine + "' is over 255 bytes");
  }
  std::vector<char> record(kRecord, '\0'), all(kRecord * world.size());
  std::memcpy(record.data(), mine.data(), mine.size());
  absl::Status st = world.AllGather(record.data(), kRecord, all.data(), {"control endpoints", -1});
  if (!st.ok()) return st;
  std::vector<std::string> out;
  for (int r = 0; r < world.size(); ++r) out.emplace_back(all.data() + r * kRecord);
  return out;
}

}  // namespace flotilla
