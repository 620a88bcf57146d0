// `flotilla`: the single-process tool (make-model, inspect, run, tokenizer tools, …).
//   flotilla help [COMMAND] | flotilla --version | flotilla COMMAND [ARGS] (--help anywhere in
//   ARGS prints the command's usage instead of running it)
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

#include "common/version.h"
#include "tools/command.h"

namespace flotilla::cli {

std::vector<CommandInfo>& CommandTable() {
  static std::vector<CommandInfo> table;
  return table;
}

}  // namespace flotilla::cli

int main(int argc, char** argv) {
  auto& table = flotilla::cli::CommandTable();
  std::sort(table.begin(), table.end(),
            [](const auto& a, const auto& b) { return std::strcmp(a.name, b.name) < 0; });
  auto find = [&](const std::string& name) -> const flotilla::cli::CommandInfo* {
    for (const auto& c : table)
      if (name == c.name) return &c;
    return nullptr;
  };
  const std::string first = argc >= 2 ? argv[1] : "";
  if (first == "--version" || first == "version") {
    std::fputs(flotilla::VersionLine("flotilla").c_str(), stdout);
    return 0;
  }
  if (argc < 2 || first == "help" || first == "--help" || first == "-h") {
    if (argc >= 3 && first == "help") {
      const auto* c = find(argv[2]);
      if (c == nullptr) {
        std::fprintf(stderr, "flotilla: unknown command '%s' (see 'flotilla help')\n", argv[2]);
        return 2;
      }
      std::fputs(c->usage, stdout);
      return 0;
    }
    std::FILE* out = argc < 2 ? stderr : stdout;
    std::fprintf(out,
                 "usage: flotilla COMMAND [ARGS]   (flotilla COMMAND --help: its flags; "
                 "flotilla --version)\n\ncommands:\n");
    for (const auto& c : table) std::fprintf(out, "  %-18s %s\n", c.name, c.summary);
    return argc < 2 ? 2 : 0;
  }
  const auto* c = find(first);
  if (c == nullptr) {
    std::fprintf(stderr, "flotilla: unknown command '%s' (see 'flotilla help')\n", argv[1]);
    return 2;
  }
  std::vector<std::string> args(argv + 2, argv + argc);
  if (std::find_if(args.begin(), args.end(),
                   [](const std::string& a) { return a == "--help" || a == "-h"; }) != args.end()) {
    std::fputs(c->usage, stdout);
    return 0;
  }
  return c->fn(args);
}
