#include "tokenizer/incremental_encoder.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "tokenizer/utf8.h"

namespace flotilla {

namespace {

// Length of the prefix of `text` that ends on a character boundary: a trailing sequence whose
// lead byte asks for more bytes than follow is left out.
size_t CompletePrefix(std::string_view text) {
  const size_t n = text.size();
  for (size_t back = 1; back <= 4 && back <= n; ++back) {
    const uint8_t b = static_cast<uint8_t>(text[n - back]);
    if ((b & 0xC0) == 0x80) continue;  // a continuation byte: look further back
    return utf8::SequenceLength(b) > back ? n - back : n;
  }
  return n;
}

}  // namespace

absl::Status IncrementalEncoder::Append(std::string_view bytes) {
  held_.append(bytes);
  bytes_in_ += static_cast<int64_t>(bytes.size());
  if (held_.size() < std::max(step_bytes_, next_try_bytes_)) return absl::OkStatus();
  return Encode(/*final=*/false);
}

absl::Status IncrementalEncoder::Finish() { return Encode(/*final=*/true); }

absl::Status IncrementalEncoder::Encode(bool final) {
  const size_t end = final ? held_.size() : CompletePrefix(held_);
  const std::string_view text(held_.data(), end);
  const size_t bad = utf8::FindInvalid(text);
  if (bad != text.size()) {
    return absl::InvalidArgumentError(absl::StrCat("text is not valid UTF-8 (byte offset ",
                                                   held_offset_ + static_cast<int64_t>(bad), ")"));
  }
  size_t done = 0;
  if (final) {
    RETURN_IF_ERROR(tokenizer_->EncodeAppend(text, &ids_));
    done = end;
  } else {
    ASSIGN_OR_RETURN(done, tokenizer_->EncodeStablePrefix(text, &ids_));
  }
  // Nothing settled (one long piece, say): try again only once the text held has doubled, so
  // that the splitting done in vain stays linear in the text.
  next_try_bytes_ = done == 0 ? 2 * held_.size() : 0;
  held_.erase(0, done);
  held_offset_ += static_cast<int64_t>(done);
  // A big piece can leave a big buffer behind.
  if (held_.capacity() > 2 * step_bytes_ && held_.size() < step_bytes_) held_.shrink_to_fit();
  if (final) held_ = std::string();
  return absl::OkStatus();
}

}  // namespace flotilla
