// The text side of one request's output: streaming detokenization plus stop-string matching.
//
// Text is released only as complete UTF-8 (StreamingDetokenizer) and only once it can no longer
// be the start of a stop string: a suffix that is a proper prefix of some stop string is held
// back until the next token settles it. When a stop string appears, the text before it is
// released and the rest (the stop string and anything after it) is dropped.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace flotilla {

class TextStream {
 public:
  // `tokenizer` must outlive this; stop strings must be non-empty valid UTF-8. With
  // `skip_special`, special tokens add no text (stop strings match the text without them).
  TextStream(const Tokenizer* tokenizer, std::vector<std::string> stop, bool skip_special = false);

  // Appends `id`'s text. Ids the tokenizer has no token for add no text. Returns true when a
  // stop string is now complete: `out` got the text before it and the stream is over.
  bool Push(int32_t id, std::string* out);
  // End of output: unfinished UTF-8 becomes U+FFFD and held-back text is released. Returns true
  // when that completed a stop string (then only the text before it is released).
  bool Finish(std::string* out);

  bool stopped() const { return stopped_; }
  size_t num_held_bytes() const { return unsent_.size() + detok_.num_held_bytes(); }

 private:
  bool Release(bool final, std::string* out);

  const Tokenizer* tokenizer_;
  StreamingDetokenizer detok_;
  std::vector<std::string> stop_;
  std::string unsent_;  // complete UTF-8 not yet released (a possible stop-string start)
  bool stopped_ = false;
};

}  // namespace flotilla
