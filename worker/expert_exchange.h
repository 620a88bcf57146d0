// Expert-parallel token exchange (design.md §2): dispatch sends every (token, slot) copy to the
// rank owning its expert; combine returns one reply row per copy, in the sender's order. The
// payloads are opaque bytes, so tests can put recognisable values through it.
#pragma once

#include <cstdint>
#include <vector>

#include "common/status.h"
#include "sharding/layout.h"
#include "comm/comm.h"

namespace flotilla {

class ExpertExchange {
 public:
  struct Header {
    int32_t token;         // index among the sender's rows
    int32_t slot;          // routing slot, 0..k-1
    int32_t local_expert;  // index among the receiver's experts
    float weight;          // routing weight
  };

  // All ranks of `ep` call. idx/weights: [n, k] global expert ids and routing weights of this
  // rank's n rows; payload: n rows of row_bytes. Copies go out grouped by destination rank, then
  // row, then slot.
  absl::Status Dispatch(Comm& ep, const ExpertPlacement& placement, const int32_t* idx,
                        const float* weights, int64_t n, int64_t k, const uint8_t* payload,
                        size_t row_bytes, int64_t step);

  // What arrived, in arrival order (source rank, then the source's order).
  int64_t num_received() const { return int64_t(recv_total_); }
  Header header(int64_t i) const;
  const uint8_t* payload(int64_t i) const;
  // Received entries per local expert, in arrival order; INTERNAL if one names an expert this
  // rank does not own.
  absl::StatusOr<std::vector<std::vector<int64_t>>> ByLocalExpert(int64_t num_local) const;

  // All ranks call, after Dispatch. replies: num_received() rows of reply_bytes, in arrival
  // order. out: n * k rows of reply_bytes, row (token * k + slot) holding that copy's reply.
  absl::Status Combine(Comm& ep, const uint8_t* replies, size_t reply_bytes, uint8_t* out,
                       int64_t step);

 private:
  int64_t k_ = 0;
  size_t entry_bytes_ = 0;
  std::vector<std::vector<int64_t>> to_rank_;  // (token * k + slot) per destination
  std::vector<uint64_t> send_count_, recv_count_;
  uint64_t recv_total_ = 0;
  std::vector<uint8_t> recv_buf_;
};

}  // namespace flotilla
