#include "tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer/string_view_compat.h"

namespace flotilla {
namespace {

// Oniguruma's \s for Unicode subjects: U+0009..U+000D, U+0085 and the separators Zs/Zl/Zp.
constexpr std::string_view kSpaceClassBody = "\\t-\\r\\x{85}\\p{Z}";

// One match-data block per thread, big enough for the whole-match offsets.
class ThreadMatchData {
 public:
  ThreadMatchData() : data_(pcre2_match_data_create(1, nullptr)) {}
  ~ThreadMatchData() { pcre2_match_data_free(data_); }
  pcre2_match_data* get() const { return data_; }

 private:
  pcre2_match_data* data_;
};

pcre2_match_data* MatchData() {
  thread_local ThreadMatchData data;
  return data.get();
}

}  // namespace

absl::StatusOr<std::string> TranslateOnigurumaPattern(std::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 32);
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[++i];
      if (e == 's') {
        if (in_class) {
          out.append(kSpaceClassBody);
        } else {
          out.append("[").append(kSpaceClassBody).append("]");
        }
      } else if (e == 'S') {
        if (in_class) {
          return absl::UnimplementedError(absl::StrCat(
              "regex: \\S inside a character class is not supported: ", AbslView(pattern)));
        }
        out.append("[^").append(kSpaceClassBody).append("]");
      } else {
        out.push_back('\\');
        out.push_back(e);
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out.push_back(c);
      // A ']' right after '[' or '[^' is a literal member.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out.push_back(pattern[++i]);
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out.push_back(pattern[++i]);
      continue;
    }
    if (in_class && c == '[') {
      return absl::UnimplementedError(
          absl::StrCat("regex: nested character classes are not supported: ", AbslView(pattern)));
    }
    if (in_class && c == ']') in_class = false;
    out.push_back(c);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Regex>> Regex::Compile(std::string_view pattern, bool literal) {
  std::string translated(pattern);
  uint32_t options = PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK;
  if (literal) {
    options |= PCRE2_LITERAL;
  } else {
    ASSIGN_OR_RETURN(translated, TranslateOnigurumaPattern(pattern));
  }
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()),
                                   translated.size(), options, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    return absl::InvalidArgumentError(
        absl::StrCat("regex '", AbslView(pattern), "' does not compile: ",
                     reinterpret_cast<const char*>(message), " at offset ", error_offset));
  }
  const bool jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return std::unique_ptr<Regex>(new Regex(std::string(pattern), code, jit));
}

Regex::~Regex() { pcre2_code_free(code_); }

absl::StatusOr<bool> Regex::Find(std::string_view subject, size_t start, size_t* match_begin,
                                 size_t* match_end) const {
  pcre2_match_data* md = MatchData();
  const auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
  const int rc =
      jit_ ? pcre2_jit_match(code_, s, subject.size(), start, 0, md, nullptr)
           : pcre2_match(code_, s, subject.size(), start, PCRE2_NO_UTF_CHECK, md, nullptr);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(rc, message, sizeof(message));
    return absl::ResourceExhaustedError(
        absl::StrCat("regex '", pattern_, "' failed on a ", subject.size(),
                     "-byte piece: ", reinterpret_cast<const char*>(message)));
  }
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
  *match_begin = ov[0];
  *match_end = ov[1];
  return true;
}

}  // namespace flotilla
