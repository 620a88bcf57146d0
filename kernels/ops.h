// The op library of the forward pass (spec §2–§9): one list of ops, each a function taking a
// small Params struct. The CPU backend (kernels/cpu/) implements it; tests/kernels/ holds it
// against plain double-precision references.
//
// Contracts shared by every op:
// * Row-major tensors; `ld*` is the distance in elements between consecutive rows.
// * Determinism: every output element is produced by one fixed sequence of f32 operations that
//   does not depend on M, on which other rows share the call, on the thread count or on the
//   SIMD path (the scalar fallback reproduces the vector lane order bit for bit). This is what
//   makes chunked prefill, batching and decode bitwise equal at the model level.
// * Canonical f32 dot product / sum over n elements ("lane order"): 8 partial sums
//   s[l] = fma-chain over k ≡ l (mod 8) in ascending k (fused multiply-add), then
//   ((s0+s4)+(s2+s6)) + ((s1+s5)+(s3+s7)). A tail shorter than 8 goes into lanes 0.. in order.
// * Multithreaded internally (OpenMP) over independent outputs; no allocation on hot paths
//   beyond per-call scratch.
// * Dependency-free (no absl, MPI, gRPC): bad shapes are programmer errors checked by callers.
// * e^x, sin/cos, the sigmoid and the router's softplus are common/hd_math.h's: the same bits on
//   the host and on a CUDA device (attention uses the host expf: its GPU version is held to a
//   tolerance).
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace flotilla::kernels {

// ---------------------------------------------------------------- quantisation (§2.3, §2.6)

// act_quant: per row and per group of `block` consecutive elements: amax = max(|x|, 1e-4),
// s = 2^ceil(log2(amax * f32(1/448))), q = e4m3(clamp(x / s, ±448)). K % block == 0.
struct ActQuantParams {
  const bf16* x = nullptr;  // [m, k], row stride ldx
  int64_t ldx = 0;
  int64_t m = 0, k = 0;
  int64_t block = 128;
  fp8* q = nullptr;       // [m, k], dense
  e8m0* scale = nullptr;  // [m, k / block]
};
void ActQuantFp8(const ActQuantParams& p);

// In-place QAT round trips on bf16 rows, applied to elements [0, n) of each row:
// FP8: per `block` (64) group, scale as act_quant, y = bf16(f32(e4m3(clamp(x/s, ±448))) * s).
// FP4: per `block` (32) group, amax = max(max|x|, 6*2^-126), s = 2^ceil(log2(amax*f32(1/6))),
//      y = bf16(e2m1(clamp(x/s, ±6)) * s).
void Fp8SimulateInPlace(bf16* x, int64_t rows, int64_t ld, int64_t n, int64_t block);
void Fp4SimulateInPlace(bf16* x, int64_t rows, int64_t ld, int64_t n, int64_t block);

// ---------------------------------------------------------------- GEMMs (§2.4)

// C[m, n] = bf16( Σ_kb P(m, n, kb) * sa[m, kb] * sw[n/128, kb] ), P = the 128-wide f32 dot of
// the decoded FP8 values in lane order, the second-level f32 accumulator summed in kb order.
// Exactly one of w_scale / w_scale_f32 is set (UE8M0 in official checkpoints; f32 block scales
// in the Base checkpoint's FP8 experts). k % 128 == 0; n need not be a multiple of 128.
struct GemmFp8Params {
  const fp8* a = nullptr;         // [m, k] dense
  const e8m0* a_scale = nullptr;  // [m, k/128]
  const fp8* w = nullptr;         // [n, k] dense
  const e8m0* w_scale = nullptr;  // [ceil(n/128), k/128]
  const float* w_scale_f32 = nullptr;
  bf16* c = nullptr;  // [m, n], row stride ldc
  int64_t ldc = 0;
  int64_t m = 0, n = 0, k = 0;
};
void GemmFp8(const GemmFp8Params& p);

// FP8 activations x packed FP4 (E2M1) weights: per 32-wide K slice, P = the exact dot of the
// decoded values rounded once to f32 (round to nearest even; the exact dot is a multiple of 2^-10
// below 2^17 in magnitude, so it is computed in integers; a NaN activation code makes P NaN),
// acc = acc + (P * sa[m, k/128]) * sw[n, k/32] in f32 in slice order; bf16 out.
// Byte j of a weight row holds element 2j (low nibble) and 2j+1 (high nibble).
struct GemmFp8Fp4Params {
  const fp8* a = nullptr;         // [m, k]
  const e8m0* a_scale = nullptr;  // [m, k/128]
  const uint8_t* w = nullptr;     // [n, k/2]
  const e8m0* w_scale = nullptr;  // [n, k/32]
  bf16* c = nullptr;              // [m, n], row stride ldc
  int64_t ldc = 0;
  int64_t m = 0, n = 0, k = 0;
};
void GemmFp8Fp4(const GemmFp8Fp4Params& p);

// bf16 x bf16 with f32 accumulation (lane order over all of k), one rounding to bf16 (c) or
// none (c_f32; exactly one of the two is set). W is [n, k] (x · Wᵀ).
struct GemmBf16Params {
  const bf16* a = nullptr;  // [m, k], row stride lda
  int64_t lda = 0;
  const bf16* w = nullptr;  // [n, k], row stride ldw
  int64_t ldw = 0;
  bf16* c = nullptr;  // [m, n], row stride ldc
  float* c_f32 = nullptr;
  int64_t ldc = 0;
  int64_t m = 0, n = 0, k = 0;
};
void GemmBf16(const GemmBf16Params& p);

// True f32 GEMM, c = a · wᵀ (lane order). Inputs may be stored bf16 (upcast exactly) or f32:
// exactly one of a / a_bf16 and one of w / w_bf16 is set.
struct GemmF32Params {
  const float* a = nullptr;
  const bf16* a_bf16 = nullptr;  // [m, k], row stride lda
  int64_t lda = 0;
  const float* w = nullptr;
  const bf16* w_bf16 = nullptr;  // [n, k], row stride ldw
  int64_t ldw = 0;
  float* c = nullptr;  // [m, n], row stride ldc
  int64_t ldc = 0;
  int64_t m = 0, n = 0, k = 0;
};
void GemmF32(const GemmF32Params& p);

// ---------------------------------------------------------------- norms (§4.2, §5.1)

// y = bf16( f32(w) * (x32 * r) ), r = 1/sqrtf(mean(x32²) + eps) (mean = lane-order sum * (1/d)).
// The CPU backend uses the correctly rounded 1/sqrtf where the GPU reference uses rsqrtf.
// y may alias x.
void RmsNorm(const bf16* x, int64_t ldx, const bf16* w, int64_t m, int64_t d, float eps, bf16* y,
             int64_t ldy);

// Unweighted per-head RMS norm in bf16 arithmetic (§5.1 step 4), in place on `rows` vectors of
// `dim` contiguous elements: (a) bf16(q²) (b) bf16(lane-order f32 sum * (1/dim))
// (c) bf16(mean + eps) (d) bf16(1/sqrtf(that)) (e) bf16(q * r).
void HeadRmsNormBf16(bf16* q, int64_t rows, int64_t dim, float eps);

// ---------------------------------------------------------------- RoPE (§5.3)

// f32 inverse frequencies, rope_dim/2 entries: f_i = 1 / powf(base, f32(2i)/rope_dim); with
// yarn, low/high from the beta_fast/beta_slow correction dims (computed in double),
// ramp_i = clamp(f32(i - low) * f32(1/(high - low)), 0, 1), sm = 1 - ramp,
// f_i = (f_i * (1/factor)) * (1 - sm) + f_i * sm.
void RopeFrequencies(int64_t rope_dim, double base, bool yarn, double factor,
                     int64_t original_max_position, double beta_fast, double beta_slow,
                     float* freqs);

// Interleaved-pair rotation of x[.., rope_offset : rope_offset + rope_dim] of every head of every
// token, in place: θ = f32(pos) * f_i, (s, c) = hd::SinCosF(θ), (re, im) <- (re*c - im*s, re*s + im*c) in f32 (no FMA),
// rounded to bf16. inverse: s -> -s.
struct RopeParams {
  bf16* x = nullptr;  // token t, head h starts at x + t*ld + h*head_stride
  int64_t ld = 0;
  int64_t head_stride = 0;
  int64_t num_tokens = 0, num_heads = 0;
  int64_t rope_offset = 0, rope_dim = 0;
  const int64_t* positions = nullptr;  // [num_tokens]
  const float* freqs = nullptr;        // [rope_dim/2]
  bool inverse = false;
};
void ApplyRope(const RopeParams& p);

// ---------------------------------------------------------------- hyper-connections (§4.3/4.4)

// hc_pre for m tokens: v = f32(h) flattened stream-major [hc*d]; r = 1/sqrtf(mean(v²) + eps);
// mix = (fn · v) * r ((2+hc)*hc values, lane-order dots); split with Sinkhorn (spec §4.3 step 4,
// `iters` normalisations, hd::ExpF, sigmoid hd::SigmoidF); x = bf16(((pre0*h0 + pre1*h1) + pre2*h2) + pre3*h3) with each
// product rounded to f32 on its own.
struct HcPreParams {
  const bf16* h = nullptr;       // [m, hc, d]
  const float* fn = nullptr;     // [(2+hc)*hc, hc*d]
  const float* scale = nullptr;  // [3]
  const float* base = nullptr;   // [(2+hc)*hc]
  int64_t m = 0, hc = 4, d = 0;
  int64_t sinkhorn_iters = 20;
  float norm_eps = 1e-6f;
  float hc_eps = 1e-6f;
  bf16* x = nullptr;      // [m, d]
  float* post = nullptr;  // [m, hc]
  float* comb = nullptr;  // [m, hc, hc]; comb[j][k]: j input stream, k output stream
};
void HcPre(const HcPreParams& p);

// h_out[k] = bf16( (Σ_j comb[j][k]*res[j], summed in j order, products rounded) + post[k]*x ).
// h_out must not alias res.
struct HcPostParams {
  const bf16* x = nullptr;      // [m, d]
  const bf16* res = nullptr;    // [m, hc, d]
  const float* post = nullptr;  // [m, hc]
  const float* comb = nullptr;  // [m, hc, hc]
  int64_t m = 0, hc = 4, d = 0;
  bf16* h_out = nullptr;  // [m, hc, d]
};
void HcPost(const HcPostParams& p);

// hc_head (§4.4): pre[j] = sigmoid(mix[j]*scale[0] + base[j]) + hc_eps; y = bf16(Σ_j pre[j]*h[j]).
struct HcHeadParams {
  const bf16* h = nullptr;       // [m, hc, d]
  const float* fn = nullptr;     // [hc, hc*d]
  const float* scale = nullptr;  // [1]
  const float* base = nullptr;   // [hc]
  int64_t m = 0, hc = 4, d = 0;
  float norm_eps = 1e-6f;
  float hc_eps = 1e-6f;
  bf16* y = nullptr;  // [m, d]
};
void HcHead(const HcHeadParams& p);

// ---------------------------------------------------------------- compressor (§6)

// One compressed entry: per channel c in [0, d), softmax over the n_slots slots of g[s][c]
// (max-subtracted, hd::ExpF, true division by the sum, sum in slot order), then
// out[c] = Σ_s (p_s * k[s][c]) in slot order, each product rounded to f32 on its own.
// Slot s reads k_rows[s][c] and g_rows[s][c]; a slot whose g is -inf weighs exactly 0.
void CompressPool(const float* const* k_rows, const float* const* g_rows, int64_t n_slots,
                  int64_t d, float* out);

// ---------------------------------------------------------------- indexer (§7)

// Walsh–Hadamard rotation of `rows` bf16 vectors of `dim` (power of two) elements, in place:
// f32 butterflies at strides 1, 2, 4, …, dim/2, then * f32(1/sqrt(dim)), one bf16 rounding.
void HadamardRotateBf16(bf16* x, int64_t rows, int64_t dim);

// score[j] = Σ_h bf16( relu(bf16(q_h · key_j)) * w_h ) over num_heads heads, the head sum in f32
// in head order (not rounded: the caller rounds to bf16, after a cross-rank reduction if any).
// Dots are bf16 inputs with f32 lane-order accumulation.
struct IndexerScoreParams {
  const bf16* q = nullptr;     // [num_heads, dim] of one token
  const bf16* w = nullptr;     // [num_heads] per-head weights (already scaled, bf16)
  const bf16* keys = nullptr;  // [n, dim], row stride ldk
  int64_t ldk = 0;
  int64_t n = 0, num_heads = 0, dim = 0;
  float* scores = nullptr;  // [n]
};
void IndexerScores(const IndexerScoreParams& p);

// Indices of the k largest of scores[0, n) in descending order, ties broken by the lower index.
// k <= n.
void TopK(const float* scores, int64_t n, int64_t k, int32_t* idx);

// ---------------------------------------------------------------- attention (§5.5)

// One token, all heads: list of n KV rows (nullptr = empty slot, score -inf); online softmax in
// blocks of 64 list positions; s = (q_h · row) * scale (lane-order f32 dot of bf16 values);
// per block M' = max(M, block max), α = expf(M - M'), p = expf(s - M'), L = L*α + Σp (Σ in list
// order), O = O*α + Σ bf16(p)*row (f32, list order); then L += expf(sink[h] - M) and
// out_h = bf16(O / L). A list whose first row is empty is not allowed.
struct SparseAttentionParams {
  const bf16* q = nullptr;            // [num_heads, dim]
  const bf16* const* rows = nullptr;  // [n] rows of dim bf16 values
  int64_t n = 0;
  const float* sink = nullptr;  // [num_heads]
  int64_t num_heads = 0, dim = 0;
  float scale = 0.0f;   // f32(dim^-0.5)
  bf16* out = nullptr;  // [num_heads, dim]
};
void SparseAttention(const SparseAttentionParams& p);

// ---------------------------------------------------------------- MoE (§9)

// Router for m tokens. score = sqrtf(z > 20 ? z : f32(ln(1 + e^z))) (hd::SqrtSoftplusF). Hash layers (hash_ids set):
// idx = the first top_k columns of the token's tid2eid row; else idx = top_k of score + bias
// (descending, ties to the lower expert id). w = score[idx] / Σ (slot-order f32 sum) * scale.
struct RouterParams {
  const float* logits = nullptr;      // [m, num_experts]
  const float* bias = nullptr;        // [num_experts] (score layers)
  const int64_t* hash_ids = nullptr;  // [m, ld_hash] the tokens' tid2eid rows (hash layers)
  int64_t ld_hash = 0;
  int64_t m = 0, num_experts = 0, top_k = 0;
  float route_scale = 1.0f;
  int32_t* expert_idx = nullptr;  // [m, top_k]
  float* weights = nullptr;       // [m, top_k]
};
void Route(const RouterParams& p);

// SwiGLU with clamps and the routing weight (§9.2): g = min(f32(gate), limit),
// u = clamp(f32(up), -limit, limit), a = (g / (1 + hd::ExpF(-g))) * u, a = row_weight[r] * a (when
// row_weight is set), out = bf16(a).
struct SwiGluParams {
  const bf16* gate = nullptr;  // [m, inter], row stride ld_in
  const bf16* up = nullptr;    // [m, inter], row stride ld_in
  int64_t ld_in = 0;
  const float* row_weight = nullptr;  // [m] or nullptr (shared expert)
  int64_t m = 0, inter = 0;
  float limit = 10.0f;
  bf16* out = nullptr;  // [m, inter], row stride ld_out
  int64_t ld_out = 0;
};
void SwiGlu(const SwiGluParams& p);

// ---------------------------------------------------------------- MoE permutation (§9)

// Groups the n * k assignments of expert_idx [n, k] by expert, for the experts
// [first_expert, first_expert + num_experts): expert e's assignments are
// order[offsets[e] .. offsets[e + 1]), each the flat index t * k + s, in increasing flat index
// (token order). offsets has num_experts + 1 entries, offsets[0] = 0; assignments to other
// experts are left out (offsets[num_experts] counts those kept).
struct MoePermuteParams {
  const int32_t* expert_idx = nullptr;  // [n, k] global expert ids
  int64_t n = 0, k = 0;
  int64_t first_expert = 0, num_experts = 0;
  int64_t* offsets = nullptr;  // [num_experts + 1]
  int32_t* order = nullptr;    // [n * k] (the first offsets[num_experts] are written)
};
void MoePermute(const MoePermuteParams& p);

// Row copies through an index list, rows of row_bytes bytes, strides in bytes:
// Gather: dst row i = src row (index[i] / divisor); Scatter: dst row (index[i] / divisor) =
// src row i. (divisor k turns flat assignment indices into token rows; 1 uses them as is.)
struct RowCopyParams {
  const uint8_t* src = nullptr;
  int64_t ld_src = 0;
  const int32_t* index = nullptr;  // [rows]
  int64_t rows = 0, divisor = 1, row_bytes = 0;
  uint8_t* dst = nullptr;
  int64_t ld_dst = 0;
};
void GatherRows(const RowCopyParams& p);
void ScatterRows(const RowCopyParams& p);

// Combine (§9.3), per token t and channel c: y = Σ over its k routed outputs in increasing expert
// id (ties in slot order) of f32(routed[t*k + s][c]), then + f32(shared[t][c]) when shared is
// set; out = bf16(y), one rounding. k <= 64.
struct MoeCombineParams {
  const int32_t* expert_idx = nullptr;  // [n, k]
  const bf16* routed = nullptr;         // [n * k, d], slot order
  const bf16* shared = nullptr;         // [n, d] or nullptr
  int64_t n = 0, k = 0, d = 0;
  bf16* out = nullptr;  // [n, d]
};
void MoeCombine(const MoeCombineParams& p);

// ---------------------------------------------------------------- packed KV (§8.2)

// Main KV entries: rows of nope + rope bf16 values whose first nope values went through
// Fp8SimulateInPlace (block 64, a shorter last group its own group) <-> entry_bytes each:
// bytes [0, nope) the E4M3 codes of each group at the scale act_quant computes from the group
// (§2.3), then the rope values as bf16 (2 bytes each, little-endian), then ceil(nope / 64)
// UE8M0 scales, then zero padding. For such rows Unpack(Pack(x)) == x bitwise: the QAT rounding
// leaves every group a set of E4M3 values times a power of two. A group holding NaN or inf packs
// as scale 0xFF and unpacks to the NaN the simulation writes.
struct KvPackParams {
  int64_t rows = 0, nope = 0, rope = 0;
  int64_t entry_bytes = 0;  // >= nope + 2 * rope + ceil(nope / 64)
  const bf16* x = nullptr;  // Pack: [rows, nope + rope], row stride ldx
  int64_t ldx = 0;
  uint8_t* entries = nullptr;  // Pack: [rows, entry_bytes]
};
struct KvUnpackParams {
  int64_t rows = 0, nope = 0, rope = 0;
  int64_t entry_bytes = 0;
  const uint8_t* entries = nullptr;  // [rows, entry_bytes]
  bf16* x = nullptr;                 // [rows, nope + rope], row stride ldx
  int64_t ldx = 0;
};
void PackKvEntries(const KvPackParams& p);
void UnpackKvEntries(const KvUnpackParams& p);

// Indexer keys: rows of dim bf16 values that went through Fp4SimulateInPlace (block 32;
// dim % 32 == 0) <-> key_bytes each: dim / 2 bytes of E2M1 codes (byte j: element 2j in the
// low nibble, 2j+1 in the high one) at the FP4 scale of each group, then dim / 32 UE8M0 scales,
// then zero padding. Unpack(Pack(x)) == x bitwise for such rows; NaN groups as above.
void PackIndexerKeys(const KvPackParams& p);      // nope = dim, rope = 0
void UnpackIndexerKeys(const KvUnpackParams& p);  // nope = dim, rope = 0

// ---------------------------------------------------------------- backend info

// Name of the SIMD path in use ("avx2", "scalar"); FLOTILLA_SIMD=scalar forces the fallback.
const char* SimdPath();

}  // namespace flotilla::kernels
