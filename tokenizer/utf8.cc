#include "tokenizer/utf8.h"

namespace flotilla::utf8 {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Length of the well-formed prefix of the sequence at text[i] (0 when the lead byte itself is
// invalid), and whether that prefix is the complete sequence.
struct Probe {
  size_t valid_len;
  bool complete;
};

Probe ProbeSequence(std::string_view text, size_t i) {
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  const uint8_t b0 = s[i];
  if (b0 < 0x80) return {1, true};
  size_t need;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return {0, false};
  }
  size_t len = 1;
  while (len < need) {
    if (i + len >= n) return {len, false};
    const uint8_t b = s[i + len];
    const bool ok = len == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) return {len, false};
    ++len;
  }
  return {len, true};
}

}  // namespace

size_t FindInvalid(std::string_view text) {
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    // Fast path over ASCII, 8 bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      __builtin_memcpy(&w, text.data() + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    if (static_cast<uint8_t>(text[i]) < 0x80) {
      ++i;
      continue;
    }
    const Probe p = ProbeSequence(text, i);
    if (!p.complete) return i;
    i += p.valid_len;
  }
  return n;
}

size_t AppendLossy(std::string_view bytes, bool final, std::string* out) {
  size_t i = 0;
  const size_t n = bytes.size();
  while (i < n) {
    size_t run = i;
    while (run < n && static_cast<uint8_t>(bytes[run]) < 0x80) ++run;
    out->append(bytes.data() + i, run - i);
    i = run;
    if (i >= n) break;
    const Probe p = ProbeSequence(bytes, i);
    if (p.complete) {
      out->append(bytes.data() + i, p.valid_len);
      i += p.valid_len;
    } else if (!final && p.valid_len > 0 && i + p.valid_len == n) {
      return i;  // an unfinished character: hold its bytes until more arrive
    } else {
      out->append(kReplacement);
      i += p.valid_len > 0 ? p.valid_len : 1;
    }
  }
  return n;
}

void AppendCodepoint(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace flotilla::utf8
