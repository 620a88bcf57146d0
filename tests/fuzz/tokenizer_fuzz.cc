// The project's tokenizer on arbitrary bytes: Encode refuses invalid UTF-8 with a status and
// round-trips valid text exactly (Decode(Encode(t)) == t); Decode and the streaming
// detokenizer take arbitrary ids (unknown ones refused) and always give valid UTF-8, the
// streamed text equal to Decode. The incremental encoder, fed the same bytes in pieces, gives
// the ids of Encode.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "tests/fuzz/fuzz_util.h"
#include "tests/tokenizer/test_data.h"
#include "tokenizer/incremental_encoder.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flotilla;
  const Tokenizer& tok = testing::ProjectTokenizer();
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto ids = tok.Encode(text);
  if (utf8::IsValid(text)) {
    if (!ids.ok()) fuzz::Violated("Encode refused valid UTF-8", std::string(ids.status().message()));
    auto back = tok.Decode(*ids);
    if (!back.ok() || *back != text) fuzz::Violated("round trip", text);
    // Pieces of 1..13 bytes (cutting characters), settled every 16..79 bytes.
    const size_t piece = 1 + size % 13;
    IncrementalEncoder enc(&tok, 16 + size % 64);
    bool ok = true;
    for (size_t at = 0; ok && at < text.size(); at += piece) {
      ok = enc.Append(std::string_view(text).substr(at, piece)).ok();
    }
    ok = ok && enc.Finish().ok();
    if (!ok || enc.ids() != *ids) fuzz::Violated("incremental encoding != Encode", text);
  }
  // The same bytes as token ids.
  std::vector<int32_t> raw(size / 4);
  if (!raw.empty()) std::memcpy(raw.data(), data, raw.size() * 4);
  for (int32_t& id : raw) id = int32_t(uint32_t(id) % uint32_t(tok.vocab_size() + 16));
  auto decoded = tok.Decode(raw);
  if (decoded.ok() && !utf8::IsValid(*decoded)) fuzz::Violated("Decode gave invalid UTF-8", "");
  StreamingDetokenizer stream(&tok);
  std::string streamed;
  bool all_known = true;
  for (int32_t id : raw) all_known &= stream.Push(id, &streamed).ok();
  stream.Finish(&streamed);
  if (!utf8::IsValid(streamed)) fuzz::Violated("streamed text is invalid UTF-8", "");
  if (all_known && decoded.ok() && streamed != *decoded) fuzz::Violated("stream != Decode", "");
  return 0;
}
