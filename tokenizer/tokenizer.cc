#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "nlohmann/json.hpp"
#include "tokenizer/byte_level.h"
#include "tokenizer/string_view_compat.h"
#include "tokenizer/utf8.h"

namespace flotilla {
namespace {

using json = nlohmann::json;

constexpr int64_t kMaxTokenizerSize = int64_t{1} << 24;  // ids are dense; refuse absurd ones

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (!in.good() && !in.eof()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return std::move(ss).str();
}

absl::StatusOr<json> ParseJson(std::string_view text, std::string_view what) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded())
    return absl::InvalidArgumentError(absl::StrCat(AbslView(what), " is not valid JSON"));
  return j;
}

// Bytes a token string stands for, as HF's ByteLevel decoder computes them: each character
// through the byte alphabet, or, if any character is outside it, the string's own UTF-8.
void AppendTokenBytes(std::string_view token, std::string* out) {
  std::string mapped;
  size_t i = 0;
  while (i < token.size()) {
    const auto lead = static_cast<uint8_t>(token[i]);
    const size_t len = utf8::SequenceLength(lead);
    int byte = -1;
    if (len == 1) {
      byte = byte_level::CodepointToByte(lead);
    } else if (len == 2 && i + 1 < token.size()) {
      byte = byte_level::CodepointToByte(((lead & 0x1Fu) << 6) | (token[i + 1] & 0x3Fu));
    }
    if (byte < 0) {
      out->append(token);
      return;
    }
    mapped.push_back(static_cast<char>(byte));
    i += len;
  }
  out->append(mapped);
}

bool BoolOr(const json& obj, const char* key, bool fallback) {
  const auto it = obj.find(key);
  return it != obj.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

std::string StringOr(const json& obj, const char* key, const char* fallback) {
  const auto it = obj.find(key);
  return it != obj.end() && it->is_string() ? it->get<std::string>() : fallback;
}

bool IsNullOrAbsent(const json& obj, const char* key) {
  const auto it = obj.find(key);
  return it == obj.end() || it->is_null();
}

const json& Field(const json& obj, const char* key) {
  static const json kNull;
  const auto it = obj.find(key);
  return it == obj.end() ? kNull : *it;
}

absl::Status CheckSupported(const json& root) {
  const json& normalizer = Field(root, "normalizer");
  if (!normalizer.is_null() && !(StringOr(normalizer, "type", "") == "Sequence" &&
                                 Field(normalizer, "normalizers").empty())) {
    return absl::UnimplementedError("tokenizer.json: only an empty normalizer is supported");
  }
  const json& post = Field(root, "post_processor");
  if (!post.is_null() && StringOr(post, "type", "") != "ByteLevel") {
    return absl::UnimplementedError(
        "tokenizer.json: post_processor must be ByteLevel or null (the tokenizer never adds "
        "BOS/EOS; the chat encoder writes them)");
  }
  if (StringOr(Field(root, "decoder"), "type", "") != "ByteLevel") {
    return absl::UnimplementedError("tokenizer.json: decoder must be ByteLevel");
  }
  const json& model = Field(root, "model");
  if (StringOr(model, "type", "BPE") != "BPE") {
    return absl::UnimplementedError("tokenizer.json: model type must be BPE");
  }
  if (BoolOr(model, "byte_fallback", false) || BoolOr(model, "ignore_merges", false) ||
      !IsNullOrAbsent(model, "dropout") || !IsNullOrAbsent(model, "continuing_subword_prefix") ||
      !IsNullOrAbsent(model, "end_of_word_suffix")) {
    return absl::UnimplementedError(
        "tokenizer.json: BPE options byte_fallback, ignore_merges, dropout, "
        "continuing_subword_prefix and end_of_word_suffix are not supported");
  }
  return absl::OkStatus();
}

// "content" of a tokenizer_config.json token entry (a string or an AddedToken object).
std::string TokenContent(const json& entry) {
  if (entry.is_string()) return entry.get<std::string>();
  if (entry.is_object() && entry.contains("content") && entry["content"].is_string()) {
    return entry["content"].get<std::string>();
  }
  return "";
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(const std::string text, ReadFile(path));
  auto tok = FromJsonText(text);
  if (!tok.ok()) {
    return absl::Status(tok.status().code(), absl::StrCat(path, ": ", tok.status().message()));
  }
  return tok;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJsonText(std::string_view json_text) {
  ASSIGN_OR_RETURN(const json root, ParseJson(json_text, "tokenizer.json"));
  if (!root.is_object() || !root.contains("model") || !root["model"].is_object()) {
    return absl::InvalidArgumentError("tokenizer.json: no 'model' object");
  }
  RETURN_IF_ERROR(CheckSupported(root));
  const json& model = root["model"];
  if (!model.contains("vocab") || !model["vocab"].is_object() || !model.contains("merges") ||
      !model["merges"].is_array()) {
    return absl::InvalidArgumentError("tokenizer.json: model needs 'vocab' and 'merges'");
  }

  auto tok = std::unique_ptr<Tokenizer>(new Tokenizer());
  absl::flat_hash_map<std::string, int32_t> vocab;
  vocab.reserve(model["vocab"].size());
  int64_t max_id = -1;
  for (const auto& [token, id_node] : model["vocab"].items()) {
    if (!id_node.is_number_integer() || id_node.get<int64_t>() < 0 ||
        id_node.get<int64_t>() >= kMaxTokenizerSize) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.json: vocab entry '", token, "' has a bad id"));
    }
    const auto id = id_node.get<int32_t>();
    vocab.emplace(token, id);
    max_id = std::max<int64_t>(max_id, id);
  }

  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(model["merges"].size());
  for (const json& m : model["merges"]) {
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: bad merge '", s, "'"));
      }
      merges.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      return absl::InvalidArgumentError("tokenizer.json: a merge is neither 'a b' nor [a, b]");
    }
  }
  ASSIGN_OR_RETURN(tok->bpe_, BpeModel::Create(vocab, merges));

  std::vector<AddedToken> added;
  for (const json& a : Field(root, "added_tokens")) {
    if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
        !a.contains("content") || !a["content"].is_string() || a["id"].get<int64_t>() < 0 ||
        a["id"].get<int64_t>() >= kMaxTokenizerSize) {
      return absl::InvalidArgumentError("tokenizer.json: malformed added_tokens entry");
    }
    AddedToken t;
    t.id = a["id"].get<int32_t>();
    t.content = a["content"].get<std::string>();
    t.special = BoolOr(a, "special", false);
    t.normalized = BoolOr(a, "normalized", !t.special);
    if (BoolOr(a, "lstrip", false) || BoolOr(a, "rstrip", false) ||
        BoolOr(a, "single_word", false)) {
      return absl::UnimplementedError(absl::StrCat("tokenizer.json: added token '", t.content,
                                                   "' uses lstrip/rstrip/single_word"));
    }
    if (t.content.empty() || !utf8::IsValid(t.content)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.json: added token ", t.id, " has empty or invalid content"));
    }
    max_id = std::max<int64_t>(max_id, t.id);
    tok->added_ids_[t.content] = t.id;
    added.push_back(std::move(t));
  }
  tok->added_matcher_ = std::make_unique<AddedTokenMatcher>(added);

  ASSIGN_OR_RETURN(PreTokenizer pre, PreTokenizer::FromJson(Field(root, "pre_tokenizer")));
  tok->pre_tokenizer_ = std::make_unique<PreTokenizer>(std::move(pre));

  if (max_id < 0 || max_id >= kMaxTokenizerSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer.json: token ids must lie in [0, ", kMaxTokenizerSize, ")"));
  }
  // Decode table: an added token's content wins over a vocab entry with the same id.
  const size_t n = static_cast<size_t>(max_id + 1);
  std::vector<const std::string*> strings(n, nullptr);
  for (const auto& [token, id] : vocab) strings[id] = &token;
  tok->is_special_.assign(n, false);
  for (const AddedToken& t : added) {
    strings[t.id] = &t.content;
    tok->is_special_[t.id] = t.special;
  }
  tok->is_known_.assign(n, false);
  tok->token_offsets_.reserve(n + 1);
  for (size_t id = 0; id < n; ++id) {
    tok->token_offsets_.push_back(static_cast<uint32_t>(tok->token_bytes_.size()));
    if (strings[id] != nullptr) {
      tok->is_known_[id] = true;
      AppendTokenBytes(*strings[id], &tok->token_bytes_);
    }
  }
  tok->token_offsets_.push_back(static_cast<uint32_t>(tok->token_bytes_.size()));
  tok->model_vocab_size_ = static_cast<int64_t>(n);
  return tok;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromModelDir(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path root(dir);
  ASSIGN_OR_RETURN(auto tok, FromFile((root / "tokenizer.json").string()));

  const fs::path config_path = root / "tokenizer_config.json";
  if (fs::exists(config_path)) {
    ASSIGN_OR_RETURN(const std::string text, ReadFile(config_path.string()));
    ASSIGN_OR_RETURN(const json cfg, ParseJson(text, config_path.string()));
    if (!cfg.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(config_path.string(), ": not an object"));
    }
    for (const char* key : {"add_bos_token", "add_eos_token"}) {
      if (BoolOr(cfg, key, false)) {
        return absl::UnimplementedError(
            absl::StrCat(config_path.string(), ": ", key,
                         " is true, but this runtime's tokenizer never adds BOS/EOS (the chat "
                         "encoder writes BOS as text)"));
      }
    }
    tok->bos_id_ = tok->AddedTokenId(TokenContent(Field(cfg, "bos_token")));
    tok->eos_id_ = tok->AddedTokenId(TokenContent(Field(cfg, "eos_token")));
  }

  const fs::path model_config = root / "config.json";
  if (fs::exists(model_config)) {
    ASSIGN_OR_RETURN(const std::string text, ReadFile(model_config.string()));
    ASSIGN_OR_RETURN(const json cfg, ParseJson(text, model_config.string()));
    if (cfg.is_object() && cfg.contains("vocab_size")) {
      const json& v = cfg["vocab_size"];
      if (!v.is_number_integer() || v.get<int64_t>() <= 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(model_config.string(), ": vocab_size must be a positive integer"));
      }
      RETURN_IF_ERROR(tok->SetModelVocabSize(v.get<int64_t>()));
    }
  }
  return tok;
}

absl::Status Tokenizer::SetModelVocabSize(int64_t model_vocab_size) {
  if (model_vocab_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model vocab_size must be positive, got ", model_vocab_size));
  }
  model_vocab_size_ = model_vocab_size;
  return absl::OkStatus();
}

int32_t Tokenizer::AddedTokenId(std::string_view content) const {
  const auto it = added_ids_.find(AbslView(content));
  return it == added_ids_.end() ? -1 : it->second;
}

absl::Status Tokenizer::CheckId(int32_t id) const {
  if (id < 0) return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is negative"));
  if (id >= model_vocab_size_) {
    return absl::OutOfRangeError(absl::StrCat("token id ", id,
                                              " is outside the model's vocabulary (vocab_size ",
                                              model_vocab_size_, ")"));
  }
  if (static_cast<size_t>(id) >= is_known_.size() || !is_known_[id]) {
    return absl::OutOfRangeError(absl::StrCat("token id ", id,
                                              " has no token in tokenizer.json (tokenizer size ",
                                              is_known_.size(), ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  RETURN_IF_ERROR(EncodeAppend(text, &ids));
  return ids;
}

absl::Status Tokenizer::EncodeAppend(std::string_view text, std::vector<int32_t>* ids) const {
  const size_t bad = utf8::FindInvalid(text);
  if (bad != text.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("text is not valid UTF-8 (byte offset ", bad, ")"));
  }
  if (text.size() >= (size_t{1} << 32)) {
    return absl::InvalidArgumentError("text is larger than 4 GiB");
  }
  const size_t first = ids->size();
  absl::Status status;
  added_matcher_->Split(text, [&](std::string_view segment, int32_t token_id) {
    if (!status.ok()) return;
    if (token_id >= 0) {
      ids->push_back(token_id);
      return;
    }
    status = pre_tokenizer_->Split(segment,
                                   [&](std::string_view piece) { bpe_->EncodePiece(piece, ids); });
  });
  RETURN_IF_ERROR(status);
  for (size_t i = first; i < ids->size(); ++i) {
    if ((*ids)[i] >= model_vocab_size_) {
      return absl::OutOfRangeError(absl::StrCat(
          "the text encodes to token id ", (*ids)[i],
          ", which is outside the model's vocabulary (vocab_size ", model_vocab_size_, ")"));
    }
  }
  return absl::OkStatus();
}

namespace {

// Unicode White_Space (what PCRE2's \\s matches with UCP).
bool IsSpaceCodepoint(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

// The code point starting at text[pos] (valid UTF-8).
uint32_t CodepointAt(std::string_view text, size_t pos) {
  const uint8_t lead = static_cast<uint8_t>(text[pos]);
  const size_t len = utf8::SequenceLength(lead);
  if (len == 1) return lead;
  uint32_t cp = lead & (0x7F >> len);
  for (size_t i = 1; i < len && pos + i < text.size(); ++i) {
    cp = (cp << 6) | (static_cast<uint8_t>(text[pos + i]) & 0x3F);
  }
  return cp;
}

// The code point ending just before text[pos] (valid UTF-8, pos > 0).
uint32_t CodepointBefore(std::string_view text, size_t pos) {
  size_t start = pos - 1;
  while (start > 0 && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) --start;
  return CodepointAt(text, start);
}

}  // namespace

absl::StatusOr<size_t> Tokenizer::EncodeStablePrefix(std::string_view text,
                                                     std::vector<int32_t>* ids) const {
  const size_t keep = std::max(kStableTailBytes, added_matcher_->max_token_bytes());
  if (text.size() <= keep) return size_t{0};
  const size_t limit = text.size() - keep;
  // Where each piece starts (added tokens count as pieces), in text order.
  std::vector<size_t> starts;
  absl::Status status;
  added_matcher_->Split(text, [&](std::string_view segment, int32_t token_id) {
    if (!status.ok()) return;
    if (token_id >= 0) {
      starts.push_back(static_cast<size_t>(segment.data() - text.data()));
      return;
    }
    status = pre_tokenizer_->Split(segment, [&](std::string_view piece) {
      starts.push_back(static_cast<size_t>(piece.data() - text.data()));
    });
  });
  RETURN_IF_ERROR(status);
  size_t cut = 0;
  for (size_t i = starts.size(); i-- > 1;) {
    const size_t b = starts[i];
    if (b > limit || i + 2 >= starts.size()) continue;
    // No whitespace run across the cut: at most a single space that starts a word.
    if (IsSpaceCodepoint(CodepointBefore(text, b))) continue;
    if (IsSpaceCodepoint(CodepointAt(text, b)) &&
        (text[b] != ' ' || IsSpaceCodepoint(CodepointAt(text, b + 1)))) {
      continue;
    }
    cut = b;
    break;
  }
  starts = {};
  if (cut == 0) return size_t{0};
  RETURN_IF_ERROR(EncodeAppend(text.substr(0, cut), ids));
  return cut;
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids,
                                              bool skip_special) const {
  std::string bytes;
  for (const int32_t id : ids) {
    RETURN_IF_ERROR(CheckId(id));
    if (skip_special && is_special_[id]) continue;
    bytes.append(TokenBytes(id));
  }
  if (utf8::IsValid(bytes)) return bytes;
  std::string text;
  text.reserve(bytes.size() + 8);
  utf8::AppendLossy(bytes, /*final=*/true, &text);
  return text;
}

absl::Status StreamingDetokenizer::Push(int32_t id, std::string* out) {
  RETURN_IF_ERROR(tokenizer_->CheckId(id));
  if (skip_special_ && tokenizer_->IsSpecial(id)) return absl::OkStatus();
  held_.append(tokenizer_->TokenBytes(id));
  const size_t consumed = utf8::AppendLossy(held_, /*final=*/false, out);
  held_.erase(0, consumed);
  return absl::OkStatus();
}

void StreamingDetokenizer::Finish(std::string* out) {
  utf8::AppendLossy(held_, /*final=*/true, out);
  held_.clear();
}

}  // namespace flotilla
