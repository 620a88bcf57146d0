// Device buffers of the expert exchange on GPUs (design.md §2; docs/gpu-model.md): sized once at
// start from the rows one exchange round carries, so no step allocates. Pure; unit-tested on
// the CPU.
//
// Dispatch sends one record per (token, slot) copy to the rank owning that slot's expert:
//   [0, 16)                    header: int32 token, int32 slot, int32 local expert, f32 weight
//   [16, 16 + D)               activations as E4M3 codes           (FP8/FP4 checkpoints)
//   [16 + D, 16 + D + D/128)   their 1x128 UE8M0 scales
//   or [16, 16 + 2D)           bf16 activations                    (BF16 checkpoints)
// padded to 16 B (vector loads); V4-Flash: 16 + 4096 + 32 = 4,144 B. Each reply is the copy's
// expert output, D bf16 (8,192 B), returned to the sender, who sums a token's copies in expert
// order. These are the bytes the CPU exchange (worker/expert_exchange.h) sends, header first.
//
// Buffers are split into one block per peer. A token's copies name distinct experts, so it
// sends at most min(k, E_q) of them to rank q (E_q: experts q owns); a block for q holds
// rows x min(k, E_q) records, which no routing can overflow. Two ways to move them:
//   counted   counts are exchanged first and only the used records move (eager steps: one
//             device-to-host copy of the counts per exchange);
//   fixed     every block moves whole, so sizes are constants a CUDA graph can hold (decode
//             steps replayed from graphs): more bytes, no host round trip.
// A step whose group has more rows than one round carries runs its MoE in several rounds; every
// rank runs the same number (the plan tells each rank every group's rows).
#pragma once

#include <cstdint>
#include <vector>

#include "common/model_config.h"
#include "common/status.h"
#include "sharding/layout.h"

namespace flotilla {

struct ExchangeLayout {
  static constexpr int64_t kHeaderBytes = 16;
  static constexpr int64_t kAlign = 16;

  int64_t rows_per_round = 0;  // rows this rank routes per round (every rank the same bound)
  int64_t k = 0;               // copies per row: the largest experts-per-token a request may ask
  int64_t payload_bytes = 0;   // D + D/128 (FP8 + scales) or 2D (bf16)
  int64_t record_bytes = 0;    // header + payload, padded to kAlign
  int64_t reply_bytes = 0;     // 2D
  int64_t ep_rank = 0;

  // Dispatch send / reply receive: one block per destination q, capacity rows x min(k, E_q).
  std::vector<int64_t> peer_capacity;  // records
  std::vector<uint64_t> send_offset;   // bytes into the dispatch send buffer (block q)
  std::vector<uint64_t> reply_offset;  // bytes into the reply receive buffer (block q)
  // Dispatch receive / reply send: one block per source, rows x min(k, E_self) records each.
  int64_t recv_capacity_per_source = 0;

  uint64_t dispatch_send_bytes = 0, dispatch_recv_bytes = 0;
  uint64_t reply_send_bytes = 0, reply_recv_bytes = 0;
  uint64_t index_bytes = 0;  // int32 (token, slot) -> record maps and per-peer counts

  uint64_t TotalBytes() const {
    return dispatch_send_bytes + dispatch_recv_bytes + reply_send_bytes + reply_recv_bytes +
           index_bytes;
  }
  // Host bytes of the counted exchange over host memory (worker/expert_exchange.h): records
  // sent (rows_per_round x k, packed by destination), the dispatch receive buffer, replies back
  // (rows_per_round x k), the int32 copy order and destinations, a received entry's local expert,
  // and per peer: its block start, six counts (records each way, and the (records, more rounds)
  // pairs sent and received) and three sizes.
  uint64_t HostExchangeBytes() const;
  // Bytes this rank sends per round, both directions, when every block moves whole.
  uint64_t FixedSendBytes() const { return dispatch_send_bytes + reply_send_bytes; }
  // The same when `copies[q]` records go to each peer q and `received[p]` come from each p.
  uint64_t CountedSendBytes(const std::vector<int64_t>& copies,
                            const std::vector<int64_t>& received) const;

  // INVALID_ARGUMENT when rows_per_round < 1, k is outside 1..n_routed_experts, ep_rank is not
  // a rank of `placement`, or hidden_size is not a multiple of 128 for an FP8 payload.
  static absl::StatusOr<ExchangeLayout> Make(const ModelConfig& config,
                                             const ExpertPlacement& placement, int64_t ep_rank,
                                             int64_t rows_per_round, int64_t k);
};

// Rounds of a step's MoE: every rank runs ceil(max_rows / rows_per_round), max_rows being the
// most rows any rank routes in the step (0 rows: no round).
int64_t ExchangeRounds(const std::vector<int64_t>& rows_per_rank, int64_t rows_per_round);

}  // namespace flotilla
