// Paths and loaders for the tokenizer / chat-encoding test data kept in the repository.
#pragma once

#include <string>

#include "tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace flotilla::testing {

std::string RepoPath(const std::string& relative);  // FLOTILLA_REPO_ROOT/relative
std::string ReadFileOrDie(const std::string& path);
nlohmann::ordered_json ReadJsonOrDie(const std::string& path);
// The project's tokenizer (data/tokenizer/tokenizer.json), loaded once.
const Tokenizer& ProjectTokenizer();

}  // namespace flotilla::testing
