// Transcendentals that give the same bits on the host and on a CUDA device (FLOTILLA_HD): exp,
// sin/cos, the router's sqrt(softplus) and the sigmoid, for the ops whose CPU and GPU results must
// be bitwise equal (RoPE, the router, Sinkhorn, the compressors' softmax).
//
// How: every function is a fixed sequence of IEEE double operations, each rounded to nearest
// (the DMul/DAdd/DDiv helpers below compile to __dmul_rn/__dadd_rn/__ddiv_rn on the device, so
// nvcc cannot contract them into fused multiply-adds; the host build has -ffp-contract=off), and
// the f32 result is the one rounding of the double value. No libm call is made on either side.
//
// Error (tests/kernels/hd_math_test.cc checks each over dense sweeps against the double std::
// functions): the double value is within 2^-45 relative of the exact function (range reduction
// exact or within 2^-52, polynomial truncation below 2^-52, about 30 roundings of 2^-53), so the
// f32 result is the correctly rounded one unless the exact value lies within 2^-45 relative of a
// midpoint between two floats, and then it is the other neighbour: at most 0.5 + 2^-21 ulp, and
// never more than 1 ulp. sin/cos hold this for |x| <= 2^24 (every f32 position below 2^24 times a
// frequency <= 1); beyond it k * (π/2 part) is no longer exact and the results are not accurate
// (the same bits on both sides still). The softplus takes the log of the rounded 1 + e^z, which
// bounds its double value to 2^-42 relative: its f32 rounding is within 0.5 + 2^-18 ulp.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace flotilla::hd {

// ---- separately rounded double operations (no contraction on either side)
FLOTILLA_HD double DMul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
FLOTILLA_HD double DAdd(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
FLOTILLA_HD double DSub(double a, double b) { return DAdd(a, -b); }
FLOTILLA_HD double DDiv(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}
// Round to the nearest integer, ties to even, for |x| < 2^51: the 1.5 * 2^52 trick, exact.
FLOTILLA_HD double DRint(double x) {
  const double magic = 6755399441055744.0;  // 1.5 * 2^52
  return DSub(DAdd(x, magic), magic);
}
FLOTILLA_HD double DFromBits(uint64_t bits) {
  double d;
  std::memcpy(&d, &bits, 8);
  return d;
}
FLOTILLA_HD uint64_t DToBits(double d) {
  uint64_t u;
  std::memcpy(&u, &d, 8);
  return u;
}
// 2^k for -1022 <= k <= 1023, exact.
FLOTILLA_HD double DPow2(int k) { return DFromBits(uint64_t(int64_t(k) + 1023) << 52); }

// ---- f32 operations that must not contract in code shared by both sides
FLOTILLA_HD float FMul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
FLOTILLA_HD float FAdd(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
FLOTILLA_HD float FSub(float a, float b) { return FAdd(a, -b); }
FLOTILLA_HD float FDiv(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
FLOTILLA_HD float FSqrt(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}
FLOTILLA_HD bool IsNan(float x) { return (F32ToBits(x) & 0x7fffffffu) > 0x7f800000u; }
FLOTILLA_HD bool IsNanD(double x) {
  return (DToBits(x) & ~(uint64_t(1) << 63)) > (uint64_t(0x7ff) << 52);
}

// e^x in double for any double x: x = k ln2 + r, |r| <= ln2/2 (ln2 in two parts; k*kLn2Hi is
// exact for |k| < 2^21), e^r by its Taylor series to r^13 (truncation < 2^-57), times 2^k.
FLOTILLA_HD double ExpD(double x) {
  if (IsNanD(x)) return x;
  if (x > 709.78) return DFromBits(uint64_t(0x7ff) << 52);  // +inf
  if (x < -745.2) return 0.0;
  const double kLog2e = 1.4426950408889634;
  const double kLn2Hi = 6.93147180369123816490e-01;  // 32 significant bits
  const double kLn2Lo = 1.90821492927058770002e-10;
  const double k = DRint(DMul(x, kLog2e));
  const double r = DSub(DSub(x, DMul(k, kLn2Hi)), DMul(k, kLn2Lo));
  // Horner over the Taylor coefficients 1/n! (each a compile-time correctly rounded double).
  double p = 1.0 / 6227020800.0;
  p = DAdd(DMul(p, r), 1.0 / 479001600.0);
  p = DAdd(DMul(p, r), 1.0 / 39916800.0);
  p = DAdd(DMul(p, r), 1.0 / 3628800.0);
  p = DAdd(DMul(p, r), 1.0 / 362880.0);
  p = DAdd(DMul(p, r), 1.0 / 40320.0);
  p = DAdd(DMul(p, r), 1.0 / 5040.0);
  p = DAdd(DMul(p, r), 1.0 / 720.0);
  p = DAdd(DMul(p, r), 1.0 / 120.0);
  p = DAdd(DMul(p, r), 1.0 / 24.0);
  p = DAdd(DMul(p, r), 1.0 / 6.0);
  p = DAdd(DMul(p, r), 0.5);
  p = DAdd(DMul(p, r), 1.0);
  p = DAdd(DMul(p, r), 1.0);
  const int ki = int(k);
  if (ki < -1021) return DMul(DMul(p, DPow2(ki + 600)), DPow2(-600));
  if (ki > 1023) return DMul(DMul(p, DPow2(ki - 1)), 2.0);
  return DMul(p, DPow2(ki));
}

// e^x rounded once to f32.
FLOTILLA_HD float ExpF(float x) { return float(ExpD(double(x))); }

// 1 / (1 + e^-z) rounded once to f32.
FLOTILLA_HD float SigmoidF(float z) { return float(DDiv(1.0, DAdd(1.0, ExpD(-double(z))))); }

// ln(w) for finite w > 0 in double: w = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(s),
// s = (m - 1)/(m + 1), |s| <= 0.1716, the odd series to s^23 (truncation < 2^-60).
FLOTILLA_HD double LogPositiveD(double w) {
  uint64_t bits = DToBits(w);
  int e = int((bits >> 52) & 0x7ff) - 1023;
  if (e == -1023) {  // subnormal: scale up by 2^64 first
    bits = DToBits(DMul(w, DPow2(64)));
    e = int((bits >> 52) & 0x7ff) - 1023 - 64;
  }
  double m = DFromBits((bits & ((uint64_t(1) << 52) - 1)) | (uint64_t(1023) << 52));  // [1, 2)
  if (m > 1.4142135623730951) {
    m = DMul(m, 0.5);
    e += 1;
  }
  const double s = DDiv(DSub(m, 1.0), DAdd(m, 1.0));
  const double s2 = DMul(s, s);
  double p = 1.0 / 23.0;  // Horner in s² over 1/(2j+1), compile-time correctly rounded
  p = DAdd(DMul(p, s2), 1.0 / 21.0);
  p = DAdd(DMul(p, s2), 1.0 / 19.0);
  p = DAdd(DMul(p, s2), 1.0 / 17.0);
  p = DAdd(DMul(p, s2), 1.0 / 15.0);
  p = DAdd(DMul(p, s2), 1.0 / 13.0);
  p = DAdd(DMul(p, s2), 1.0 / 11.0);
  p = DAdd(DMul(p, s2), 1.0 / 9.0);
  p = DAdd(DMul(p, s2), 1.0 / 7.0);
  p = DAdd(DMul(p, s2), 1.0 / 5.0);
  p = DAdd(DMul(p, s2), 1.0 / 3.0);
  p = DAdd(DMul(p, s2), 1.0);
  const double log_m = DMul(DMul(2.0, s), p);
  const double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10;
  return DAdd(DAdd(DMul(double(e), kLn2Hi), log_m), DMul(double(e), kLn2Lo));
}

// ln(1 + u) for u >= 0 in double: the series for u < 2^-10 (1 + u would lose u's low bits),
// else the log of the rounded 1 + u (relative error of 1 + u below 2^-53, of ln(1 + u) below
// 2^-53 / ln(1 + 2^-10) < 2^-42 relative — inside the f32 callers' budget).
FLOTILLA_HD double Log1pNonNegD(double u) {
  if (u < 0.0009765625) {
    // u - u^2/2 + u^3/3 - u^4/4 + u^5/5: truncation below u^6/6 < 2^-62 u.
    double p = 0.2;
    p = DSub(0.25, DMul(u, p));
    p = DSub(1.0 / 3.0, DMul(u, p));
    p = DSub(0.5, DMul(u, p));
    p = DSub(1.0, DMul(u, p));
    return DMul(u, p);
  }
  return LogPositiveD(DAdd(1.0, u));
}

// The router's score (spec §9.1): sqrtf(z > 20 ? z : f32(ln(1 + e^z))), the softplus rounded once
// to f32, then the correctly rounded f32 square root. NaN gives NaN; -inf gives 0.
FLOTILLA_HD float SqrtSoftplusF(float z) {
  if (IsNan(z)) return z;
  if (z > 20.0f) return FSqrt(z);
  return FSqrt(float(Log1pNonNegD(ExpD(double(z)))));
}

// sin and cos of x in double: x = k π/2 + r with π/2 in three parts (the first two of 28 bits, so
// k * part is exact for |k| < 2^25), |r| <= π/4, Taylor series to r^17 / r^18 (truncation below
// 2^-58), then the quadrant. NaN and ±inf give NaN.
FLOTILLA_HD void SinCosD(double x, double* sin_out, double* cos_out) {
  const uint64_t abs_bits = DToBits(x) & ~(uint64_t(1) << 63);
  if (abs_bits >= (uint64_t(0x7ff) << 52)) {
    *sin_out = *cos_out = DFromBits(uint64_t(0x7ff8) << 48);
    return;
  }
  const double kTwoOverPi = 0.63661977236758134308;
  const double kP1 = 1.5707963258028030396;      // π/2 to 28 bits
  const double kP2 = 9.9209357395935171553e-10;  // the next 28 bits
  const double kP3 = 5.7211887261098317968e-18;  // the rest
  const double k = DRint(DMul(x, kTwoOverPi));
  const double r = DSub(DSub(DSub(x, DMul(k, kP1)), DMul(k, kP2)), DMul(k, kP3));
  const double r2 = DMul(r, r);
  // sin r = r - r³/3! + ... - r^15/15! + r^17/17!, cos r = 1 - r²/2! + ... + r^18/18!: Horner in
  // r² over the coefficients (compile-time correctly rounded doubles).
  double s = 1.0 / 355687428096000.0;  // 1/17!
  s = DSub(DMul(s, r2), 1.0 / 1307674368000.0);
  s = DAdd(DMul(s, r2), 1.0 / 6227020800.0);
  s = DSub(DMul(s, r2), 1.0 / 39916800.0);
  s = DAdd(DMul(s, r2), 1.0 / 362880.0);
  s = DSub(DMul(s, r2), 1.0 / 5040.0);
  s = DAdd(DMul(s, r2), 1.0 / 120.0);
  s = DSub(DMul(s, r2), 1.0 / 6.0);
  s = DAdd(DMul(DMul(s, r2), r), r);
  double c = -1.0 / 6402373705728000.0;  // -1/18!
  c = DAdd(DMul(c, r2), 1.0 / 20922789888000.0);
  c = DSub(DMul(c, r2), 1.0 / 87178291200.0);
  c = DAdd(DMul(c, r2), 1.0 / 479001600.0);
  c = DSub(DMul(c, r2), 1.0 / 3628800.0);
  c = DAdd(DMul(c, r2), 1.0 / 40320.0);
  c = DSub(DMul(c, r2), 1.0 / 720.0);
  c = DAdd(DMul(c, r2), 1.0 / 24.0);
  c = DSub(DMul(c, r2), 0.5);
  c = DAdd(DMul(c, r2), 1.0);
  // Quadrant q = k mod 4 (k is an integer-valued double, |k| < 2^52).
  const int64_t ki = int64_t(k);
  const int q = int(ki & 3);
  const double sv = q == 0 ? s : q == 1 ? c : q == 2 ? -s : -c;
  const double cv = q == 0 ? c : q == 1 ? -s : q == 2 ? -c : s;
  *sin_out = sv;
  *cos_out = cv;
}

// sin and cos of an f32 angle, each rounded once to f32.
FLOTILLA_HD void SinCosF(float x, float* sin_out, float* cos_out) {
  double s, c;
  SinCosD(double(x), &s, &c);
  *sin_out = float(s);
  *cos_out = float(c);
}

}  // namespace flotilla::hd
