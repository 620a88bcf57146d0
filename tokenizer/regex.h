// A compiled PCRE2 regular expression (UTF + Unicode properties, JIT when available) written
// in the dialect of tokenizer.json (Oniguruma).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"

struct pcre2_real_code_8;

namespace flotilla {

class Regex {
 public:
  // `pattern` uses Oniguruma semantics; `\s` / `\S` are rewritten to Oniguruma's Unicode
  // definition (\t-\r, U+0085 and the Z categories), which differs from PCRE2's by U+180E.
  // With `literal`, the pattern is matched as a plain string.
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(std::string_view pattern,
                                                        bool literal = false);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Finds the leftmost match in subject[start, subject.size()); the subject must be valid
  // UTF-8 (it is not re-checked). Returns false when there is none, an error when PCRE2 gives
  // up (resource limits). Thread-safe.
  absl::StatusOr<bool> Find(std::string_view subject, size_t start, size_t* match_begin,
                            size_t* match_end) const;

  const std::string& pattern() const { return pattern_; }

 private:
  Regex(std::string pattern, pcre2_real_code_8* code, bool jit)
      : pattern_(std::move(pattern)), code_(code), jit_(jit) {}

  std::string pattern_;
  pcre2_real_code_8* code_;
  bool jit_;
};

// Rewrites an Oniguruma pattern for PCRE2 (see Regex::Compile).
absl::StatusOr<std::string> TranslateOnigurumaPattern(std::string_view pattern);

}  // namespace flotilla
