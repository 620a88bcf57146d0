// The fused w1/w3 + SwiGLU + act_quant expert kernel on the GPU against the CPU chain
// GemmFp8Fp4 (w1), GemmFp8Fp4 (w3), SwiGlu, ActQuantFp8 (label cuda; skips without a GPU).
//
// Bound: the GEMM partials (grouped_gemm_fp4_cuda_test.cc) and the device expf may move h by a
// bf16 ulp, which can move its FP8 code by one step (2^-3 relative at most for E4M3's 3
// mantissa bits) or, near zero, by a subnormal step of the group's scale; so each dequantised
// GPU value is held to |q·s - h_cpu| <= 2^-3·|h_cpu| + s_cpu·2^-8, and a group that is not
// finite on the CPU must be NaN codes with scale 0xFF on the GPU too.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "kernels/cuda/expert_gate_up.h"
#include "kernels/ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace flotilla::kernels::cuda {
namespace {

using testing::HaveGpu;

using testing::Upload;

struct Case {
  std::vector<int32_t> offsets;
  int64_t inter = 256, hidden = 256;
  std::vector<fp8> x;
  std::vector<e8m0> x_scale;
  std::vector<uint8_t> w1, w3;
  std::vector<e8m0> w1_scale, w3_scale;
  std::vector<float> row_weight;  // empty: none
  int64_t rows() const { return offsets.back(); }
  int64_t experts() const { return int64_t(offsets.size()) - 1; }
};

Case Make(std::vector<int32_t> sizes, bool weights, int scale_base, uint32_t seed,
          int64_t inter = 256, int64_t hidden = 256) {
  std::mt19937 rng(seed);
  Case c;
  c.inter = inter;
  c.hidden = hidden;
  c.offsets = {0};
  for (int32_t s : sizes) c.offsets.push_back(c.offsets.back() + s);
  c.x.resize(c.rows() * c.hidden);
  for (auto& v : c.x) do v = fp8(rng()); while ((v & 0x7f) == 0x7f);
  c.x_scale.assign(c.rows() * c.hidden / 128, e8m0(120));
  const int64_t wn = c.experts() * c.inter * c.hidden;
  for (auto* w : {&c.w1, &c.w3}) {
    w->resize(wn / 2);
    for (auto& b : *w) b = uint8_t(rng());
  }
  for (auto* s : {&c.w1_scale, &c.w3_scale}) {
    s->resize(wn / 32);
    for (auto& v : *s) v = e8m0(scale_base + int(rng() % 4));
  }
  if (weights) {
    c.row_weight.resize(c.rows());
    for (auto& v : c.row_weight) v = 0.05f + float(rng() % 1000) / 1000.0f;
  }
  return c;
}

void Check(const Case& c) {
  const int64_t rows = c.rows(), inter = c.inter, hidden = c.hidden, groups = inter / 128;
  ExpertGateUpParams g;
  g.x = Upload(c.x);
  g.x_scale = Upload(c.x_scale);
  g.w1 = Upload(c.w1);
  g.w1_scale = Upload(c.w1_scale);
  g.w3 = Upload(c.w3);
  g.w3_scale = Upload(c.w3_scale);
  g.group_offsets = Upload(c.offsets);
  g.row_weight = c.row_weight.empty() ? nullptr : Upload(c.row_weight);
  g.h = Upload(std::vector<fp8>(std::max<int64_t>(rows, 1) * inter, 0xAA));
  g.h_scale = Upload(std::vector<e8m0>(std::max<int64_t>(rows, 1) * groups, 0xAA));
  g.inter = inter;
  g.hidden = hidden;
  g.num_experts = c.experts();
  ASSERT_EQ(CheckExpertGateUp(g), nullptr);
  ASSERT_EQ(LaunchExpertGateUp(g, nullptr), 0);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<fp8> q(rows * inter);
  std::vector<e8m0> s(rows * groups);
  ASSERT_EQ(cudaMemcpy(q.data(), g.h, q.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(s.data(), g.h_scale, s.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  for (const void* p : {(const void*)g.x, (const void*)g.x_scale, (const void*)g.w1,
                        (const void*)g.w1_scale, (const void*)g.w3, (const void*)g.w3_scale,
                        (const void*)g.group_offsets, (const void*)g.row_weight, (const void*)g.h,
                        (const void*)g.h_scale}) {
    cudaFree(const_cast<void*>(p));
  }

  for (int64_t e = 0; e < c.experts(); ++e) {
    const int64_t r0 = c.offsets[e], m = c.offsets[e + 1] - r0;
    if (m == 0) continue;
    std::vector<bf16> gate(m * inter), up(m * inter), h(m * inter);
    for (int mat = 0; mat < 2; ++mat) {
      GemmFp8Fp4Params p;
      p.a = c.x.data() + r0 * hidden;
      p.a_scale = c.x_scale.data() + r0 * hidden / 128;
      p.w = (mat ? c.w3 : c.w1).data() + e * inter * hidden / 2;
      p.w_scale = (mat ? c.w3_scale : c.w1_scale).data() + e * inter * hidden / 32;
      p.c = mat ? up.data() : gate.data();
      p.ldc = inter;
      p.m = m;
      p.n = inter;
      p.k = hidden;
      GemmFp8Fp4(p);
    }
    SwiGluParams sp;
    sp.gate = gate.data();
    sp.up = up.data();
    sp.ld_in = inter;
    sp.row_weight = c.row_weight.empty() ? nullptr : c.row_weight.data() + r0;
    sp.m = m;
    sp.inter = inter;
    sp.out = h.data();
    sp.ld_out = inter;
    SwiGlu(sp);
    std::vector<fp8> q_cpu(m * inter);
    std::vector<e8m0> s_cpu(m * groups);
    ActQuantParams ap;
    ap.x = h.data();
    ap.ldx = inter;
    ap.m = m;
    ap.k = inter;
    ap.q = q_cpu.data();
    ap.scale = s_cpu.data();
    ActQuantFp8(ap);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < inter; ++j) {
        const e8m0 sc = s_cpu[i * groups + j / 128], sg = s[(r0 + i) * groups + j / 128];
        if (sc == 0xff) {
          ASSERT_EQ(sg, 0xff) << "expert " << e << " row " << i << " group " << j / 128;
          ASSERT_EQ(q[(r0 + i) * inter + j] & 0x7f, 0x7f);
          continue;
        }
        const double want = Bf16ToF32(h[i * inter + j]);
        const double got = double(Fp8ToF32(q[(r0 + i) * inter + j])) * E8m0ToF32(sg);
        const double bound = std::ldexp(std::fabs(want), -3) + std::ldexp(double(E8m0ToF32(sc)), -8);
        ASSERT_LE(std::fabs(got - want), bound)
            << "expert " << e << " row " << i << " col " << j << ": gpu " << got << " cpu " << want;
      }
    }
  }
}

TEST(ExpertGateUpCuda, RaggedGroupsWithRoutingWeights) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  Check(Make({0, 1, 31, 33, 0, 70}, true, 118, 1));
}

TEST(ExpertGateUpCuda, SharedExpertWithoutWeightsAndClampedGates) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  // Larger weight scales push |gate| and |up| past the SwiGLU limit of 10.
  Check(Make({40}, false, 126, 2));
}

TEST(ExpertGateUpCuda, V4FlashWidths) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  // hidden 4096 -> inter 2048: 16 quantisation groups per row, decode-sized groups.
  Check(Make({5, 12, 0, 1}, true, 112, 4, 2048, 4096));
}

TEST(ExpertGateUpCuda, NanActivationPoisonsItsGroups) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  Case c = Make({6}, true, 118, 6);
  c.x[2 * c.hidden + 17] = 0x7f;  // row 2: every gate and up value NaN
  Check(c);
}

}  // namespace
}  // namespace flotilla::kernels::cuda
