// The start-up agreement of an MPI job: every rank reports whether it loaded, and what (a
// fingerprint of the checkpoint and config), so that all ranks fail together with the failing
// rank's message instead of hanging, and ranks started on different checkpoints are caught.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "comm/comm.h"

namespace flotilla {

// Collective over `group`. `participates_only`: a rank that loads nothing (the coordinator);
// it is left out of the fingerprint comparison. Returns, on every rank, FAILED_PRECONDITION
// naming the first failing rank and its message, or the first rank whose fingerprint differs.
absl::Status AgreeOnLoad(Comm& group, const absl::Status& loaded, uint64_t fingerprint,
                         bool participates_only = false);

}  // namespace flotilla
