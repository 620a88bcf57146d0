#include "worker/expert_exchange.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace flotilla {

absl::Status ExpertExchange::Dispatch(Comm& ep, const ExpertPlacement& placement,
                                      const int32_t* idx, const float* weights, int64_t n,
                                      int64_t k, const uint8_t* payload, size_t row_bytes,
                                      int64_t step) {
  const int64_t world = ep.size();
  k_ = k;
  entry_bytes_ = sizeof(Header) + row_bytes;
  to_rank_.assign(world, {});
  for (int64_t t = 0; t < n; ++t)
    for (int64_t s = 0; s < k; ++s) to_rank_[placement.Locate(idx[t * k + s]).rank].push_back(t * k + s);
  send_count_.assign(world, 0);
  recv_count_.assign(world, 0);
  for (int64_t r = 0; r < world; ++r) send_count_[r] = to_rank_[r].size();
  std::vector<size_t> eight(world, sizeof(uint64_t)), send_bytes(world), recv_bytes(world);
  RETURN_IF_ERROR(ep.AllToAllV(send_count_.data(), eight, recv_count_.data(), eight,
                               {"moe dispatch counts", step}));
  uint64_t send_total = 0;
  recv_total_ = 0;
  for (int64_t r = 0; r < world; ++r) {
    send_bytes[r] = send_count_[r] * entry_bytes_;
    recv_bytes[r] = recv_count_[r] * entry_bytes_;
    send_total += send_count_[r];
    recv_total_ += recv_count_[r];
  }
  std::vector<uint8_t> send_buf(send_total * entry_bytes_);
  uint8_t* p = send_buf.data();
  for (int64_t r = 0; r < world; ++r) {
    for (int64_t e : to_rank_[r]) {
      const int64_t t = e / k;
      const Header hdr{int32_t(t), int32_t(e % k),
                       int32_t(placement.Locate(idx[e]).local_expert_idx), weights[e]};
      std::memcpy(p, &hdr, sizeof(hdr));
      std::memcpy(p + sizeof(hdr), payload + t * row_bytes, row_bytes);
      p += entry_bytes_;
    }
  }
  recv_buf_.resize(recv_total_ * entry_bytes_);
  return ep.AllToAllV(send_buf.data(), send_bytes, recv_buf_.data(), recv_bytes,
                      {"moe dispatch", step});
}

ExpertExchange::Header ExpertExchange::header(int64_t i) const {
  Header h;
  std::memcpy(&h, recv_buf_.data() + i * entry_bytes_, sizeof(h));
  return h;
}

const uint8_t* ExpertExchange::payload(int64_t i) const {
  return recv_buf_.data() + i * entry_bytes_ + sizeof(Header);
}

absl::StatusOr<std::vector<std::vector<int64_t>>> ExpertExchange::ByLocalExpert(
    int64_t num_local) const {
  std::vector<std::vector<int64_t>> out(num_local);
  for (int64_t i = 0; i < num_received(); ++i) {
    const Header h = header(i);
    if (h.local_expert < 0 || h.local_expert >= num_local) {
      return absl::InternalError(absl::StrCat("moe dispatch: an entry names local expert ",
                                              h.local_expert, " on a rank owning ", num_local));
    }
    out[h.local_expert].push_back(i);
  }
  return out;
}

absl::Status ExpertExchange::Combine(Comm& ep, const uint8_t* replies, size_t reply_bytes,
                                     uint8_t* out, int64_t step) {
  const int64_t world = ep.size();
  std::vector<size_t> send_bytes(world), recv_bytes(world);
  uint64_t send_total = 0;
  for (int64_t r = 0; r < world; ++r) {
    send_bytes[r] = recv_count_[r] * reply_bytes;
    recv_bytes[r] = send_count_[r] * reply_bytes;
    send_total += send_count_[r];
  }
  std::vector<uint8_t> back(send_total * reply_bytes);
  RETURN_IF_ERROR(ep.AllToAllV(replies, send_bytes, back.data(), recv_bytes,
                               {"moe combine", step}));
  uint64_t i = 0;
  for (int64_t r = 0; r < world; ++r)
    for (int64_t e : to_rank_[r]) std::memcpy(out + e * reply_bytes, &back[(i++) * reply_bytes], reply_bytes);
  return absl::OkStatus();
}

}  // namespace flotilla
