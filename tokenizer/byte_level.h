// The GPT-2 byte <-> character alphabet of byte-level BPE: printable Latin-1 bytes stand for
// themselves, the other 68 bytes are moved to U+0100..U+0143 in byte order.
#pragma once

#include <array>
#include <cstdint>

namespace flotilla::byte_level {

// Code point that stands for `byte`.
inline const std::array<uint16_t, 256>& ByteToCodepoint() {
  static const std::array<uint16_t, 256> table = [] {
    std::array<uint16_t, 256> t{};
    uint16_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      t[b] = printable ? static_cast<uint16_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

// Byte that `cp` stands for, or -1 when `cp` is not in the alphabet.
inline int CodepointToByte(uint32_t cp) {
  static const std::array<int16_t, 324> table = [] {
    std::array<int16_t, 324> t;
    t.fill(-1);
    for (int b = 0; b < 256; ++b) t[ByteToCodepoint()[b]] = static_cast<int16_t>(b);
    return t;
  }();
  return cp < table.size() ? table[cp] : -1;
}

}  // namespace flotilla::byte_level
