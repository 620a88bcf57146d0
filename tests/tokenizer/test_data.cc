#include "tests/tokenizer/test_data.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace flotilla::testing {

std::string RepoPath(const std::string& relative) {
  return std::string(FLOTILLA_REPO_ROOT) + "/" + relative;
}

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cannot open test data %s\n", path.c_str());
    std::abort();
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

nlohmann::ordered_json ReadJsonOrDie(const std::string& path) {
  return nlohmann::ordered_json::parse(ReadFileOrDie(path));
}

const Tokenizer& ProjectTokenizer() {
  static const Tokenizer* tok = [] {
    auto t = Tokenizer::FromFile(RepoPath("data/tokenizer/tokenizer.json"));
    if (!t.ok()) {
      std::fprintf(stderr, "%s\n", std::string(t.status().message()).c_str());
      std::abort();
    }
    return t->release();
  }();
  return *tok;
}

}  // namespace flotilla::testing
