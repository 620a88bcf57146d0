// Packed KV entries and indexer keys (spec §8.2 (b)): hand-worked bytes, and exact round trips
// of QAT-rounded rows (what the model stores) in the V4-Flash shapes.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/ops.h"
#include "tests/kernels/test_util.h"

namespace flotilla::kernels {
namespace {

using test::Rng;

// Rows whose groups span many magnitudes: zeros, -0, values under the 1e-4 scale floor, large.
std::vector<bf16> VariedRows(Rng& rng, int64_t rows, int64_t width, int64_t group) {
  std::vector<bf16> x(rows * width);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g0 = 0; g0 < width; g0 += group) {
      const double stddev = std::ldexp(1.0, int(rng.Int(-20, 12)));
      for (int64_t i = g0; i < std::min(width, g0 + group); ++i) {
        x[r * width + i] = F32ToBf16(float(rng.Normal(stddev)));
      }
    }
    x[r * width + 1] = F32ToBf16(0.0f);
    x[r * width + 2] = F32ToBf16(-0.0f);
  }
  return x;
}

TEST(PackKvEntries, HandWorkedBytes) {
  // nope 128 (two groups of 64), rope 4: 128 + 8 + 2 = 138 bytes, padded to 144.
  const int64_t nope = 128, rope = 4, entry = 144;
  std::vector<bf16> x(nope + rope, F32ToBf16(0.0f));
  x[0] = F32ToBf16(2.0f);          // group amax 2: s = 2^ceil(log2(2/448)) = 2^-7, 2/s = 256 = 0x78
  x[1] = F32ToBf16(-0.5f);         // -64 = -1.0 x 2^6: exponent field 13 -> 0xE8
  x[64] = F32ToBf16(1e-5f);        // under the 1e-4 floor: s = 2^ceil(log2(1e-4/448)) = 2^-22
  x[nope] = F32ToBf16(1.0f);       // 0x3F80
  x[nope + 3] = F32ToBf16(-2.0f);  // 0xC000
  std::vector<uint8_t> e(entry, 0xAA);
  PackKvEntries({.rows = 1,
                 .nope = nope,
                 .rope = rope,
                 .entry_bytes = entry,
                 .x = x.data(),
                 .ldx = nope + rope,
                 .entries = e.data()});
  EXPECT_EQ(e[0], 0x78);
  EXPECT_EQ(e[1], 0xE8);
  EXPECT_EQ(e[2], 0x00);
  // bf16(1e-5) = 1.0101b x 2^-17; / 2^-22 = 1.0101b x 2^5 = 42, a tie between the E4M3 values
  // 1.010b and 1.011b x 2^5: to even, 40 = exponent field 12, mantissa 010 -> 0x62.
  EXPECT_EQ(e[64], 0x62);
  EXPECT_EQ(e[nope + 0], 0x80);
  EXPECT_EQ(e[nope + 1], 0x3F);
  EXPECT_EQ(e[nope + 6], 0x00);
  EXPECT_EQ(e[nope + 7], 0xC0);
  EXPECT_EQ(e[nope + 8], 127 - 7);                                      // scale of group 0
  EXPECT_EQ(e[nope + 9], 127 - 22);                                     // scale of group 1
  for (int64_t i = nope + 10; i < entry; ++i) EXPECT_EQ(e[i], 0) << i;  // padding zeroed
}

TEST(PackKvEntries, QatRoundedRowsRoundTripExactlyInFlashShape) {
  // V4-Flash: nope 448 (7 groups), rope 64: 448 + 128 + 7 + 1 pad = 584 bytes.
  const int64_t nope = 448, rope = 64, entry = 584, rows = 200, ldx = 520;
  Rng rng(11);
  std::vector<bf16> x(rows * ldx);
  const std::vector<bf16> v = VariedRows(rng, rows, nope + rope, 64);
  for (int64_t r = 0; r < rows; ++r) std::copy_n(&v[r * (nope + rope)], nope + rope, &x[r * ldx]);
  x[5 * ldx + 70] = F32ToBf16(std::numeric_limits<float>::infinity());  // row 5, group 1
  Fp8SimulateInPlace(x.data(), rows, ldx, nope, 64);
  ASSERT_TRUE(std::isnan(Bf16ToF32(x[5 * ldx + 64])));
  std::vector<uint8_t> e(rows * entry);
  PackKvEntries({.rows = rows,
                 .nope = nope,
                 .rope = rope,
                 .entry_bytes = entry,
                 .x = x.data(),
                 .ldx = ldx,
                 .entries = e.data()});
  std::vector<bf16> back(rows * ldx, F32ToBf16(0.0f));
  UnpackKvEntries({.rows = rows,
                   .nope = nope,
                   .rope = rope,
                   .entry_bytes = entry,
                   .entries = e.data(),
                   .x = back.data(),
                   .ldx = ldx});
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<bf16> want(&x[r * ldx], &x[r * ldx] + nope + rope);
    const std::vector<bf16> got(&back[r * ldx], &back[r * ldx] + nope + rope);
    ASSERT_EQ(test::FirstDifference(got, want), -1) << "row " << r;
    // NaN groups come back with the simulation's exact bits.
    for (int64_t i = 0; i < nope; ++i) ASSERT_EQ(got[i], want[i]) << r << " " << i;
  }
}

TEST(PackKvEntries, ShortLastGroupAndRowsThatWereNotRoundedDoNotSurvive) {
  const int64_t nope = 100, rope = 8, entry = 120;  // groups of 64 and 36
  Rng rng(12);
  std::vector<bf16> x = VariedRows(rng, 30, nope + rope, 64);
  const std::vector<bf16> raw = x;
  Fp8SimulateInPlace(x.data(), 30, nope + rope, nope, 64);
  std::vector<uint8_t> e(30 * entry);
  std::vector<bf16> back(x.size());
  for (const bool rounded : {true, false}) {
    const std::vector<bf16>& in = rounded ? x : raw;
    PackKvEntries({.rows = 30,
                   .nope = nope,
                   .rope = rope,
                   .entry_bytes = entry,
                   .x = in.data(),
                   .ldx = nope + rope,
                   .entries = e.data()});
    UnpackKvEntries({.rows = 30,
                     .nope = nope,
                     .rope = rope,
                     .entry_bytes = entry,
                     .entries = e.data(),
                     .x = back.data(),
                     .ldx = nope + rope});
    if (rounded) {
      EXPECT_BITWISE_EQ(back, in);
    } else {
      // Packing is exact only for QAT-rounded values: raw bf16 rows lose bits.
      EXPECT_NE(test::FirstDifference(back, in), -1);
      EXPECT_BITWISE_EQ(back, x);  // what comes back is the rounded row
    }
  }
}

TEST(PackIndexerKeys, HandWorkedBytes) {
  const int64_t dim = 64, key = 34;  // 32 + 2
  std::vector<bf16> x(dim, F32ToBf16(0.0f));
  x[0] = F32ToBf16(3.0f);    // amax 3: s = 2^ceil(log2(3/6)) = 2^-1; 3/s = 6 -> code 7
  x[1] = F32ToBf16(-0.5f);   // -1 -> code 8|2 = 0xA
  x[32] = F32ToBf16(-1.0f);  // group 1: amax 1: s = 2^ceil(log2(1/6)) = 2^-2; -4 -> code 8|6
  std::vector<uint8_t> e(key, 0xAA);
  PackIndexerKeys({.rows = 1,
                   .nope = dim,
                   .rope = 0,
                   .entry_bytes = key,
                   .x = x.data(),
                   .ldx = dim,
                   .entries = e.data()});
  EXPECT_EQ(e[0], 0xA7);  // element 0 low nibble, element 1 high nibble
  EXPECT_EQ(e[1], 0x00);
  EXPECT_EQ(e[16], 0x0E);
  EXPECT_EQ(e[32], 127 - 1);
  EXPECT_EQ(e[33], 127 - 2);
}

TEST(PackIndexerKeys, QatRoundedKeysRoundTripExactlyInFlashShape) {
  const int64_t dim = 128, key = 68, rows = 300;  // 64 + 4 (spec §8.2)
  Rng rng(13);
  std::vector<bf16> x = VariedRows(rng, rows, dim, 32);
  x[7 * dim + 40] = F32ToBf16(std::nanf(""));
  Fp4SimulateInPlace(x.data(), rows, dim, dim, 32);
  std::vector<uint8_t> e(rows * key);
  PackIndexerKeys({.rows = rows,
                   .nope = dim,
                   .rope = 0,
                   .entry_bytes = key,
                   .x = x.data(),
                   .ldx = dim,
                   .entries = e.data()});
  std::vector<bf16> back(rows * dim);
  UnpackIndexerKeys({.rows = rows,
                     .nope = dim,
                     .rope = 0,
                     .entry_bytes = key,
                     .entries = e.data(),
                     .x = back.data(),
                     .ldx = dim});
  EXPECT_EQ(back, x);  // every bit, NaN groups included
}

}  // namespace
}  // namespace flotilla::kernels
