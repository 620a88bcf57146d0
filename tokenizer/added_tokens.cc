#include "tokenizer/added_tokens.h"

#include <algorithm>

namespace flotilla {

void TokenTrie::Insert(std::string_view text, int32_t id) {
  if (text.empty()) return;
  first_bytes_[static_cast<uint8_t>(text[0])] = true;
  uint32_t node = 0;
  for (const char c : text) {
    auto [it, inserted] = edges_.try_emplace(Key(node, static_cast<uint8_t>(c)), num_nodes_);
    if (inserted) {
      ++num_nodes_;
      terminal_id_.push_back(-1);
    }
    node = it->second;
  }
  terminal_id_[node] = id;
}

size_t TokenTrie::LongestAt(std::string_view text, size_t pos, int32_t* id) const {
  uint32_t node = 0;
  size_t best = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto it = edges_.find(Key(node, static_cast<uint8_t>(text[i])));
    if (it == edges_.end()) break;
    node = it->second;
    if (terminal_id_[node] >= 0) {
      best = i + 1 - pos;
      *id = terminal_id_[node];
    }
  }
  return best;
}

AddedTokenMatcher::AddedTokenMatcher(const std::vector<AddedToken>& tokens) {
  for (const AddedToken& t : tokens) {
    (t.normalized ? normalized_ : raw_).Insert(t.content, t.id);
    max_token_bytes_ = std::max(max_token_bytes_, t.content.size());
  }
}

void AddedTokenMatcher::SplitWith(const TokenTrie& trie, std::string_view text,
                                  absl::FunctionRef<void(std::string_view, int32_t)> emit) {
  size_t gap_begin = 0;
  size_t i = 0;
  while (i < text.size()) {
    if (!trie.MayStartWith(static_cast<uint8_t>(text[i]))) {
      ++i;
      continue;
    }
    int32_t id = -1;
    const size_t len = trie.LongestAt(text, i, &id);
    if (len == 0) {
      ++i;
      continue;
    }
    if (i > gap_begin) emit(text.substr(gap_begin, i - gap_begin), -1);
    emit(text.substr(i, len), id);
    i += len;
    gap_begin = i;
  }
  if (gap_begin < text.size()) emit(text.substr(gap_begin), -1);
}

void AddedTokenMatcher::Split(std::string_view text,
                              absl::FunctionRef<void(std::string_view, int32_t)> emit) const {
  if (raw_.empty() && normalized_.empty()) {
    if (!text.empty()) emit(text, -1);
    return;
  }
  SplitWith(raw_, text, [&](std::string_view segment, int32_t id) {
    if (id >= 0) {
      emit(segment, id);
    } else {
      SplitWith(normalized_, segment, emit);
    }
  });
}

}  // namespace flotilla
