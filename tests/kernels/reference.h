// Independent plain references for the kernel tests, written from the spec and the contract in
// kernels/ops.h. Number formats are decoded from their definitions and rounded by exhaustive
// nearest search; arithmetic is double unless the contract fixes an f32 step that decides a
// discrete outcome (a scale exponent, a rounded angle), which is then reproduced exactly.
#pragma once

#include <cstdint>
#include <vector>

namespace flotilla::kernels::ref {

// ---------------------------------------------------------------- formats (spec §2.1)
double E4m3(uint8_t code);  // NaN for 0x7f / 0xff
uint8_t ToE4m3(double x);   // clamp to ±448, nearest, ties to the even code
double E2m1(uint8_t nibble);
uint8_t ToE2m1(double x);  // clamp to ±6, nearest, ties to the even code
double Bf16(uint16_t bits);
uint16_t ToBf16(double x);  // nearest, ties to even; NaN -> 0x7fc0
double E8m0(uint8_t bits);  // 2^(bits - 127), NaN for 0xff
int CeilLog2(double r);     // r > 0

// UE8M0 scale byte per §2.3 (f32 product amax * f32(1/448), amax floored at 1e-4f).
uint8_t Fp8ScaleByte(double amax);
// Per §2.5 (f32(1/6), floor 6 * 2^-126).
uint8_t Fp4ScaleByte(double amax);

// ---------------------------------------------------------------- quantisation
void ActQuant(const uint16_t* x, int64_t ldx, int64_t m, int64_t k, int64_t block, uint8_t* q,
              uint8_t* scale);
void Fp8Simulate(uint16_t* x, int64_t rows, int64_t ld, int64_t n, int64_t block);
void Fp4Simulate(uint16_t* x, int64_t rows, int64_t ld, int64_t n, int64_t block);

// ---------------------------------------------------------------- GEMMs: exact sums in double
// out[i * n + j] and the sum of |terms| (for error bounds).
void GemmFp8(const uint8_t* a, const uint8_t* a_scale, const uint8_t* w, const uint8_t* w_scale,
             const float* w_scale_f32, int64_t m, int64_t n, int64_t k, std::vector<double>* out,
             std::vector<double>* abs_sum);
void GemmFp8Fp4(const uint8_t* a, const uint8_t* a_scale, const uint8_t* w, const uint8_t* w_scale,
                int64_t m, int64_t n, int64_t k, std::vector<double>* out,
                std::vector<double>* abs_sum);
// a, w given as doubles (already decoded from bf16 / f32).
void Dense(const std::vector<double>& a, const std::vector<double>& w, int64_t m, int64_t n,
           int64_t k, std::vector<double>* out, std::vector<double>* abs_sum);

// ---------------------------------------------------------------- hyper-connections
// Sinkhorn split in double (spec §4.3 step 4).
void SinkhornSplit(const double* mix, const double* scale, const double* base, int hc, int iters,
                   double eps, double* pre, double* post, double* comb);

}  // namespace flotilla::kernels::ref
