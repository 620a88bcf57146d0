// Encodes a text that arrives in pieces (a streamed prompt) while it arrives: the ids equal
// Tokenizer::Encode of the whole text, but at most about `step_bytes` plus the last piece are
// held as text at any time, so the work and memory of encoding grow with each piece rather
// than at the end, and a caller can stop as soon as the ids pass a limit.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "tokenizer/tokenizer.h"

namespace flotilla {

class IncrementalEncoder {
 public:
  static constexpr size_t kDefaultStepBytes = size_t{256} << 10;

  // `tokenizer` must outlive this object.
  explicit IncrementalEncoder(const Tokenizer* tokenizer, size_t step_bytes = kDefaultStepBytes)
      : tokenizer_(tokenizer), step_bytes_(step_bytes) {}

  // Appends bytes of the text; they may end inside a UTF-8 character. Once `step_bytes` are
  // held, encodes what no later piece can change. INVALID_ARGUMENT names the byte offset (in
  // the whole text) of ill-formed UTF-8; other tokenizer errors pass through.
  absl::Status Append(std::string_view bytes);
  // The text is complete: encodes what is held (an unfinished character is ill-formed).
  absl::Status Finish();

  const std::vector<int32_t>& ids() const { return ids_; }
  std::vector<int32_t> TakeIds() { return std::move(ids_); }
  int64_t bytes_in() const { return bytes_in_; }
  size_t held_bytes() const { return held_.size(); }
  // Heap bytes this object holds now (text and ids).
  size_t memory_bytes() const { return held_.capacity() + ids_.capacity() * sizeof(int32_t); }

 private:
  absl::Status Encode(bool final);

  const Tokenizer* tokenizer_;
  size_t step_bytes_;
  std::string held_;         // text not encoded yet
  int64_t held_offset_ = 0;  // offset of held_[0] in the whole text
  int64_t bytes_in_ = 0;
  size_t next_try_bytes_ = 0;  // 0: at step_bytes_
  std::vector<int32_t> ids_;
};

}  // namespace flotilla
