// SafetensorsFile / SafetensorsWriter: round trips and malformed files (each a clear error).
#include "common/safetensors.h"

#include <cstring>
#include <optional>
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

// 8-byte little-endian length, header text, data.
std::string RawFile(const std::string& header, const std::string& data = "",
                    std::optional<uint64_t> header_len = std::nullopt) {
  const uint64_t n = header_len.value_or(header.size());
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = char(n >> (8 * i));
  return out + header + data;
}

absl::Status OpenBytes(const ScopedTempDir& dir, const std::string& bytes,
                       const std::string& name = "bad.safetensors") {
  WriteBytes(dir.File(name), bytes);
  return SafetensorsFile::Open(dir.File(name)).status();
}

TEST(DType, NamesSizesAndParsing) {
  const std::vector<std::pair<DType, std::string>> all = {
      {DType::kBool, "BOOL"}, {DType::kU8, "U8"},          {DType::kI8, "I8"},
      {DType::kI16, "I16"},   {DType::kI32, "I32"},        {DType::kI64, "I64"},
      {DType::kF16, "F16"},   {DType::kBF16, "BF16"},      {DType::kF32, "F32"},
      {DType::kF64, "F64"},   {DType::kF8E4M3, "F8_E4M3"}, {DType::kF8E8M0, "F8_E8M0"}};
  const std::vector<size_t> sizes = {1, 1, 1, 2, 4, 8, 2, 2, 4, 8, 1, 1};
  for (size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(DTypeName(all[i].first), all[i].second);
    EXPECT_EQ(DTypeSize(all[i].first), sizes[i]) << all[i].second;
    absl::StatusOr<DType> parsed = ParseDType(all[i].second);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, all[i].first);
  }
  absl::StatusOr<DType> bad = ParseDType("F8_E5M2");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("F8_E5M2"));
  EXPECT_FALSE(ParseDType("bf16").ok());  // names are case-sensitive
  EXPECT_EQ(ShapeString({2048, 4096}), "[2048, 4096]");
  EXPECT_EQ(ShapeString({}), "[]");
}

TEST(Safetensors, RoundTripsEveryDtypeWithMetadata) {
  ScopedTempDir dir;
  std::mt19937 rng(7);
  const std::vector<DType> dtypes = {DType::kBool, DType::kU8,  DType::kI8,     DType::kI16,
                                     DType::kI32,  DType::kI64, DType::kF16,    DType::kBF16,
                                     DType::kF32,  DType::kF64, DType::kF8E4M3, DType::kF8E8M0};
  std::vector<std::string> payloads;
  std::vector<std::vector<int64_t>> shapes;
  SafetensorsWriter writer;
  for (size_t i = 0; i < dtypes.size(); ++i) {
    std::vector<int64_t> shape = {int64_t(i % 3 + 1), int64_t(i + 2), 3};
    if (i == 4) shape = {};      // a scalar
    if (i == 5) shape = {0, 7};  // an empty tensor
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::string bytes(size_t(n) * DTypeSize(dtypes[i]), '\0');
    for (char& c : bytes) c = char(rng());
    payloads.push_back(bytes);
    shapes.push_back(shape);
  }
  for (size_t i = 0; i < dtypes.size(); ++i) {
    ASSERT_TRUE(writer
                    .Add("t." + std::string(DTypeName(dtypes[i])), dtypes[i], shapes[i],
                         payloads[i].data(), payloads[i].size())
                    .ok());
  }
  writer.SetMetadata("format", "pt");
  writer.SetMetadata("note", "round trip");
  uint64_t total = 0;
  for (const std::string& p : payloads) total += p.size();
  EXPECT_EQ(writer.total_bytes(), total);
  const std::string path = dir.File("all.safetensors");
  ASSERT_TRUE(writer.Write(path).ok());

  const std::string raw = ReadBytes(path);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | uint8_t(raw[i]);
  EXPECT_EQ((8 + header_len) % 8, 0u) << "data section must start 8-byte aligned";
  EXPECT_EQ(raw.size(), 8 + header_len + total);

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->path(), path);
  EXPECT_EQ((*file)->file_size(), raw.size());
  ASSERT_EQ((*file)->tensors().size(), dtypes.size());
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  EXPECT_EQ((*file)->metadata().at("note"), "round trip");
  for (size_t i = 0; i < dtypes.size(); ++i) {
    const std::string name = "t." + std::string(DTypeName(dtypes[i]));
    const TensorInfo* info = (*file)->Find(name);
    ASSERT_NE(info, nullptr) << name;
    EXPECT_EQ(info->dtype, dtypes[i]);
    EXPECT_EQ(info->shape, shapes[i]);
    EXPECT_EQ(info->NumBytes(), payloads[i].size());
    EXPECT_EQ(uint64_t(info->NumElements()) * DTypeSize(dtypes[i]), payloads[i].size());
    EXPECT_EQ(std::memcmp((*file)->Data(*info), payloads[i].data(), payloads[i].size()), 0) << name;
  }
  // tensors() is in data-offset order.
  for (size_t i = 1; i < (*file)->tensors().size(); ++i) {
    EXPECT_LE((*file)->tensors()[i - 1].end, (*file)->tensors()[i].begin);
  }
  EXPECT_EQ((*file)->Find("absent"), nullptr);
}

TEST(Safetensors, ReadsHandWrittenFileWithGapsAndUnsortedEntries) {
  ScopedTempDir dir;
  const std::string header =
      R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},)"
      R"("a":{"dtype":"I8","shape":[2],"data_offsets":[0,2]},"__metadata__":{}})";
  std::string data = "\x01\x02......";
  const float f = 1.5f;
  data.append(reinterpret_cast<const char*>(&f), 4);
  WriteBytes(dir.File("x.safetensors"), RawFile(header, data));
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(dir.File("x.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->tensors().size(), 2u);
  EXPECT_EQ((*file)->tensors()[0].name, "a");
  EXPECT_EQ((*file)->tensors()[1].name, "b");
  float got;
  std::memcpy(&got, (*file)->Data(*(*file)->Find("b")), 4);
  EXPECT_EQ(got, 1.5f);
}

TEST(SafetensorsWriter, RejectsBadAdds) {
  SafetensorsWriter w;
  float data[6] = {};
  EXPECT_TRUE(w.Add("x", DType::kF32, {2, 3}, data, sizeof(data)).ok());
  absl::Status dup = w.Add("x", DType::kF32, {2, 3}, data, sizeof(data));
  EXPECT_FALSE(dup.ok());
  EXPECT_THAT(std::string(dup.message()), HasSubstr("'x'"));
  absl::Status size = w.Add("y", DType::kF32, {2, 4}, data, sizeof(data));
  EXPECT_FALSE(size.ok());
  EXPECT_THAT(std::string(size.message()), HasSubstr("'y'"));
  EXPECT_THAT(std::string(size.message()), HasSubstr("32"));
  EXPECT_FALSE(w.Add("__metadata__", DType::kF32, {6}, data, sizeof(data)).ok());
  EXPECT_FALSE(w.Add("", DType::kF32, {6}, data, sizeof(data)).ok());
  EXPECT_FALSE(w.Add("neg", DType::kF32, {-1}, data, 0).ok());
  EXPECT_FALSE(w.Add("null", DType::kF32, {6}, nullptr, sizeof(data)).ok());
  EXPECT_EQ(w.total_bytes(), sizeof(data));
  ScopedTempDir dir;
  absl::Status st = w.Write(dir.path() + "/no/such/dir/x.safetensors");
  EXPECT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.message()), HasSubstr("no/such/dir"));
}

struct BadCase {
  const char* label;
  std::string bytes;
  std::vector<std::string> must_mention;
};

TEST(Safetensors, MalformedFilesGiveClearErrors) {
  ScopedTempDir dir;
  const std::string ok_entry = R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string eight(8, '\0');
  std::vector<BadCase> cases = {
      {"empty file", "", {"bad.safetensors", "at least 8"}},
      {"short file", std::string("\x05\x00\x00", 3), {"bad.safetensors", "3 bytes"}},
      {"header length 0", RawFile("", "", 0), {"header length is 0"}},
      {"header length 1", RawFile("{", "", 1), {"header length is 1"}},
      {"absurd header length", RawFile("{}", "", uint64_t(1) << 40), {"header length"}},
      {"header beyond the file", RawFile("{}", "", 4096), {"4096", "2 bytes follow"}},
      {"header length 2^64 - 2", RawFile("{}", "", ~uint64_t(1)), {"header length"}},
      {"non-JSON header", RawFile("{\"w\": nope}"), {"bad.safetensors", "not valid JSON"}},
      {"truncated JSON", RawFile("{\"w\": {\"dtype\""), {"not valid JSON"}},
      {"invalid UTF-8", RawFile("{\"\xff\xfe\": 1}"), {"not valid JSON"}},
      {"array header", RawFile("[1, 2, 3]"), {"array", "expected an object"}},
      {"string header", RawFile("\"hello\""), {"string", "expected an object"}},
      {"entry not an object", RawFile(R"({"w": 5})"), {"'w'", "expected an object"}},
      {"missing dtype",
       RawFile(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", eight),
       {"'w'", "dtype"}},
      {"missing shape",
       RawFile(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", eight),
       {"'w'", "shape"}},
      {"missing offsets",
       RawFile(R"({"w":{"dtype":"F32","shape":[2]}})", eight),
       {"'w'", "data_offsets"}},
      {"unknown dtype",
       RawFile(R"({"w":{"dtype":"F12","shape":[2],"data_offsets":[0,8]}})", eight),
       {"'w'", "F12", "F8_E4M3"}},
      {"dtype not a string",
       RawFile(R"({"w":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", eight),
       {"'w'", "dtype"}},
      {"negative dim",
       RawFile(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight),
       {"'w'", "shape[0]", "-2"}},
      {"float dim",
       RawFile(R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", eight),
       {"'w'", "shape[0]"}},
      {"shape not an array",
       RawFile(R"({"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", eight),
       {"'w'", "shape"}},
      {"shape x dtype mismatch",
       RawFile(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight),
       {"'w'", "[3]", "12", "8"}},
      {"shape overflow",
       RawFile(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
               eight),
       {"'w'", "overflow"}},
      {"out-of-file range",
       RawFile(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", eight),
       {"'w'", "[4, 12]", "8 bytes"}},
      {"truncated data", RawFile("{" + ok_entry + "}", "abc"), {"'w'", "truncated"}},
      {"begin > end",
       RawFile(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", eight),
       {"'w'", "begin > end"}},
      {"offsets wrong length",
       RawFile(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", eight),
       {"'w'", "data_offsets"}},
      {"negative offset",
       RawFile(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", eight),
       {"'w'", "data_offsets"}},
      {"overlapping ranges",
       RawFile(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
               R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
               eight),
       {"'a'", "'b'", "overlap"}},
      {"range inside another",
       RawFile(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
               R"("b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]},)"
               R"("c":{"dtype":"U8","shape":[1],"data_offsets":[5,6]}})",
               eight),
       {"'a'", "overlap"}},
      {"duplicate tensor", RawFile("{" + ok_entry + "," + ok_entry + "}", eight), {"'w'", "twice"}},
      {"metadata not an object", RawFile(R"({"__metadata__": [1]})"), {"__metadata__"}},
      {"metadata value not a string",
       RawFile(R"({"__metadata__": {"k": 3}})"),
       {"__metadata__", "'k'", "expected a string"}},
  };
  for (const BadCase& c : cases) {
    absl::Status st = OpenBytes(dir, c.bytes);
    EXPECT_FALSE(st.ok()) << c.label;
    EXPECT_THAT(std::string(st.message()), HasSubstr(dir.File("bad.safetensors"))) << c.label;
    for (const std::string& s : c.must_mention) {
      EXPECT_THAT(std::string(st.message()), HasSubstr(s)) << c.label;
    }
  }
}

TEST(Safetensors, MissingFileAndDirectory) {
  ScopedTempDir dir;
  absl::Status st = SafetensorsFile::Open(dir.File("nope.safetensors")).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(st.message()), HasSubstr("nope.safetensors"));
  st = SafetensorsFile::Open(dir.path()).status();
  EXPECT_FALSE(st.ok());
}

// Random corruptions of a valid file never crash: every Open either fails with a message or
// yields ranges inside the file.
TEST(Safetensors, FuzzedFilesNeverCrash) {
  ScopedTempDir dir;
  SafetensorsWriter writer;
  std::vector<uint8_t> a(64, 1), b(40, 2);
  ASSERT_TRUE(writer.Add("layers.0.w", DType::kBF16, {4, 8}, a.data(), a.size()).ok());
  ASSERT_TRUE(writer.Add("layers.0.s", DType::kF8E8M0, {5, 8}, b.data(), b.size()).ok());
  writer.SetMetadata("format", "pt");
  ASSERT_TRUE(writer.Write(dir.File("good.safetensors")).ok());
  const std::string good = ReadBytes(dir.File("good.safetensors"));

  std::mt19937 rng(99);
  int opened = 0;
  uint64_t checksum = 0;  // reads every byte of every accepted tensor
  for (int iter = 0; iter < 3000; ++iter) {
    std::string bytes = good;
    const int kind = iter % 4;
    if (kind == 0) {  // flip a few bytes anywhere
      for (int k = 0; k < 1 + int(rng() % 4); ++k) bytes[rng() % bytes.size()] = char(rng());
    } else if (kind == 1) {  // truncate
      bytes.resize(rng() % bytes.size());
    } else if (kind == 2) {  // replace one header character with a JSON-significant one
      const char tokens[] = "{}[],:\"0123456789-.e ";
      bytes[8 + rng() % (bytes.size() - 8 - 104)] = tokens[rng() % (sizeof(tokens) - 1)];
    } else {  // random garbage with a plausible header length
      bytes.assign(16 + rng() % 200, '\0');
      for (char& ch : bytes) ch = char(rng());
      bytes[0] = char(rng() % 64);
      for (int i = 1; i < 8; ++i) bytes[i] = 0;
    }
    WriteBytes(dir.File("fuzz.safetensors"), bytes);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
        SafetensorsFile::Open(dir.File("fuzz.safetensors"));
    if (!file.ok()) {
      ASSERT_THAT(std::string(file.status().message()), HasSubstr("fuzz.safetensors"));
      continue;
    }
    ++opened;
    for (const TensorInfo& t : (*file)->tensors()) {
      ASSERT_LE(t.end, (*file)->file_size());
      ASSERT_EQ(t.NumBytes(), uint64_t(t.NumElements()) * DTypeSize(t.dtype));
      for (uint64_t i = 0; i < t.NumBytes(); ++i) checksum += (*file)->Data(t)[i];
    }
  }
  RecordProperty("checksum", std::to_string(checksum));
  EXPECT_GT(opened, 0);  // some byte flips land in the data section and stay valid
}

}  // namespace
}  // namespace flotilla
