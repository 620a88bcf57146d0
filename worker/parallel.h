// Where this process sits in the parallel layout (design.md §2) and the groups it talks to.
#pragma once

#include <cstdint>

#include "sharding/layout.h"
#include "comm/comm.h"

namespace flotilla {

struct Parallel {
  Comm* tp = nullptr;  // this rank's TP group (all ranks must call its collectives); may be null
                       // when tp == 1
  Comm* ep = nullptr;  // every worker rank (MoE dispatch/combine); null in a single process
  int64_t tp_size = 1, tp_rank = 0;
  IndexRange heads, o_groups, index_heads, vocab;  // this rank's slices
  ExpertPlacement placement{1, 1};                 // routed experts over the EP ranks

  // One process holding everything.
  static Parallel Single(const ModelConfig& c) {
    Parallel p;
    p.heads = {0, c.num_attention_heads};
    p.o_groups = {0, c.o_groups};
    p.index_heads = {0, c.index_n_heads};
    p.vocab = {0, c.vocab_size};
    p.placement = ExpertPlacement(c.n_routed_experts, 1);
    return p;
  }
  bool distributed() const { return ep != nullptr && ep->size() > 1; }
};

}  // namespace flotilla
