// Expert-parallel token exchange (design.md §2): dispatch sends every (token, slot) copy to the
// rank owning its expert; combine returns one reply row per copy, in the sender's order. The
// payloads are opaque bytes, so tests can put recognisable values through it.
//
// Every buffer is sized once, at construction, from the capacities of an ExchangeLayout
// (sharding/exchange_layout.h): records are laid out as it says (16-byte header, payload, padded
// to 16 B), the counted way (counts first, then only the used records). No call allocates. The
// buffers are host memory: MPI and the in-process comm move host bytes, so the model stages its
// backend buffers through them (NCCL, on device buffers, is a later transport).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "comm/comm.h"
#include "common/status.h"
#include "sharding/exchange_layout.h"
#include "sharding/layout.h"

namespace flotilla {

class ExpertExchange {
 public:
  struct Header {
    int32_t token;         // index among the sender's rows
    int32_t slot;          // routing slot, 0..k-1
    int32_t local_expert;  // index among the receiver's experts
    float weight;          // routing weight
  };
  static_assert(sizeof(Header) == ExchangeLayout::kHeaderBytes);

  // One piece of every row's payload: row t's bytes [t * ld, t * ld + bytes) of `data`. A row's
  // payload is its pieces back to back (FP8 codes then their scales, say).
  struct Piece {
    const uint8_t* data = nullptr;
    int64_t bytes = 0, ld = 0;
  };

  ExpertExchange() = default;  // no capacity: for a single process (never called)
  // Buffers for the peers and capacities of `layout` (rows_per_round rows of k copies sent, the
  // records one rank may receive, payload and reply sizes).
  explicit ExpertExchange(const ExchangeLayout& layout);
  // Host bytes held; equals layout.HostExchangeBytes().
  uint64_t ReservedBytes() const;

  // One round. All ranks of `ep` call. idx/weights: [n, k] global expert ids and routing
  // weights of this rank's n rows (n <= rows_per_round, k == the layout's k); the payload pieces
  // add up to the layout's payload_bytes. Copies go out grouped by destination rank, then row,
  // then slot. `more`: this rank has rows for a later round (it travels with the counts, so
  // every rank learns whether another round follows without a collective of its own).
  // INTERNAL when a peer would send more records than this rank can hold.
  absl::Status Dispatch(Comm& ep, const ExpertPlacement& placement, const int32_t* idx,
                        const float* weights, int64_t n, int64_t k, std::span<const Piece> payload,
                        bool more, int64_t step);
  // After Dispatch: whether any rank (this one included) has rows for another round. The same
  // on every rank.
  bool any_more() const { return any_more_; }

  // What arrived, in arrival order (source rank, then the source's order).
  int64_t num_received() const { return int64_t(recv_total_); }
  Header header(int64_t i) const;
  const uint8_t* payload(int64_t i) const;
  // The received records: num_received() records of record_bytes() (header, payload, padding).
  const uint8_t* records() const { return recv_buf_.data(); }
  int64_t record_bytes() const { return layout_.record_bytes; }
  // Groups the received entries by local expert, in arrival order: local expert e's entries are
  // order[offsets[e], offsets[e + 1]) (num_local + 1 offsets, num_received() order entries).
  // INTERNAL if an entry names an expert this rank does not own.
  absl::Status GroupByLocalExpert(int64_t num_local, int64_t* offsets, int32_t* order) const;

  // All ranks call, after Dispatch. replies: num_received() rows of the layout's reply_bytes, in
  // arrival order. out: n * k rows of reply_bytes, row (token * k + slot) holding that copy's
  // reply.
  absl::Status Combine(Comm& ep, const uint8_t* replies, uint8_t* out, int64_t step);

 private:
  ExchangeLayout layout_;
  int64_t n_ = 0, k_ = 0;
  // Per destination: the copies (token * k + slot) it gets, in order, from send_begin_[q].
  std::vector<int32_t> send_order_, dest_;
  std::vector<int64_t> send_begin_;
  std::vector<uint64_t> send_count_, recv_count_;
  std::vector<uint64_t> count_out_, count_in_;  // per peer: (records, more rounds)
  std::vector<size_t> count_bytes_, send_bytes_, recv_bytes_;
  uint64_t recv_total_ = 0;
  bool any_more_ = false;
  std::vector<uint8_t> send_buf_, recv_buf_, back_buf_;
  mutable std::vector<int32_t> local_ids_;
};

}  // namespace flotilla
