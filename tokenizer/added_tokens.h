// Added tokens (special and control tokens) are found in the raw text before pre-tokenization,
// leftmost-longest, as HF `tokenizers` does: first the tokens with normalized=false, then,
// inside the remaining gaps, those with normalized=true (the normalizer is the identity here).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"

namespace flotilla {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;
  bool normalized = false;
};

// A byte trie matching a fixed set of strings leftmost-longest.
class TokenTrie {
 public:
  void Insert(std::string_view text, int32_t id);
  bool empty() const { return num_nodes_ == 1; }
  // Length of the longest member starting at text[pos] and its id, or 0 if none.
  size_t LongestAt(std::string_view text, size_t pos, int32_t* id) const;
  bool MayStartWith(uint8_t byte) const { return first_bytes_[byte]; }

 private:
  static uint64_t Key(uint32_t node, uint8_t byte) { return (uint64_t{node} << 8) | byte; }
  absl::flat_hash_map<uint64_t, uint32_t> edges_;
  std::vector<int32_t> terminal_id_ = {-1};  // per node; -1 when no member ends there
  uint32_t num_nodes_ = 1;
  bool first_bytes_[256] = {};
};

class AddedTokenMatcher {
 public:
  explicit AddedTokenMatcher(const std::vector<AddedToken>& tokens);

  // Cuts `text` into plain-text segments (token_id == -1) and added tokens, in order. Empty
  // segments are not reported.
  void Split(std::string_view text,
             absl::FunctionRef<void(std::string_view segment, int32_t token_id)> emit) const;

  // Bytes of the longest added token (0 when there are none).
  size_t max_token_bytes() const { return max_token_bytes_; }

 private:
  static void SplitWith(const TokenTrie& trie, std::string_view text,
                        absl::FunctionRef<void(std::string_view, int32_t)> emit);
  TokenTrie raw_;         // normalized == false
  TokenTrie normalized_;  // normalized == true
  size_t max_token_bytes_ = 0;
};

}  // namespace flotilla
