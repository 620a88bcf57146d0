// The step workspace's size, worked by hand for the tiny preset (docs/capacity.md §7 gives the
// buffers) and for V4-Flash's long-context buffers.
#include "sharding/step_workspace.h"

#include "common/synthetic.h"
#include "gtest/gtest.h"
#include "sharding/capacity.h"

namespace flotilla {
namespace {

// tiny: d 256, hc 4, head_dim 128, rope 64, 4 query heads in 4 groups, q/o LoRA 128, 4 indexer
// heads of 128, index_topk 4, 16 experts (K 6) of 128, 1 shared, window 32, ratios 0 4 8 4 | 0.
// Limits: 4 tokens, 2 sequences, 2 logit rows, context 64, indexer blocks of 8 keys.
//   compressed entries read: CSA min(64/4, 4 x 4) = 16, HCA 64/8 = 8 -> 16
//   bf16: streams 4*4*256 = 4096 x5, hidden 1024 x6, MTP streams 4096 x2, q_lora 512,
//         query 2048, kv 512, index query 2048, index weights 16, ring 32*128 = 4096,
//         entries 16*128 = 2048, block keys 8*128 = 1024, attention out 2048, wo_a out 2048,
//         compressed 512, routed 4*6*256 = 6144, expert in/out/shared 1024 x3,
//         gate/up 4*256 = 1024, act 512                     = 62,480 elements = 124,960 B
//   f32:  hc post 16, comb 64, compressor kv/gate 4*256 = 1024 x2, state 8*256 = 2048 x2,
//         pooled 512, pick scores 16, router logits 64, route weights 24 + 6, expert weights 4,
//         head part 2 logit rows x vocab 129,280 = 258,560
//                                                         = 265,410 elements = 1,061,640 B
//   i32:  rows 4 x(8 + 5), picks 16, entry slots 16 + 16 + 1, page ids 64/4 = 16,
//         route idx 30, expert order 24                                   = 171 =     684 B
//   i64:  rows 4 x(2 + 3), expert offsets 17, tid2eid rows 30              =  67 =     536 B
//   sequence records 2 x2 x 32 B                                                 =     128 B
//   FP8 activations (4 rows x max(hc*d = 1024, ...) codes + /128 scales) x3     =  12,384 B
//   packed KV: max(window 32, 16, 4) main entries x 200 B                        =   6,400 B
//                                                                       total  = 1,206,732 B
TEST(StepWorkspace, TinyWorkedByHand) {
  auto c = PresetConfig("tiny");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(MainKvEntryBytes(*c), 200);  // 64 FP8 + 64 x 2 B rope + 1 scale, padded to 8
  StepLimits l;
  l.tokens = 4;
  l.sequences = 2;
  l.logit_rows = 2;
  l.max_context = 64;
  l.indexer_block_keys = 8;
  auto w = MakeStepWorkspaceLayout(*c, l);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->limits.experts_per_token, 6);
  EXPECT_EQ(w->compressed_read, 16);
  EXPECT_EQ(w->compressor_state, 2048);
  EXPECT_EQ(w->entry_slot, 33);
  EXPECT_EQ(w->page_ids, 16);
  EXPECT_EQ(w->act_q, 4096);
  EXPECT_EQ(w->packed, 6400);
  EXPECT_EQ(w->head_part, 2 * 129280);
  EXPECT_EQ(w->head_stage, 0);  // tp 1: nothing to stage for an all-gather
  EXPECT_EQ(w->Bytes(), 1206732u);
}

// Expert parallelism adds the exchange's host buffers. tiny over 4 EP ranks, TP 2, 4 tokens:
// rank 1 routes ceil(4 / 2) = 2 rows a round (under the 128 of exchange_rows) of K 6 copies and
// owns 16 / 4 = 4 experts, so each source sends it at most 2 x min(6, 4) = 8 records of
// 16 + 256 + 2 B padded to 288 B.
//   records sent 2 x 6 x 288 = 3,456 B, received 4 x 8 x 288 = 9,216 B, replies back
//   2 x 6 x 512 = 6,144 B; int32 order and destinations 2 x 12, received local experts 32;
//   int64 block starts 5; u64 counts 6 x 4; size_t sizes 3 x 4
//                                          = 96 + 128 + 40 + 192 + 96 = 552 B
//                                                             exchange total   = 19,368 B
//   staging: received records again in backend memory 9,216 B; replies to 32 received rows
//   x 256 bf16 twice (backend, host) = 32,768 B; their grouped order twice 32 x 4 x 2 = 256 B;
//   the slice's payload rows 2 x 258 = 516 B and routing 12 x (4 + 4) = 96 B; a round's routed
//   rows 2 x 6 x 256 bf16 = 6,144 B; group offsets 17 x 8 = 136 B; the token slice 2 x 256 bf16
//   = 1,024 B and its TP all-gather 2 x 2 x 256 bf16 = 2,048 B
//                                                                    together  = 71,572 B
TEST(StepWorkspace, ExpertExchangeWorkedByHand) {
  auto c = PresetConfig("tiny");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(c->Quantized());
  StepLimits l;
  l.tokens = 4;
  l.sequences = 2;
  l.logit_rows = 2;
  l.max_context = 64;
  l.indexer_block_keys = 8;
  l.tp_size = 2;
  auto one = MakeStepWorkspaceLayout(*c, l);
  ASSERT_TRUE(one.ok()) << one.status();
  l.ep_size = 4;
  l.ep_rank = 1;
  auto w = MakeStepWorkspaceLayout(*c, l);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->exchange.rows_per_round, 2);
  EXPECT_EQ(w->exchange.record_bytes, 288);
  EXPECT_EQ(w->exchange.HostExchangeBytes(), 19368u);
  EXPECT_EQ(w->exchange_replies, 8192);
  EXPECT_EQ(w->Bytes() - one->Bytes(), 71572u);
  l.ep_rank = 4;
  auto bad = MakeStepWorkspaceLayout(*c, l);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("rank 4 of an expert-parallel group of 4"),
            std::string::npos)
      << bad.status();
}

// V4-Flash at 1M tokens of context: what the long-context buffers hold.
TEST(StepWorkspace, FlashLongContextBuffers) {
  ModelConfig c;  // the V4-Flash defaults
  c.compress_ratios.assign(44, 0);
  c.compress_ratios[2] = 4;
  c.compress_ratios[3] = 128;
  StepLimits l;  // 8192 tokens, 256 sequences, blocks of 8192 keys, context 1,048,576
  auto w = MakeStepWorkspaceLayout(c, l);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->limits.max_context, 1048576);
  // CSA: min(1M / 4 = 262,144, 8192 x 512) = 262,144 picks at most; HCA 1M / 128 = 8,192.
  EXPECT_EQ(w->compressed_read, 262144);
  EXPECT_EQ(w->entries, 262144 * 512);
  EXPECT_EQ(w->entry_slot, 262144 + 262144 + 1);
  EXPECT_EQ(w->page_ids, 262144);
  EXPECT_EQ(w->block_keys, 8192 * 128);
  EXPECT_EQ(w->packed, 262144 * 584);
  // HCA state 128 rows of 512 f32 beats CSA's 8 of 1024.
  EXPECT_EQ(w->compressor_state, 65536);
}

TEST(StepWorkspace, BadLimitsAreNamed) {
  ModelConfig c;
  StepLimits l;
  l.tokens = 0;
  auto w = MakeStepWorkspaceLayout(c, l);
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("tokens per step is 0"), std::string::npos);
  l.tokens = 8;
  l.sequences = 9;
  w = MakeStepWorkspaceLayout(c, l);
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("sequences per step (9) exceed tokens per step (8)"),
            std::string::npos)
      << w.status();
}

}  // namespace
}  // namespace flotilla
