#include "tests/kernels/reference.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace flotilla::kernels::ref {
namespace {

const double kNan = std::numeric_limits<double>::quiet_NaN();

// Nearest code among `count` non-negative magnitudes value(c), ties to the even code.
template <class F>
uint8_t NearestCode(double a, int count, F value) {
  int best = 0;
  double best_err = std::fabs(value(0) - a);
  for (int c = 1; c < count; ++c) {
    const double err = std::fabs(value(c) - a);
    if (err < best_err || (err == best_err && (c & 1) == 0 && (best & 1) == 1)) {
      best = c;
      best_err = err;
    }
  }
  return static_cast<uint8_t>(best);
}

}  // namespace

double E4m3(uint8_t code) {
  const int s = code >> 7, e = (code >> 3) & 0xf, m = code & 7;
  if (e == 15 && m == 7) return kNan;
  const double mag = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return s ? -mag : mag;
}

uint8_t ToE4m3(double x) {
  if (std::isnan(x)) return 0x7f;
  const uint8_t sign = std::signbit(x) ? 0x80 : 0;
  const double a = std::min(std::fabs(x), 448.0);
  return sign | NearestCode(a, 0x7f, [](int c) { return E4m3(static_cast<uint8_t>(c)); });
}

double E2m1(uint8_t nibble) {
  const int s = (nibble >> 3) & 1, e = (nibble >> 1) & 3, m = nibble & 1;
  const double mag = e == 0 ? m * 0.5 : std::ldexp(1.0 + m / 2.0, e - 1);
  return s ? -mag : mag;
}

uint8_t ToE2m1(double x) {
  const uint8_t sign = std::signbit(x) ? 8 : 0;
  const double a = std::min(std::fabs(x), 6.0);
  return sign | NearestCode(a, 8, [](int c) { return E2m1(static_cast<uint8_t>(c)); });
}

double Bf16(uint16_t bits) {
  const int s = bits >> 15, e = (bits >> 7) & 0xff, m = bits & 0x7f;
  double mag;
  if (e == 0xff) {
    mag = m ? kNan : std::numeric_limits<double>::infinity();
  } else if (e == 0) {
    mag = std::ldexp(m / 128.0, -126);
  } else {
    mag = std::ldexp(1.0 + m / 128.0, e - 127);
  }
  return s ? -mag : mag;
}

uint16_t ToBf16(double x) {
  if (std::isnan(x)) return 0x7fc0;
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double a = std::fabs(x);
  double r;
  if (a < std::ldexp(1.0, -126)) {
    r = std::ldexp(std::nearbyint(std::ldexp(a, 133)), -133);  // subnormal quantum 2^-133
  } else {
    int e;
    const double f = std::frexp(a, &e);  // a = f * 2^e, f in [0.5, 1)
    r = std::ldexp(std::nearbyint(std::ldexp(f, 8)), e - 8);
  }
  if (r >= std::ldexp(1.0, 128)) return sign | 0x7f80;
  // r is a bf16 value: its f32 bits end in 16 zero bits.
  const float f = static_cast<float>(r);
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return sign | static_cast<uint16_t>(u >> 16);
}

double E8m0(uint8_t bits) { return bits == 0xff ? kNan : std::ldexp(1.0, bits - 127); }

int CeilLog2(double r) {
  int e;
  const double f = std::frexp(r, &e);  // r = f * 2^e
  return f == 0.5 ? e - 1 : e;
}

uint8_t Fp8ScaleByte(double amax) {
  const float c = static_cast<float>(1.0 / 448.0);
  const float r = static_cast<float>(std::max(amax, static_cast<double>(1e-4f)) * c);
  return static_cast<uint8_t>(CeilLog2(r) + 127);
}

uint8_t Fp4ScaleByte(double amax) {
  const float c = static_cast<float>(1.0 / 6.0);
  const float r = static_cast<float>(std::max(amax, std::ldexp(6.0, -126)) * c);
  return static_cast<uint8_t>(CeilLog2(r) + 127);
}

void ActQuant(const uint16_t* x, int64_t ldx, int64_t m, int64_t k, int64_t block, uint8_t* q,
              uint8_t* scale) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t g = 0; g < k / block; ++g) {
      const uint16_t* xg = x + i * ldx + g * block;
      double amax = 0;
      bool finite = true;
      for (int64_t j = 0; j < block; ++j) {
        const double v = Bf16(xg[j]);
        finite = finite && std::isfinite(v);
        amax = std::max(amax, std::fabs(v));
      }
      uint8_t* qg = q + i * k + g * block;
      if (!finite) {
        scale[i * (k / block) + g] = 0xff;
        std::fill(qg, qg + block, 0x7f);
        continue;
      }
      const uint8_t sb = Fp8ScaleByte(amax);
      scale[i * (k / block) + g] = sb;
      for (int64_t j = 0; j < block; ++j) qg[j] = ToE4m3(Bf16(xg[j]) / E8m0(sb));
    }
  }
}

namespace {

template <class ScaleByte, class Encode, class Decode>
void Simulate(uint16_t* x, int64_t rows, int64_t ld, int64_t n, int64_t block, ScaleByte scale_byte,
              Encode encode, Decode decode) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g0 = 0; g0 < n; g0 += block) {
      const int64_t len = std::min(block, n - g0);
      uint16_t* xg = x + r * ld + g0;
      double amax = 0;
      bool finite = true;
      for (int64_t j = 0; j < len; ++j) {
        finite = finite && std::isfinite(Bf16(xg[j]));
        amax = std::max(amax, std::fabs(Bf16(xg[j])));
      }
      if (!finite) {
        std::fill(xg, xg + len, uint16_t{0x7fc0});
        continue;
      }
      const double s = E8m0(scale_byte(amax));
      for (int64_t j = 0; j < len; ++j) xg[j] = ToBf16(decode(encode(Bf16(xg[j]) / s)) * s);
    }
  }
}

}  // namespace

void Fp8Simulate(uint16_t* x, int64_t rows, int64_t ld, int64_t n, int64_t block) {
  Simulate(x, rows, ld, n, block, Fp8ScaleByte, ToE4m3, E4m3);
}

void Fp4Simulate(uint16_t* x, int64_t rows, int64_t ld, int64_t n, int64_t block) {
  Simulate(x, rows, ld, n, block, Fp4ScaleByte, ToE2m1, E2m1);
}

namespace {

struct Tables {
  double e4m3[256], e2m1[16];
  Tables() {
    for (int c = 0; c < 256; ++c) e4m3[c] = E4m3(static_cast<uint8_t>(c));
    for (int c = 0; c < 16; ++c) e2m1[c] = E2m1(static_cast<uint8_t>(c));
  }
};
const Tables& T() {
  static const Tables tables;
  return tables;
}

}  // namespace

void GemmFp8(const uint8_t* a, const uint8_t* a_scale, const uint8_t* w, const uint8_t* w_scale,
             const float* w_scale_f32, int64_t m, int64_t n, int64_t k, std::vector<double>* out,
             std::vector<double>* abs_sum) {
  const double* e4m3 = T().e4m3;
  const int64_t kb_count = k / 128;
  out->assign(m * n, 0.0);
  abs_sum->assign(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double total = 0, total_abs = 0;
      for (int64_t kb = 0; kb < kb_count; ++kb) {
        double dot = 0, dot_abs = 0;
        for (int64_t t = kb * 128; t < kb * 128 + 128; ++t) {
          const double prod = e4m3[a[i * k + t]] * e4m3[w[j * k + t]];
          dot += prod;
          dot_abs += std::fabs(prod);
        }
        const int64_t si = (j / 128) * kb_count + kb;
        const double sc = E8m0(a_scale[i * kb_count + kb]) *
                          (w_scale ? E8m0(w_scale[si]) : static_cast<double>(w_scale_f32[si]));
        total += dot * sc;
        total_abs += dot_abs * std::fabs(sc);
      }
      (*out)[i * n + j] = total;
      (*abs_sum)[i * n + j] = total_abs;
    }
  }
}

void GemmFp8Fp4(const uint8_t* a, const uint8_t* a_scale, const uint8_t* w, const uint8_t* w_scale,
                int64_t m, int64_t n, int64_t k, std::vector<double>* out,
                std::vector<double>* abs_sum) {
  const double* e4m3 = T().e4m3;
  const double* e2m1 = T().e2m1;
  out->assign(m * n, 0.0);
  abs_sum->assign(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double total = 0, total_abs = 0;
      for (int64_t t = 0; t < k; ++t) {
        const uint8_t byte = w[j * (k / 2) + t / 2];
        const double wv = e2m1[(t & 1) ? byte >> 4 : byte & 0xf];
        const double sc =
            E8m0(a_scale[i * (k / 128) + t / 128]) * E8m0(w_scale[j * (k / 32) + t / 32]);
        const double term = e4m3[a[i * k + t]] * wv * sc;
        total += term;
        total_abs += std::fabs(term);
      }
      (*out)[i * n + j] = total;
      (*abs_sum)[i * n + j] = total_abs;
    }
  }
}

void Dense(const std::vector<double>& a, const std::vector<double>& w, int64_t m, int64_t n,
           int64_t k, std::vector<double>* out, std::vector<double>* abs_sum) {
  out->assign(m * n, 0.0);
  abs_sum->assign(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = 0, sa = 0;
      for (int64_t t = 0; t < k; ++t) {
        const double p = a[i * k + t] * w[j * k + t];
        s += p;
        sa += std::fabs(p);
      }
      (*out)[i * n + j] = s;
      (*abs_sum)[i * n + j] = sa;
    }
  }
}

void SinkhornSplit(const double* mix, const double* scale, const double* base, int hc, int iters,
                   double eps, double* pre, double* post, double* comb) {
  const auto sigmoid = [](double z) { return 1.0 / (1.0 + std::exp(-z)); };
  for (int j = 0; j < hc; ++j) {
    pre[j] = sigmoid(mix[j] * scale[0] + base[j]) + eps;
    post[j] = 2.0 * sigmoid(mix[hc + j] * scale[1] + base[hc + j]);
  }
  std::vector<double> c(hc * hc);
  for (int i = 0; i < hc * hc; ++i) c[i] = mix[2 * hc + i] * scale[2] + base[2 * hc + i];
  for (int j = 0; j < hc; ++j) {
    double mx = c[j * hc];
    for (int k = 1; k < hc; ++k) mx = std::max(mx, c[j * hc + k]);
    double sum = 0;
    for (int k = 0; k < hc; ++k) sum += std::exp(c[j * hc + k] - mx);
    for (int k = 0; k < hc; ++k) c[j * hc + k] = std::exp(c[j * hc + k] - mx) / sum + eps;
  }
  for (int it = 0; it < iters; ++it) {
    if (it > 0) {
      for (int j = 0; j < hc; ++j) {
        double sum = 0;
        for (int k = 0; k < hc; ++k) sum += c[j * hc + k];
        for (int k = 0; k < hc; ++k) c[j * hc + k] /= sum + eps;
      }
    }
    for (int k = 0; k < hc; ++k) {
      double sum = 0;
      for (int j = 0; j < hc; ++j) sum += c[j * hc + k];
      for (int j = 0; j < hc; ++j) c[j * hc + k] /= sum + eps;
    }
  }
  std::copy(c.begin(), c.end(), comb);
}

}  // namespace flotilla::kernels::ref
