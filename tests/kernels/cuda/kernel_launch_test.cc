// The host side of the CUDA kernels written for the Backend (label cpu, no GPU needed): every
// launch check's refusals and acceptances, grid sizes and workspace (shared memory) sizes, the
// 16-byte copy choice and the device error messages. Also the Sinkhorn split that the HC kernel
// runs (kernels/cpu/sinkhorn.h) against a plain double implementation of spec §4.3 step 4.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/sinkhorn.h"
#include "kernels/cuda/compressor.h"
#include "kernels/cuda/dense_gemm.h"
#include "kernels/cuda/device_error.h"
#include "kernels/cuda/fill.h"
#include "kernels/cuda/hyper_connection.h"
#include "kernels/cuda/kv_pack.h"
#include "kernels/cuda/model_ops.h"
#include "kernels/cuda/moe.h"
#include "kernels/cuda/moe_permute.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/sampling.h"

namespace flotilla::kernels::cuda {
namespace {

alignas(16) uint8_t g_bytes[256];
template <typename T>
T* Fake() {
  return reinterpret_cast<T*>(g_bytes);
}

TEST(RopeLaunch, ShapesAndRefusals) {
  RopeParams p;
  p.x = Fake<bf16>();
  p.positions = Fake<int64_t>();
  p.freqs = Fake<float>();
  p.num_tokens = 7;
  p.num_heads = 64;
  p.rope_dim = 64;
  p.rope_offset = 448;
  p.head_stride = 512;
  p.ld = 64 * 512;
  EXPECT_EQ(CheckRope(p), nullptr);
  EXPECT_EQ(RopeBlocks(p), 7);  // a block per token
  p.num_heads = 0;
  EXPECT_EQ(RopeBlocks(p), 0);
  p.num_heads = 64;
  p.rope_dim = 63;
  EXPECT_NE(CheckRope(p), nullptr);
  p.rope_dim = 64;
  p.freqs = nullptr;
  EXPECT_NE(CheckRope(p), nullptr);
  p.num_tokens = 0;  // nothing to do: pointers need not be set
  EXPECT_EQ(CheckRope(p), nullptr);
}

TEST(RouteLaunch, ShapesAndRefusals) {
  RouteParams p;
  p.logits = Fake<float>();
  p.bias = Fake<float>();
  p.expert_idx = Fake<int32_t>();
  p.weights = Fake<float>();
  p.m = 3;
  p.num_experts = 256;
  p.top_k = 6;
  EXPECT_EQ(CheckRoute(p), nullptr);
  // score and biased f32, 64 chosen ids, a flag per expert.
  EXPECT_EQ(RouteSharedBytes(p), 256 * 8 + 64 * 4 + 256);
  p.num_experts = 4097;
  EXPECT_NE(CheckRoute(p), nullptr);
  p.num_experts = 256;
  p.top_k = 65;
  EXPECT_NE(CheckRoute(p), nullptr);
  p.top_k = 6;
  p.hash_ids = Fake<int64_t>();  // both set
  EXPECT_NE(CheckRoute(p), nullptr);
  p.bias = nullptr;
  p.ld_hash = 5;  // shorter than top_k
  EXPECT_NE(CheckRoute(p), nullptr);
  p.ld_hash = 6;
  EXPECT_EQ(CheckRoute(p), nullptr);
  EXPECT_LE(RouteSharedBytes(RouteParams{nullptr, nullptr, nullptr, 0, 0, kRouteMaxExperts, 1}),
            48 * 1024);  // the largest still fits the default shared memory
}

TEST(SwiGluLaunch, ShapesAndRefusals) {
  SwiGluParams p;
  p.gate = p.up = Fake<bf16>();
  p.out = Fake<bf16>();
  p.m = 5;
  p.inter = 2048;
  p.ld_in = 4096;
  p.ld_out = 2048;
  EXPECT_EQ(CheckSwiGlu(p), nullptr);
  EXPECT_EQ(SwiGluBlocks(p), 5 * 2048 / 256);
  p.m = int64_t(1) << 30;  // capped: the kernel strides over the rest
  EXPECT_EQ(SwiGluBlocks(p), 65536);
  p.ld_out = 100;
  EXPECT_NE(CheckSwiGlu(p), nullptr);
}

TEST(HyperConnectionLaunch, ShapesAndRefusals) {
  HcPreParams p;
  p.h = Fake<bf16>();
  p.fn = p.scale = p.base = p.post = p.comb = Fake<float>();
  p.x = Fake<bf16>();
  p.m = 3;
  p.d = 4096;
  EXPECT_EQ(CheckHcPre(p), nullptr);
  p.hc = 9;
  EXPECT_NE(CheckHcPre(p), nullptr);
  p.hc = 4;
  p.comb = nullptr;
  EXPECT_NE(CheckHcPre(p), nullptr);
  HcPostParams q;
  q.x = q.res = q.h_out = Fake<bf16>();
  q.post = q.comb = Fake<float>();
  q.m = 3;
  q.d = 4096;
  EXPECT_EQ(CheckHcPost(q), nullptr);
  EXPECT_EQ(HcPostBlocks(q), 3 * 4 * 4096 / 256);
  HcHeadParams h;
  h.h = h.y = Fake<bf16>();
  h.fn = h.scale = h.base = Fake<float>();
  h.m = 1;
  h.d = 0;
  EXPECT_NE(CheckHcHead(h), nullptr);
  h.d = 4096;
  EXPECT_EQ(CheckHcHead(h), nullptr);
}

TEST(CompressPoolLaunch, ShapesAndRefusals) {
  CompressPoolParams p;
  p.kv = p.score = p.out = Fake<float>();
  p.slot_offsets = Fake<int64_t>();
  p.error = Fake<DeviceError>();
  p.state_elements = 1 << 20;
  p.num_entries = 3;
  p.n_slots = 128;
  p.d = 512;
  EXPECT_EQ(CheckCompressPool(p), nullptr);
  EXPECT_EQ(CompressPoolBlocks(p), 3 * 512 / 256);
  p.error = nullptr;  // offsets are checked on the device: the record is required
  EXPECT_NE(CheckCompressPool(p), nullptr);
  p.error = Fake<DeviceError>();
  p.n_slots = 0;
  EXPECT_NE(CheckCompressPool(p), nullptr);
}

TEST(CompressorUpdateLaunch, EntriesAndRefusals) {
  EXPECT_EQ(CompressorEntries(0, 4, 4), 1);  // position 3 completes the first block
  EXPECT_EQ(CompressorEntries(0, 3, 4), 0);
  EXPECT_EQ(CompressorEntries(3, 1, 4), 1);        // the single token at position 3
  EXPECT_EQ(CompressorEntries(5, 12, 4), 3);       // positions 7, 11, 15
  EXPECT_EQ(CompressorEntries(127, 300, 128), 3);  // 127, 255, 383
  EXPECT_EQ(CompressorEntries(0, 0, 4), 0);
  CompressorUpdateParams p;
  p.k = p.g = p.ape = p.state_kv = p.state_score = p.pooled = Fake<float>();
  p.n = 9;
  p.d = 512;
  p.width = 1024;
  p.ratio = 4;
  p.overlap = true;
  EXPECT_EQ(CheckCompressorUpdate(p), nullptr);
  p.overlap = false;  // width must then be d
  EXPECT_NE(CheckCompressorUpdate(p), nullptr);
  p.width = 512;
  EXPECT_EQ(CheckCompressorUpdate(p), nullptr);
  p.pooled = nullptr;  // entries complete in this chunk
  EXPECT_NE(CheckCompressorUpdate(p), nullptr);
  p.n = 3;  // none complete: pooled may be unset
  EXPECT_EQ(CheckCompressorUpdate(p), nullptr);
  p.ratio = 0;
  EXPECT_NE(CheckCompressorUpdate(p), nullptr);
}

TEST(MoePermuteLaunch, ShapesAndRefusals) {
  MoePermuteParams p;
  p.expert_idx = Fake<int32_t>();
  p.offsets = Fake<int64_t>();
  p.order = Fake<int32_t>();
  p.n = 4096;
  p.k = 6;
  p.num_experts = 256;
  EXPECT_EQ(CheckMoePermute(p), nullptr);
  p.num_experts = kMoePermuteMaxExperts + 1;
  EXPECT_NE(CheckMoePermute(p), nullptr);
  p.num_experts = 256;
  p.n = int64_t(1) << 29;  // n * k past int32
  EXPECT_NE(CheckMoePermute(p), nullptr);
  p.n = 0;
  p.order = nullptr;  // nothing to place: only offsets is written
  EXPECT_EQ(CheckMoePermute(p), nullptr);

  RowCopyParams r;
  r.src = Fake<uint8_t>();
  r.dst = Fake<uint8_t>() + 16;
  r.index = Fake<int32_t>();
  r.error = Fake<DeviceError>();
  r.rows = 100;
  r.row_bytes = 8192;
  r.ld_src = r.ld_dst = 8192;
  r.indexed_rows = 10;
  EXPECT_EQ(CheckRowCopy(r), nullptr);
  EXPECT_TRUE(RowCopyVectorized(r));
  EXPECT_EQ(RowCopyBlocks(r), 100);
  r.dst = Fake<uint8_t>() + 8;  // an address not 16-byte aligned: byte copies
  EXPECT_FALSE(RowCopyVectorized(r));
  r.dst = Fake<uint8_t>();
  r.row_bytes = 7;
  r.ld_src = r.ld_dst = 7;
  EXPECT_FALSE(RowCopyVectorized(r));
  r.divisor = 0;
  EXPECT_NE(CheckRowCopy(r), nullptr);
  r.divisor = 6;
  r.ld_dst = 6;  // shorter than a row
  EXPECT_NE(CheckRowCopy(r), nullptr);
  r.ld_dst = 7;
  r.rows = 1 << 20;
  EXPECT_EQ(RowCopyBlocks(r), 65535);  // grid-stride beyond

  MoeCombineParams c;
  c.expert_idx = Fake<int32_t>();
  c.routed = c.out = Fake<bf16>();
  c.n = 4;
  c.k = 6;
  c.d = 4096;
  EXPECT_EQ(CheckMoeCombine(c), nullptr);
  c.k = 65;
  EXPECT_NE(CheckMoeCombine(c), nullptr);
}

TEST(DenseGemmLaunch, ShapesAndRefusals) {
  DenseGemmParams p;
  p.a_bf16 = Fake<bf16>();
  p.w = Fake<float>();
  p.c = Fake<float>();
  p.m = 3;
  p.n = 33;
  p.k = 16384;
  p.lda = p.ldw = 16384;
  p.ldc = 33;
  EXPECT_EQ(CheckDenseGemm(p), nullptr);
  const DenseGemmShape s = DenseGemmLaunchShape(p);
  EXPECT_EQ(s.grid_x, 2u);  // 32 outputs per block
  EXPECT_EQ(s.grid_y, 3u);
  p.a = Fake<float>();  // both a and a_bf16
  EXPECT_NE(CheckDenseGemm(p), nullptr);
  p.a = nullptr;
  p.c_bf16 = Fake<bf16>();  // both outputs
  EXPECT_NE(CheckDenseGemm(p), nullptr);
  p.c_bf16 = nullptr;
  p.m = 65536;  // the backend slices rows; one launch takes at most 65535
  EXPECT_NE(CheckDenseGemm(p), nullptr);
  p.m = 0;
  EXPECT_EQ(DenseGemmLaunchShape(p).grid_x, 0u);
}

TEST(FillLaunch, ShapesAndRefusals) {
  EXPECT_EQ(CheckFill(10, 1), nullptr);
  EXPECT_EQ(CheckFill(10, 8), nullptr);
  EXPECT_NE(CheckFill(10, 3), nullptr);
  EXPECT_NE(CheckFill(-1, 4), nullptr);
  EXPECT_EQ(FillBlocks(257), 2);
  EXPECT_EQ(FillBlocks(0), 0);
}

TEST(KvPackLaunch, ShapesAndRefusals) {
  SimulateParams s;
  s.x = Fake<bf16>();
  s.rows = 10;
  s.ld = 600;
  s.n = 576;
  s.block = 48;
  EXPECT_EQ(CheckSimulate(s), nullptr);
  EXPECT_EQ(SimulateBlocks(s), 1);  // 10 rows x 12 groups, a thread per group
  s.block = 0;
  EXPECT_NE(CheckSimulate(s), nullptr);
  EXPECT_EQ(SimulateBlocks(s), 0);
  s.block = 64;
  s.ld = 500;
  EXPECT_NE(CheckSimulate(s), nullptr);

  EXPECT_EQ(KvEntryUsedBytes(448, 64), 448 + 128 + 7);  // fits V4-Flash's 584-byte entry
  EXPECT_EQ(IndexerKeyUsedBytes(128), 64 + 4);          // the 68-byte key
  KvPackParams p;
  p.x = Fake<bf16>();
  p.entries = Fake<uint8_t>();
  p.rows = 3;
  p.nope = 448;
  p.rope = 64;
  p.entry_bytes = 584;
  p.ldx = 512;
  EXPECT_EQ(CheckKvPack(p), nullptr);
  p.entry_bytes = 582;
  EXPECT_NE(CheckKvPack(p), nullptr);
  p.entry_bytes = 584;
  p.ldx = 511;
  EXPECT_NE(CheckKvPack(p), nullptr);
  KvUnpackParams u;
  u.x = Fake<bf16>();
  u.entries = Fake<uint8_t>();
  u.rows = 3;
  u.nope = 128;
  u.entry_bytes = 68;
  u.ldx = 128;
  EXPECT_EQ(CheckIndexerKeyPack(u), nullptr);
  u.nope = 100;  // not a multiple of 32
  EXPECT_NE(CheckIndexerKeyPack(u), nullptr);
  u.nope = kIndexerKeyMaxDim + 32;
  EXPECT_NE(CheckIndexerKeyPack(u), nullptr);
  u.nope = 128;
  u.rope = 2;
  EXPECT_NE(CheckIndexerKeyPack(u), nullptr);
  EXPECT_EQ(KvPackBlocks(100000), 65535);
}

TEST(DeviceErrorMessage, NamesOpPositionAndRange) {
  DeviceError e;
  EXPECT_EQ(DeviceErrorMessage(e), "");
  e.code = kDeviceErrorGatherIndex;
  e.position = 3;
  e.value = 17;
  e.limit = 10;
  EXPECT_EQ(DeviceErrorMessage(e),
            "GatherRows: index[3] names source row 17; expected rows 0 to 9 (found on the device; "
            "the row was not copied)");
  e.code = kDeviceErrorSlotOffset;
  const std::string m = DeviceErrorMessage(e);
  EXPECT_NE(m.find("CompressPool: slot_offsets[3] = 17; expected 0 to 9"), std::string::npos) << m;
  e.code = kDeviceErrorScatterIndex;
  EXPECT_NE(DeviceErrorMessage(e).find("ScatterRows: index[3]"), std::string::npos);
}

TEST(SampleLaunch, ShapesKeysAndAHandWorkedPick) {
  SampleParams p;
  p.logits = Fake<float>();
  p.row_params = Fake<SampleRow>();
  p.workspace = Fake<uint64_t>();
  p.tokens = Fake<int32_t>();
  p.rows = 4;
  p.vocab = 129280;
  p.ld = 129280;
  EXPECT_EQ(CheckSample(p), nullptr);
  EXPECT_EQ(SampleWorkspaceElements(129280), 2 * 131072);
  EXPECT_EQ(SampleWorkspaceElements(1), 2);
  p.vocab = kSampleMaxVocab + 1;
  EXPECT_NE(CheckSample(p), nullptr);
  p.vocab = 10;
  p.ld = 9;
  EXPECT_NE(CheckSample(p), nullptr);

  // Keys: ascending order is descending logit order, ties (and -0 / +0) to the lower id.
  EXPECT_LT(SamplePackedKey(3.0f, 9), SamplePackedKey(2.0f, 0));
  EXPECT_LT(SamplePackedKey(1.0f, 1), SamplePackedKey(1.0f, 2));
  EXPECT_LT(SamplePackedKey(-0.0f, 1), SamplePackedKey(0.0f, 2));
  EXPECT_LT(SamplePackedKey(0.0f, 1), SamplePackedKey(-0.0f, 2));
  EXPECT_LT(SamplePackedKey(-1.0f, 0), SamplePackedKey(-2.0f, 0));
  EXPECT_LT(SamplePackedKey(1e30f, 5), SamplePackedKey(-INFINITY, 0));

  // Logits 2, 1, 0 at T = 1: p = 1, e^-1, e^-2 (sum 1.5032). top-p 0.7 keeps two (masses
  // 0.665, 0.910); kept 1.3679: u = 0.5 · kept = 0.684 < 1 picks id 7, u = 0.8 · kept = 1.094
  // picks id 3.
  const uint64_t cand[3] = {SamplePackedKey(2.0f, 7), SamplePackedKey(1.0f, 3),
                            SamplePackedKey(0.0f, 5)};
  const double prob[3] = {1.0, std::exp(-1.0), std::exp(-2.0)};
  EXPECT_EQ(SampleDistribute(cand, prob, 3, 3, 0.7f, 0.5), 7);
  EXPECT_EQ(SampleDistribute(cand, prob, 3, 3, 0.7f, 0.8), 3);
  EXPECT_EQ(SampleDistribute(cand, prob, 3, 3, 1.0f, 0.95), 5);  // no cut: all three
  EXPECT_EQ(SampleDistribute(cand, prob, 1, 3, 1.0f, 0.99), 7);  // top-k 1
  // Only two of the three top-k candidates known (the third pruned) and no top-p cut: a draw
  // inside their mass decides; the prefix cut at top-p 0.7 decides too.
  EXPECT_EQ(SampleDistribute(cand, prob, 3, 2, 1.0f, 0.9), 3);
  EXPECT_EQ(SampleDistribute(cand, prob, 3, 2, 0.7f, 0.2), 7);
}

// Spec §4.3 step 4 in double: pre = σ(mix·s0 + b) + eps, post = 2σ(·), comb = row softmax + eps,
// then alternating column / row normalisations. The f32 split must agree to 1e-5 relative.
TEST(SinkhornSplit, MatchesADoubleReference) {
  const int hc = 4, n_mix = (2 + hc) * hc;
  std::vector<float> mix(n_mix), base(n_mix);
  const float scale[3] = {0.7f, 1.3f, 2.1f};
  for (int i = 0; i < n_mix; ++i) {
    mix[i] = std::sin(1.7f * float(i)) * 3.0f;
    base[i] = std::cos(0.3f * float(i));
  }
  const float eps = 1e-6f;
  for (int iters : {0, 1, 20}) {
    std::vector<float> pre(hc), post(hc), comb(hc * hc);
    SinkhornSplit(mix.data(), scale, base.data(), hc, iters, eps, pre.data(), post.data(),
                  comb.data());
    std::vector<double> c(hc * hc);
    for (int j = 0; j < hc; ++j) {
      const double p = 1.0 / (1.0 + std::exp(-(double(mix[j]) * scale[0] + base[j]))) + eps;
      const double q = 2.0 / (1.0 + std::exp(-(double(mix[hc + j]) * scale[1] + base[hc + j])));
      EXPECT_NEAR(pre[j], p, 1e-5 * std::fabs(p));
      EXPECT_NEAR(post[j], q, 1e-5 * std::fabs(q));
      double mx = -1e300, sum = 0;
      for (int k = 0; k < hc; ++k) {
        c[j * hc + k] = double(mix[2 * hc + j * hc + k]) * scale[2] + base[2 * hc + j * hc + k];
        mx = std::max(mx, c[j * hc + k]);
      }
      for (int k = 0; k < hc; ++k) sum += c[j * hc + k] = std::exp(c[j * hc + k] - mx);
      for (int k = 0; k < hc; ++k) c[j * hc + k] = c[j * hc + k] / sum + eps;
    }
    for (int it = 0; it < iters; ++it) {
      if (it > 0) {
        for (int j = 0; j < hc; ++j) {
          double s = 0;
          for (int k = 0; k < hc; ++k) s += c[j * hc + k];
          for (int k = 0; k < hc; ++k) c[j * hc + k] /= s + eps;
        }
      }
      for (int k = 0; k < hc; ++k) {
        double s = 0;
        for (int j = 0; j < hc; ++j) s += c[j * hc + k];
        for (int j = 0; j < hc; ++j) c[j * hc + k] /= s + eps;
      }
    }
    for (int i = 0; i < hc * hc; ++i) {
      EXPECT_NEAR(comb[i], c[i], 1e-5 * std::fabs(c[i])) << "iters " << iters << " at " << i;
    }
  }
}

TEST(ModelOpsLaunch, ShapesAndRefusals) {
  EmbedRowsParams e;
  EXPECT_EQ(CheckEmbedRows(e), nullptr);  // nothing to do
  e.n = 3;
  e.d = 8;
  e.num_rows = 4;
  EXPECT_NE(CheckEmbedRows(e), nullptr);  // no pointers
  e.table = Fake<bf16>();
  e.tokens = Fake<int32_t>();
  e.out = Fake<bf16>();
  EXPECT_EQ(CheckEmbedRows(e), nullptr);
  e.first = -1;
  EXPECT_NE(CheckEmbedRows(e), nullptr);
  RepeatRowsParams r;
  r.n = 2;
  r.d = 4;
  r.copies = 0;
  EXPECT_NE(CheckRepeatRows(r), nullptr);
  r.copies = 4;
  EXPECT_NE(CheckRepeatRows(r), nullptr);
  r.x = Fake<bf16>();
  r.out = Fake<bf16>();
  EXPECT_EQ(CheckRepeatRows(r), nullptr);
  BroadcastAddParams b;
  b.n = 1;
  b.d = 1;
  b.a = Fake<bf16>();
  b.out = Fake<bf16>();
  EXPECT_NE(CheckBroadcastAdd(b), nullptr);
  b.b = Fake<bf16>();
  EXPECT_EQ(CheckBroadcastAdd(b), nullptr);
  EXPECT_EQ(CheckConvert(nullptr, nullptr, 0), nullptr);
  EXPECT_NE(CheckConvert(Fake<float>(), nullptr, 5), nullptr);
  EXPECT_NE(CheckConvert(Fake<float>(), Fake<bf16>(), -1), nullptr);
  InterleaveRowsParams il;
  il.blocks = 2;
  il.rows = 3;
  il.row_bytes = 5;
  EXPECT_NE(CheckInterleaveRows(il), nullptr);
  il.src = Fake<uint8_t>();
  il.dst = Fake<uint8_t>();
  EXPECT_EQ(CheckInterleaveRows(il), nullptr);
  // Grid-stride grids: at least one block, at most 65536.
  EXPECT_EQ(ModelOpBlocks(0), 1);
  EXPECT_EQ(ModelOpBlocks(kModelOpThreads + 1), 2);
  EXPECT_EQ(ModelOpBlocks(int64_t(1) << 40), 65536);
}

}  // namespace
}  // namespace flotilla::kernels::cuda
