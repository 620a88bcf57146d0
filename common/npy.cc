// .npy format (NumPy NEP 1): magic "\x93NUMPY", version, header length, a Python dict literal
// {'descr': '<f4', 'fortran_order': False, 'shape': (...), } padded with spaces and '\n' so the
// data starts at a multiple of 64, then the raw little-endian data.
#include "common/npy.h"

#include <bit>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/json_util.h"

namespace flotilla {
namespace {

static_assert(std::endian::native == std::endian::little, "npy I/O assumes a little-endian host");

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
constexpr size_t kAlign = 64;

// Product of the dims, false if negative or overflowing.
bool CountElements(const std::vector<int64_t>& shape, uint64_t* count) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, uint64_t(d), &n)) return false;
  }
  *count = n;
  return true;
}

// Minimal parser for the header dict literal written by numpy.lib.format.
class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& path) : s_(text), path_(path) {}

  absl::Status Parse(std::vector<int64_t>* shape) {
    bool have_descr = false, have_fortran = false, have_shape = false;
    SkipSpace();
    if (!Consume('{')) return Error("expected '{' at the start of the header dict");
    while (true) {
      SkipSpace();
      if (Consume('}')) break;
      std::string key;
      RETURN_IF_ERROR(ParseString(&key));
      SkipSpace();
      if (!Consume(':')) return Error(absl::StrCat("expected ':' after key '", key, "'"));
      SkipSpace();
      if (key == "descr") {
        std::string descr;
        RETURN_IF_ERROR(ParseString(&descr));
        if (descr != "<f4") {
          return absl::InvalidArgumentError(absl::StrCat(
              path_, ": descr is '", descr, "'; expected '<f4' (little-endian float32)"));
        }
        have_descr = true;
      } else if (key == "fortran_order") {
        const std::string word(ParseWord());
        if (word == "True") {
          return absl::InvalidArgumentError(
              absl::StrCat(path_, ": fortran_order is True; expected False (C order)"));
        }
        if (word != "False") {
          return Error(absl::StrCat("fortran_order is '", word, "'; expected False"));
        }
        have_fortran = true;
      } else if (key == "shape") {
        RETURN_IF_ERROR(ParseShape(shape));
        have_shape = true;
      } else {
        return Error(absl::StrCat("unexpected key '", key,
                                  "'; expected only descr, fortran_order and shape"));
      }
      SkipSpace();
      if (Consume(',')) continue;
      SkipSpace();
      if (Consume('}')) break;
      return Error("expected ',' or '}' in the header dict");
    }
    SkipSpace();
    if (pos_ != s_.size()) return Error("trailing characters after the header dict");
    if (!have_descr || !have_fortran || !have_shape) {
      return Error(absl::StrCat("header dict lacks", have_descr ? "" : " 'descr'",
                                have_fortran ? "" : " 'fortran_order'",
                                have_shape ? "" : " 'shape'"));
    }
    return absl::OkStatus();
  }

 private:
  absl::Status Error(const std::string& what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": malformed .npy header at offset ", pos_, ": ", what));
  }
  void SkipSpace() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  bool Consume(char c) {
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  absl::Status ParseString(std::string* out) {
    if (pos_ >= s_.size() || (s_[pos_] != '\'' && s_[pos_] != '"')) {
      return Error("expected a quoted string");
    }
    const char quote = s_[pos_++];
    const size_t end = s_.find(quote, pos_);
    if (end == std::string_view::npos) return Error("unterminated string");
    *out = std::string(s_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return absl::OkStatus();
  }
  std::string_view ParseWord() {
    const size_t start = pos_;
    while (pos_ < s_.size() && std::isalnum(static_cast<unsigned char>(s_[pos_]))) ++pos_;
    return s_.substr(start, pos_ - start);
  }
  absl::Status ParseShape(std::vector<int64_t>* shape) {
    shape->clear();
    if (!Consume('(')) return Error("shape: expected '('");
    while (true) {
      SkipSpace();
      if (Consume(')')) return absl::OkStatus();
      const size_t start = pos_;
      int64_t value = 0;
      while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) {
        if (__builtin_mul_overflow(value, int64_t(10), &value) ||
            __builtin_add_overflow(value, int64_t(s_[pos_] - '0'), &value)) {
          return Error("shape: dimension overflows 64 bits");
        }
        ++pos_;
      }
      if (pos_ == start) return Error("shape: expected a non-negative integer");
      while (Consume('L')) {  // Python 2 long suffix, written by old NumPy versions
      }
      shape->push_back(value);
      SkipSpace();
      if (Consume(',')) continue;
      SkipSpace();
      if (Consume(')')) {
        if (shape->size() == 1) return Error("shape: a 1-element tuple needs a trailing ','");
        return absl::OkStatus();
      }
      return Error("shape: expected ',' or ')'");
    }
  }

  std::string_view s_;
  const std::string& path_;
  size_t pos_ = 0;
};

}  // namespace

absl::Status WriteNpyF32(const std::string& path, const std::vector<int64_t>& shape,
                         const float* data) {
  uint64_t count = 0;
  if (!CountElements(shape, &count) || count > (uint64_t(1) << 61)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": invalid shape [", absl::StrJoin(shape, ", "), "] for .npy"));
  }
  if (count > 0 && data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": null data for a non-empty array"));
  }
  std::string dims;
  for (int64_t d : shape) absl::StrAppend(&dims, d, shape.size() == 1 ? "," : ", ");
  if (shape.size() > 1) dims.resize(dims.size() - 2);
  std::string dict =
      absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': (", dims, "), }");
  // Version 1.0 has a 2-byte header length; very long headers (thousands of dims) need 2.0.
  size_t prefix = kMagicLen + 2 + 2;
  uint8_t major = 1;
  if (((prefix + dict.size() + 1 + kAlign - 1) / kAlign) * kAlign - prefix > 65535) {
    prefix = kMagicLen + 2 + 4;
    major = 2;
  }
  const size_t total = ((prefix + dict.size() + 1 + kAlign - 1) / kAlign) * kAlign;
  dict.append(total - prefix - dict.size() - 1, ' ');
  dict.push_back('\n');
  std::string head(kMagic, kMagicLen);
  head.push_back(char(major));
  head.push_back(0);
  const uint64_t header_len = dict.size();
  for (size_t i = 0; i < prefix - kMagicLen - 2; ++i) head.push_back(char(header_len >> (8 * i)));
  head += dict;

  head.append(reinterpret_cast<const char*>(data), count * sizeof(float));
  return WriteFileAtomically(path, head);
}

absl::StatusOr<NpyF32> ReadNpyF32(const std::string& path) {
  ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path));
  if (bytes.size() < kMagicLen + 4 || bytes.compare(0, kMagicLen, kMagic, kMagicLen) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a .npy file (no \\x93NUMPY magic)"));
  }
  const uint8_t major = uint8_t(bytes[6]), minor = uint8_t(bytes[7]);
  if (major < 1 || major > 3 || minor != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": .npy format version ", major, ".",
                                                   minor, "; expected 1.0, 2.0 or 3.0"));
  }
  const size_t len_bytes = major == 1 ? 2 : 4;
  const size_t prefix = kMagicLen + 2 + len_bytes;
  if (bytes.size() < prefix) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": truncated .npy preamble"));
  }
  uint64_t header_len = 0;
  for (size_t i = 0; i < len_bytes; ++i) {
    header_len |= uint64_t(uint8_t(bytes[kMagicLen + 2 + i])) << (8 * i);
  }
  if (header_len > bytes.size() - prefix) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header length ", header_len,
                                                   " exceeds the file (", bytes.size(), " bytes)"));
  }
  const std::string_view header(bytes.data() + prefix, header_len);
  if (header.empty() || header.back() != '\n') {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": .npy header does not end with a newline"));
  }
  NpyF32 out;
  HeaderParser parser(header, path);
  RETURN_IF_ERROR(parser.Parse(&out.shape));
  uint64_t count = 0;
  if (!CountElements(out.shape, &count) || count > (uint64_t(1) << 61)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": shape (", absl::StrJoin(out.shape, ", "), ") is too large"));
  }
  const uint64_t data_bytes = bytes.size() - prefix - header_len;
  if (data_bytes != count * sizeof(float)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": shape (", absl::StrJoin(out.shape, ", "), ") needs ",
                     count * sizeof(float), " data bytes; file has ", data_bytes));
  }
  out.data.resize(count);
  if (count > 0) std::memcpy(out.data.data(), bytes.data() + prefix + header_len, data_bytes);
  return out;
}

}  // namespace flotilla
