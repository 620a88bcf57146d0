// .npy float32 writer/reader: round trips, the exact header NumPy expects, malformed files.
#include "common/npy.h"

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/test_util.h"

namespace flotilla {
namespace {

using ::testing::HasSubstr;
using testing::ReadBytes;
using testing::ScopedTempDir;
using testing::WriteBytes;

// A version 1.0 file with the given header dict (padded per the spec) and data bytes.
std::string NpyBytes(const std::string& dict, const std::string& data, bool pad = true) {
  std::string header = dict;
  if (pad) {
    while ((10 + header.size() + 1) % 64 != 0) header.push_back(' ');
  }
  header.push_back('\n');
  std::string out("\x93NUMPY\x01\x00", 8);
  out.push_back(char(header.size() & 0xff));
  out.push_back(char(header.size() >> 8));
  return out + header + data;
}

std::string FloatBytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

TEST(Npy, RoundTripsShapes) {
  ScopedTempDir dir;
  std::mt19937 rng(3);
  std::normal_distribution<float> dist;
  const std::vector<std::vector<int64_t>> shapes = {{2, 3}, {5},       {},
                                                    {0, 4}, {2, 3, 4}, {1, 1, 1, 7}};
  for (const std::vector<int64_t>& shape : shapes) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> data(static_cast<size_t>(n));
    for (float& x : data) x = dist(rng);
    const std::string path = dir.File("a.npy");
    ASSERT_TRUE(WriteNpyF32(path, shape, data.data()).ok());
    absl::StatusOr<NpyF32> back = ReadNpyF32(path);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->shape, shape);
    EXPECT_EQ(back->data, data);
  }
}

TEST(Npy, WritesTheHeaderNumpyWrites) {
  ScopedTempDir dir;
  const std::vector<float> data = {1, 2, 3, 4, 5, 6};
  ASSERT_TRUE(WriteNpyF32(dir.File("a.npy"), {2, 3}, data.data()).ok());
  const std::string bytes = ReadBytes(dir.File("a.npy"));
  ASSERT_GE(bytes.size(), 10u);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  const size_t header_len = uint8_t(bytes[8]) | (size_t(uint8_t(bytes[9])) << 8);
  EXPECT_EQ((10 + header_len) % 64, 0u) << "data must start at a multiple of 64";
  const std::string header = bytes.substr(10, header_len);
  EXPECT_EQ(header.rfind("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 0), 0u)
      << header;
  EXPECT_EQ(header.back(), '\n');
  EXPECT_EQ(bytes.size(), 10 + header_len + data.size() * 4);
  EXPECT_EQ(bytes.substr(10 + header_len), FloatBytes(data));

  ASSERT_TRUE(WriteNpyF32(dir.File("b.npy"), {5}, data.data()).ok());
  EXPECT_THAT(ReadBytes(dir.File("b.npy")), HasSubstr("'shape': (5,), }"));
  ASSERT_TRUE(WriteNpyF32(dir.File("c.npy"), {}, data.data()).ok());
  EXPECT_THAT(ReadBytes(dir.File("c.npy")), HasSubstr("'shape': (), }"));
}

TEST(Npy, ReadsOtherValidSpellings) {
  ScopedTempDir dir;
  const std::vector<float> data = {0.5f, -1.0f};
  struct Case {
    std::string bytes;
    std::vector<int64_t> shape;
  };
  std::string v2("\x93NUMPY\x02\x00", 8);
  std::string dict = "{'shape': (2,), 'fortran_order': False, 'descr': '<f4'}";
  while ((12 + dict.size() + 1) % 64 != 0) dict.push_back(' ');
  dict.push_back('\n');
  v2 += std::string(1, char(dict.size())) + std::string(3, '\0') + dict + FloatBytes(data);
  const std::vector<Case> cases = {
      {NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", FloatBytes(data)),
       {2}},
      {NpyBytes("{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (1, 2)}",
                FloatBytes(data), /*pad=*/false),
       {1, 2}},
      {NpyBytes("{'descr':'<f4','fortran_order':False,'shape':(2L,)}", FloatBytes(data)), {2}},
      {v2, {2}},
  };
  for (const Case& c : cases) {
    WriteBytes(dir.File("x.npy"), c.bytes);
    absl::StatusOr<NpyF32> got = ReadNpyF32(dir.File("x.npy"));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->shape, c.shape);
    EXPECT_EQ(got->data, data);
  }
}

TEST(Npy, MalformedFilesGiveClearErrors) {
  ScopedTempDir dir;
  const std::string two = FloatBytes({1, 2});
  const std::string ok_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
  std::string huge_len("\x93NUMPY\x01\x00\xff\xff", 10);
  std::string no_newline = NpyBytes(ok_dict, two);
  no_newline[10 + (uint8_t(no_newline[8]) | (size_t(uint8_t(no_newline[9])) << 8)) - 1] = ' ';
  struct Case {
    const char* label;
    std::string bytes;
    std::string must_mention;
  };
  const std::vector<Case> cases = {
      {"empty", "", "magic"},
      {"bad magic", "\x93NUMPZ\x01\x00\x10\x00{}", "magic"},
      {"version 4", std::string("\x93NUMPY\x04\x00\x00\x00", 10), "version 4.0"},
      {"version 1.1", std::string("\x93NUMPY\x01\x01\x00\x00", 10), "version 1.1"},
      {"header beyond file", huge_len, "header length 65535"},
      {"float64", NpyBytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", two),
       "'<f8'"},
      {"big-endian", NpyBytes("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", two),
       "'>f4'"},
      {"fortran order", NpyBytes("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", two),
       "fortran_order is True"},
      {"fortran order garbage",
       NpyBytes("{'descr': '<f4', 'fortran_order': maybe, 'shape': (2,), }", two), "fortran_order"},
      {"negative dim", NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", two),
       "shape"},
      {"1-tuple without comma",
       NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2), }", two), "shape"},
      {"huge dim",
       NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }",
                two),
       "overflow"},
      {"too large product",
       NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
                two),
       "too large"},
      {"missing shape", NpyBytes("{'descr': '<f4', 'fortran_order': False, }", two), "'shape'"},
      {"extra key",
       NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", two), "'x'"},
      {"unterminated string", NpyBytes("{'descr': '<f4", two), "unterminated"},
      {"not a dict", NpyBytes("['descr']", two), "'{'"},
      {"trailing junk", NpyBytes(ok_dict + " 42", two), "trailing"},
      {"data too short", NpyBytes(ok_dict, two.substr(0, 7)), "7"},
      {"data too long", NpyBytes(ok_dict, two + "x"), "9"},
      {"no newline", no_newline, "newline"},
  };
  for (const Case& c : cases) {
    WriteBytes(dir.File("bad.npy"), c.bytes);
    absl::Status st = ReadNpyF32(dir.File("bad.npy")).status();
    EXPECT_FALSE(st.ok()) << c.label;
    EXPECT_THAT(std::string(st.message()), HasSubstr(dir.File("bad.npy"))) << c.label;
    EXPECT_THAT(std::string(st.message()), HasSubstr(c.must_mention)) << c.label;
  }
  EXPECT_EQ(ReadNpyF32(dir.File("absent.npy")).status().code(), absl::StatusCode::kNotFound);
}

TEST(Npy, FuzzedHeadersNeverCrash) {
  ScopedTempDir dir;
  const std::vector<float> data = {1, 2, 3, 4, 5, 6};
  ASSERT_TRUE(WriteNpyF32(dir.File("good.npy"), {2, 3}, data.data()).ok());
  const std::string good = ReadBytes(dir.File("good.npy"));
  std::mt19937 rng(5);
  for (int iter = 0; iter < 2000; ++iter) {
    std::string bytes = good;
    if (iter % 2 == 0) {
      bytes[rng() % 64] = "{}(),:' 0123456789-TrueFalse\n\x93"[rng() % 31];
    } else {
      bytes.resize(rng() % bytes.size());
    }
    WriteBytes(dir.File("f.npy"), bytes);
    absl::StatusOr<NpyF32> got = ReadNpyF32(dir.File("f.npy"));
    if (got.ok()) {
      int64_t n = 1;
      for (int64_t d : got->shape) n *= d;
      ASSERT_EQ(size_t(n), got->data.size());
    } else {
      ASSERT_THAT(std::string(got.status().message()), HasSubstr("f.npy"));
    }
  }
}

TEST(Npy, WriterRejectsBadArguments) {
  ScopedTempDir dir;
  const float x = 1;
  EXPECT_THAT(WriteNpyF32(dir.File("a.npy"), {-1}, &x).message(), HasSubstr("a.npy"));
  EXPECT_FALSE(WriteNpyF32(dir.File("a.npy"), {3}, nullptr).ok());
  EXPECT_TRUE(WriteNpyF32(dir.File("e.npy"), {0}, nullptr).ok());
  absl::Status st = WriteNpyF32(dir.path() + "/missing/dir/a.npy", {1}, &x);
  EXPECT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.message()), HasSubstr("missing/dir"));
}

}  // namespace
}  // namespace flotilla
