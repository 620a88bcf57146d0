#include "sharding/exchange_layout.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace flotilla {
namespace {

int64_t RoundUp(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

}  // namespace

absl::StatusOr<ExchangeLayout> ExchangeLayout::Make(const ModelConfig& config,
                                                    const ExpertPlacement& placement,
                                                    int64_t ep_rank, int64_t rows_per_round,
                                                    int64_t k) {
  if (rows_per_round < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "expert exchange: %d rows per round; expected at least 1", rows_per_round));
  }
  if (k < 1 || k > config.n_routed_experts) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "expert exchange: %d experts per token; expected 1..%d (n_routed_experts)", k,
        config.n_routed_experts));
  }
  if (ep_rank < 0 || ep_rank >= placement.num_ranks()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "expert exchange: rank %d of an expert-parallel group of %d", ep_rank,
        placement.num_ranks()));
  }
  const int64_t d = config.hidden_size;
  const bool fp8 = config.Quantized();
  if (fp8 && d % 128 != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "expert exchange: hidden_size %d is not a multiple of 128 (FP8 activations carry one "
        "scale per 128)",
        d));
  }

  ExchangeLayout l;
  l.rows_per_round = rows_per_round;
  l.k = k;
  l.ep_rank = ep_rank;
  l.payload_bytes = fp8 ? d + d / 128 : 2 * d;
  l.record_bytes = RoundUp(kHeaderBytes + l.payload_bytes, kAlign);
  l.reply_bytes = 2 * d;

  const int64_t ranks = placement.num_ranks();
  uint64_t send = 0, reply = 0;
  for (int64_t q = 0; q < ranks; ++q) {
    const int64_t cap = rows_per_round * std::min(k, placement.ExpertsOf(q).size());
    l.peer_capacity.push_back(cap);
    l.send_offset.push_back(send);
    l.reply_offset.push_back(reply);
    send += uint64_t(cap) * uint64_t(l.record_bytes);
    reply += uint64_t(cap) * uint64_t(l.reply_bytes);
  }
  l.dispatch_send_bytes = send;
  l.reply_recv_bytes = reply;
  l.recv_capacity_per_source = rows_per_round * std::min(k, placement.ExpertsOf(ep_rank).size());
  const uint64_t received = uint64_t(ranks) * uint64_t(l.recv_capacity_per_source);
  l.dispatch_recv_bytes = received * uint64_t(l.record_bytes);
  l.reply_send_bytes = received * uint64_t(l.reply_bytes);
  // (token, slot) -> (peer, record) for the combine, the received records grouped by local
  // expert, and the per-peer counts both ways; int32 each.
  const uint64_t copies = uint64_t(rows_per_round) * uint64_t(k);
  l.index_bytes = uint64_t(RoundUp(int64_t(4 * (copies + received + 2 * uint64_t(ranks))), kAlign));
  return l;
}

uint64_t ExchangeLayout::HostExchangeBytes() const {
  const uint64_t copies = uint64_t(rows_per_round) * uint64_t(k);
  const uint64_t ranks = peer_capacity.size();
  const uint64_t received = ranks * uint64_t(recv_capacity_per_source);
  return copies * uint64_t(record_bytes + reply_bytes) + dispatch_recv_bytes + 4 * 2 * copies +
         4 * received + 8 * (ranks + 1) + 8 * 6 * ranks + sizeof(size_t) * 3 * ranks;
}

uint64_t ExchangeLayout::CountedSendBytes(const std::vector<int64_t>& copies,
                                          const std::vector<int64_t>& received) const {
  uint64_t total = 0;
  for (const int64_t c : copies) total += uint64_t(c) * uint64_t(record_bytes);
  for (const int64_t r : received) total += uint64_t(r) * uint64_t(reply_bytes);
  return total;
}

int64_t ExchangeRounds(const std::vector<int64_t>& rows_per_rank, int64_t rows_per_round) {
  FLOTILLA_CHECK(rows_per_round >= 1);
  int64_t most = 0;
  for (const int64_t r : rows_per_rank) most = std::max(most, r);
  return (most + rows_per_round - 1) / rows_per_round;
}

}  // namespace flotilla
