// After load, every rank tells every other where its control service listens (the coordinator,
// which hosts none, sends an empty endpoint).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/comm.h"

namespace flotilla {

// Collective over `world`. Returns the endpoints in rank order; INVALID_ARGUMENT if `mine` is
// longer than 255 bytes.
absl::StatusOr<std::vector<std::string>> ExchangeControlEndpoints(Comm& world,
                                                                  const std::string& mine);

}  // namespace flotilla
