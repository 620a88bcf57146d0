// `flotilla`: the single-process tool (make-model, inspect, run, tokenizer tools, …).
#include <algorithm>
#include <cstdio>
#include <cstring>

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
  if (argc < 2 || !std::strcmp(argv[1], "help") || !std::strcmp(argv[1], "--help")) {
    std::printf("usage: flotilla COMMAND [ARGS]\n\ncommands:\n");
    for (const auto& c : table) std::printf("  %-18s %s\n", c.name, c.summary);
    return argc < 2 ? 2 : 0;
  }
  for (const auto& c : table) {
    if (!std::strcmp(argv[1], c.name)) {
      return c.fn(std::vector<std::string>(argv + 2, argv + argc));
    }
  }
  std::fprintf(stderr, "flotilla: unknown command '%s' (see 'flotilla help')\n", argv[1]);
  return 2;
}
