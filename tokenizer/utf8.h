// UTF-8 helpers shared by the tokenizer, the streaming detokenizer and the chat encoder.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace flotilla::utf8 {

// Byte offset of the first byte that does not start a well-formed UTF-8 sequence
// (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF), or text.size() when the
// whole text is well formed.
size_t FindInvalid(std::string_view text);
inline bool IsValid(std::string_view text) { return FindInvalid(text) == text.size(); }

// Appends `bytes` to `out` as well-formed UTF-8: every maximal ill-formed subpart becomes one
// U+FFFD (the Unicode "best practice", as Rust's String::from_utf8_lossy does). When `final`
// is false, a trailing sequence that is incomplete but could still become valid is not
// consumed. Returns the number of bytes consumed (always bytes.size() when `final`).
size_t AppendLossy(std::string_view bytes, bool final, std::string* out);

// Length in bytes of the character starting with `lead` (1 for ASCII and for invalid leads).
inline size_t SequenceLength(uint8_t lead) {
  if (lead < 0xC0) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return lead < 0xF8 ? 4 : 1;
}

// Appends the UTF-8 encoding of `cp` (must be a Unicode scalar value).
void AppendCodepoint(uint32_t cp, std::string* out);

}  // namespace flotilla::utf8
