#include "tokenizer/text_stream.h"

#include <algorithm>
#include <string_view>
#include <utility>

namespace flotilla {

TextStream::TextStream(const Tokenizer* tokenizer, std::vector<std::string> stop, bool skip_special)
    : tokenizer_(tokenizer), detok_(tokenizer, skip_special), stop_(std::move(stop)) {}

bool TextStream::Push(int32_t id, std::string* out) {
  if (stopped_) return true;
  // An id with no token (a gap in tokenizer.json, or a padding row of the embedding) adds no
  // text, as in HF's decode.
  if (tokenizer_->CheckId(id).ok()) detok_.Push(id, &unsent_).IgnoreError();
  return Release(/*final=*/false, out);
}

bool TextStream::Finish(std::string* out) {
  if (stopped_) return true;
  detok_.Finish(&unsent_);
  return Release(/*final=*/true, out);
}

bool TextStream::Release(bool final, std::string* out) {
  // Released text never holds the start of a stop string (that part is held back), so a match
  // can only start inside unsent_.
  size_t match = std::string::npos;
  for (const std::string& s : stop_) match = std::min(match, unsent_.find(s));
  if (match != std::string::npos) {
    out->append(unsent_, 0, match);
    unsent_.clear();
    stopped_ = true;
    return true;
  }
  size_t hold = 0;
  if (!final) {
    const std::string_view text(unsent_);
    for (const std::string& s : stop_) {
      // Longest proper prefix of s that text ends with. unsent_ is complete UTF-8 and s is
      // valid UTF-8, so a match always starts and ends on character boundaries.
      for (size_t k = std::min(s.size() - 1, text.size()); k > hold; --k) {
        if (text.substr(text.size() - k) == std::string_view(s).substr(0, k)) {
          hold = k;
          break;
        }
      }
    }
  }
  out->append(unsent_, 0, unsent_.size() - hold);
  unsent_.erase(0, unsent_.size() - hold);
  return false;
}

}  // namespace flotilla
