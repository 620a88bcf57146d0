// What one step costs one worker at the least (docs/gpu-model.md, docs/perf.md): the bytes it
// must read from device memory and the floating-point operations it must do, from the shard plan
// (weights) and the packed KV layout (spec §8.2). The roofline time of the step is
// max(bytes / bandwidth, FLOPs / peak); benchmarks print their measured time against it.
//
// Counted, and the assumptions:
//  * every weight a step uses is read once per step; lookups (embed.weight, tid2eid) read only
//    the rows of the step's tokens;
//  * a routed expert is read when any token of the expert-parallel group picks it, with experts
//    picked uniformly: P(read) = 1 - (1 - k/E)^tokens, and a rank's experts receive
//    tokens x k x E_local / E rows in expectation;
//  * KV is read once per sequence per layer for the step (one KV head serves every query head of
//    the rank): the window, the compressed entries attended (CSA: the top-k, HCA: all) and, in
//    CSA layers, every indexer key;
//  * FLOPs: 2 x rows x cols per weight matrix per token that passes it (packed FP4 counts two
//    values a byte; the head only for the sampled row of each sequence; a TP rank's shared
//    expert only for its slice of the tokens), attention 4 x head_dim per (head, key), the
//    indexer 2 x index_head_dim per (indexer head, key);
//  * activations, the hyper-connection stream and the exchange are not counted (small beside
//    the weights at decode; the exchange is the network's, reported apart).
#pragma once

#include <cstdint>

#include "common/model_config.h"
#include "sharding/shard_plan.h"

namespace flotilla {

struct StepShape {
  int64_t sequences = 1;       // of this rank's DP group in the step
  int64_t tokens_per_seq = 1;  // 1: decode; a prefill chunk's length otherwise
  int64_t context = 0;         // positions each sequence holds before the step
  int64_t ep_tokens = -1;      // tokens entering the MoE over the whole EP group; -1: this
                               // group's tokens x the number of DP groups
  bool mtp = false;            // the MTP layers run too
};

struct StepCost {
  double dense_bytes = 0;   // non-expert weights (lookups: rows read)
  double expert_bytes = 0;  // routed experts, expected
  double kv_bytes = 0;
  double linear_flops = 0;  // dense weights and the head
  double expert_flops = 0;  // routed experts, expected
  double attention_flops = 0;
  double indexer_flops = 0;

  double Bytes() const { return dense_bytes + expert_bytes + kv_bytes; }
  double Flops() const { return linear_flops + expert_flops + attention_flops + indexer_flops; }
  // The roofline time in seconds: bytes at `bandwidth` B/s or FLOPs at `peak` FLOP/s.
  double Seconds(double bandwidth, double peak) const;
};

// The cost to `rank` of a step of `shape` (rank must hold its tensor list: plan.Rank(r, true)).
StepCost EstimateStepCost(const ShardPlan& plan, const RankPlan& rank, const StepShape& shape);

}  // namespace flotilla
