// The model's tokenizer: byte-level BPE loaded from a HF tokenizer.json, no Python.
//
// Encode: added/special tokens are cut out of the raw text first (leftmost-longest), the rest
// goes through the declared pre-tokenizer splits and BPE. The tokenizer never adds BOS/EOS
// (the chat encoder writes BOS as text). Decode: byte-level bytes, joined, made valid UTF-8
// (U+FFFD per ill-formed subpart, as HF does). Ids at or above the model's vocab size are
// refused. All methods are thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/types/span.h"
#include "common/status.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pre_tokenizer.h"

namespace flotilla {

class Tokenizer {
 public:
  // Parses the text of a tokenizer.json.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJsonText(std::string_view json_text);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path);
  // A checkpoint directory: DIR/tokenizer.json (required), DIR/tokenizer_config.json (if
  // present: must not ask the tokenizer to add BOS/EOS; names the BOS/EOS tokens) and
  // DIR/config.json (if present: its vocab_size limits the ids; otherwise the tokenizer's own
  // size does).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromModelDir(const std::string& dir);

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const;
  // Appends the ids of `text` (valid UTF-8) to `ids`; on error `ids` keeps what was appended.
  absl::Status EncodeAppend(std::string_view text, std::vector<int32_t>* ids) const;
  // Encodes the longest prefix of `text` (valid UTF-8) whose ids no continuation of the text
  // can change, appends them to `ids` and returns the prefix's length in bytes (0 when no such
  // prefix is known yet). The cut is a pre-tokenizer piece boundary at least
  // kStableTailBytes (and the longest added token) before the end, with two more pieces after
  // it and no run of whitespace across it: a regex split there depends on nothing that
  // follows. Encode(a + b) == ids of the prefix + Encode(rest of a + b) for every b.
  absl::StatusOr<size_t> EncodeStablePrefix(std::string_view text, std::vector<int32_t>* ids) const;
  static constexpr size_t kStableTailBytes = 64;

  // Text of `ids` (valid UTF-8). With `skip_special`, tokens flagged special are left out.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                     bool skip_special = false) const;

  // OK when `id` is a token of this tokenizer and below the model's vocab size.
  absl::Status CheckId(int32_t id) const;
  // The raw bytes a token stands for (may be part of a UTF-8 character). Requires CheckId.
  std::string_view TokenBytes(int32_t id) const {
    return std::string_view(token_bytes_)
        .substr(token_offsets_[id], token_offsets_[id + 1] - token_offsets_[id]);
  }
  bool IsSpecial(int32_t id) const { return is_special_[id]; }

  // Id of an added token given its text, or -1.
  int32_t AddedTokenId(std::string_view content) const;
  // Id of the single-byte token for `byte`, or -1.
  int32_t ByteTokenId(uint8_t byte) const { return bpe_->ByteTokenId(byte); }

  // Highest token id + 1 in tokenizer.json.
  int64_t vocab_size() const { return static_cast<int64_t>(is_special_.size()); }
  // Ids must be below this (the model's embedding rows); defaults to vocab_size().
  int64_t model_vocab_size() const { return model_vocab_size_; }
  absl::Status SetModelVocabSize(int64_t model_vocab_size);

  // From tokenizer_config.json when loaded with FromModelDir; -1 when unknown.
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }

 private:
  Tokenizer() = default;

  std::unique_ptr<BpeModel> bpe_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<AddedTokenMatcher> added_matcher_;
  absl::flat_hash_map<std::string, int32_t> added_ids_;
  // Bytes of token i are token_bytes_[token_offsets_[i], token_offsets_[i + 1]).
  std::string token_bytes_;
  std::vector<uint32_t> token_offsets_;
  std::vector<bool> is_special_;
  std::vector<bool> is_known_;  // false for ids that are gaps in tokenizer.json
  int64_t model_vocab_size_ = 0;
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
};

// Turns a stream of ids into text without ever emitting broken UTF-8: bytes of a character
// that is not finished yet are held until the tokens completing it arrive; bytes that can no
// longer form a character become U+FFFD. The concatenated output equals Decode(all ids).
class StreamingDetokenizer {
 public:
  explicit StreamingDetokenizer(const Tokenizer* tokenizer, bool skip_special = false)
      : tokenizer_(tokenizer), skip_special_(skip_special) {}

  // Appends to `out` the text that `id` completes (possibly nothing).
  absl::Status Push(int32_t id, std::string* out);
  // End of stream: held bytes (an unfinished character) become U+FFFD.
  void Finish(std::string* out);
  size_t num_held_bytes() const { return held_.size(); }

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::string held_;
};

}  // namespace flotilla
