#include "worker/expert_exchange.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace flotilla {
namespace {

template <class T>
void Reserve(std::vector<T>& v, uint64_t n) {
  v.assign(size_t(n), T{});
}

template <class T>
uint64_t Held(const std::vector<T>& v) {
  return uint64_t(v.capacity() * sizeof(T));
}

// Records one rank may receive in one call, from all sources.
uint64_t RecvRecords(const ExchangeLayout& l, int64_t ranks) {
  return uint64_t(ranks) * uint64_t(l.recv_capacity_per_source);
}

}  // namespace

ExpertExchange::ExpertExchange(const ExchangeLayout& l) : layout_(l) {
  const int64_t ranks = int64_t(l.peer_capacity.size());
  const uint64_t copies = uint64_t(l.rows_per_round) * uint64_t(l.k);
  Reserve(send_order_, copies);
  Reserve(dest_, copies);
  Reserve(send_begin_, uint64_t(ranks) + 1);
  Reserve(send_count_, ranks);
  Reserve(recv_count_, ranks);
  Reserve(count_out_, 2 * uint64_t(ranks));
  Reserve(count_in_, 2 * uint64_t(ranks));
  Reserve(count_bytes_, ranks);
  Reserve(send_bytes_, ranks);
  Reserve(recv_bytes_, ranks);
  Reserve(send_buf_, copies * uint64_t(l.record_bytes));
  Reserve(recv_buf_, l.dispatch_recv_bytes);
  Reserve(back_buf_, copies * uint64_t(l.reply_bytes));
  Reserve(local_ids_, RecvRecords(l, ranks));
  for (size_t& b : count_bytes_) b = 2 * sizeof(uint64_t);
}

uint64_t ExpertExchange::ReservedBytes() const {
  return Held(send_order_) + Held(dest_) + Held(send_begin_) + Held(send_count_) +
         Held(recv_count_) + Held(count_out_) + Held(count_in_) + Held(count_bytes_) +
         Held(send_bytes_) + Held(recv_bytes_) + Held(send_buf_) + Held(recv_buf_) +
         Held(back_buf_) + Held(local_ids_);
}

absl::Status ExpertExchange::Dispatch(Comm& ep, const ExpertPlacement& placement,
                                      const int32_t* idx, const float* weights, int64_t n,
                                      int64_t k, std::span<const Piece> payload, bool more,
                                      int64_t step) {
  const int64_t world = ep.size();
  if (int64_t(send_count_.size()) != world || n > layout_.rows_per_round || k != layout_.k) {
    return absl::InternalError(absl::StrCat("moe dispatch: ", n, " rows of ", k, " copies over ",
                                            world, " ranks; the exchange holds ",
                                            layout_.rows_per_round, " rows of ", layout_.k,
                                            " copies over ", send_count_.size(), " ranks"));
  }
  int64_t payload_bytes = 0;
  for (const Piece& p : payload) payload_bytes += p.bytes;
  if (payload_bytes != layout_.payload_bytes) {
    return absl::InternalError(absl::StrCat("moe dispatch: rows of ", payload_bytes,
                                            " payload bytes; the exchange carries ",
                                            layout_.payload_bytes));
  }
  n_ = n;
  k_ = k;
  const int64_t rec = layout_.record_bytes;
  // Copies by destination (a counting sort, stable: row then slot within a destination).
  std::fill(send_count_.begin(), send_count_.end(), 0);
  for (int64_t e = 0; e < n * k; ++e) {
    dest_[e] = int32_t(placement.Locate(idx[e]).rank);
    ++send_count_[dest_[e]];
  }
  send_begin_[0] = 0;
  for (int64_t r = 0; r < world; ++r) send_begin_[r + 1] = send_begin_[r] + send_count_[r];
  for (int64_t r = 0; r < world; ++r) send_count_[r] = 0;
  for (int64_t e = 0; e < n * k; ++e) {
    const int32_t r = dest_[e];
    send_order_[send_begin_[r] + int64_t(send_count_[r]++)] = int32_t(e);
  }
  for (int64_t r = 0; r < world; ++r) {
    count_out_[2 * r] = send_count_[r];
    count_out_[2 * r + 1] = more ? 1 : 0;
  }
  RETURN_IF_ERROR(ep.AllToAllV(count_out_.data(), count_bytes_, count_in_.data(), count_bytes_,
                               {"moe dispatch counts", step}));
  recv_total_ = 0;
  any_more_ = false;
  for (int64_t r = 0; r < world; ++r) {
    recv_count_[r] = count_in_[2 * r];
    any_more_ = any_more_ || count_in_[2 * r + 1] != 0;
    send_bytes_[r] = send_count_[r] * uint64_t(rec);
    recv_bytes_[r] = recv_count_[r] * uint64_t(rec);
    recv_total_ += recv_count_[r];
  }
  if (recv_total_ * uint64_t(rec) > recv_buf_.size()) {
    return absl::InternalError(
        absl::StrCat("moe dispatch: ", recv_total_, " records arrive at rank ", ep.rank(),
                     "; its exchange holds ", recv_buf_.size() / uint64_t(rec),
                     " (every rank must run the same step limits)"));
  }
  uint8_t* p = send_buf_.data();
  for (int64_t i = 0; i < n * k; ++i, p += rec) {
    const int64_t e = send_order_[i], t = e / k;
    const Header hdr{int32_t(t), int32_t(e % k), int32_t(placement.Locate(idx[e]).local_expert_idx),
                     weights[e]};
    std::memcpy(p, &hdr, sizeof(hdr));
    uint8_t* q = p + sizeof(hdr);
    for (const Piece& piece : payload) {
      std::memcpy(q, piece.data + t * piece.ld, size_t(piece.bytes));
      q += piece.bytes;
    }
    std::memset(q, 0, size_t(p + rec - q));
  }
  return ep.AllToAllV(send_buf_.data(), send_bytes_, recv_buf_.data(), recv_bytes_,
                      {"moe dispatch", step});
}

ExpertExchange::Header ExpertExchange::header(int64_t i) const {
  Header h;
  std::memcpy(&h, recv_buf_.data() + i * layout_.record_bytes, sizeof(h));
  return h;
}

const uint8_t* ExpertExchange::payload(int64_t i) const {
  return recv_buf_.data() + i * layout_.record_bytes + sizeof(Header);
}

absl::Status ExpertExchange::GroupByLocalExpert(int64_t num_local, int64_t* offsets,
                                                int32_t* order) const {
  const int64_t received = num_received();
  for (int64_t i = 0; i < received; ++i) {
    const Header h = header(i);
    if (h.local_expert < 0 || h.local_expert >= num_local) {
      return absl::InternalError(absl::StrCat("moe dispatch: an entry names local expert ",
                                              h.local_expert, " on a rank owning ", num_local));
    }
    local_ids_[i] = h.local_expert;
  }
  // A stable counting sort (host metadata: the records are in host memory).
  std::fill(offsets, offsets + num_local + 1, int64_t(0));
  for (int64_t i = 0; i < received; ++i) ++offsets[local_ids_[i] + 1];
  for (int64_t e = 0; e < num_local; ++e) offsets[e + 1] += offsets[e];
  for (int64_t i = 0; i < received; ++i) order[offsets[local_ids_[i]]++] = int32_t(i);
  for (int64_t e = num_local; e > 0; --e) offsets[e] = offsets[e - 1];
  offsets[0] = 0;
  return absl::OkStatus();
}

absl::Status ExpertExchange::Combine(Comm& ep, const uint8_t* replies, uint8_t* out, int64_t step) {
  const int64_t world = ep.size();
  const uint64_t reply = uint64_t(layout_.reply_bytes);
  for (int64_t r = 0; r < world; ++r) {
    send_bytes_[r] = recv_count_[r] * reply;
    recv_bytes_[r] = send_count_[r] * reply;
  }
  RETURN_IF_ERROR(
      ep.AllToAllV(replies, send_bytes_, back_buf_.data(), recv_bytes_, {"moe combine", step}));
  for (int64_t i = 0; i < n_ * k_; ++i) {
    std::memcpy(out + int64_t(send_order_[i]) * int64_t(reply), &back_buf_[i * reply],
                size_t(reply));
  }
  return absl::OkStatus();
}

}  // namespace flotilla
