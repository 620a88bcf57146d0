// Subcommands of the `flotilla` program. Each command file registers itself with
// FLOTILLA_COMMAND(name, summary, usage, function); `flotilla help` lists them and
// `flotilla CMD --help` (or -h, or `flotilla help CMD`) prints the usage, before the command runs.
#pragma once

#include "common/status.h"

#include <string>
#include <vector>

namespace flotilla::cli {

using CommandFn = int (*)(const std::vector<std::string>& args);  // args after the name

struct CommandInfo {
  const char* name;
  const char* summary;  // one line
  const char* usage;    // "usage: flotilla NAME ..." and every flag, ending in a newline
  CommandFn fn;
};

std::vector<CommandInfo>& CommandTable();

struct CommandRegistrar {
  CommandRegistrar(const char* name, const char* summary, const char* usage, CommandFn fn) {
    CommandTable().push_back({name, summary, usage, fn});
  }
};

}  // namespace flotilla::cli

#define FLOTILLA_COMMAND(name, summary, usage, fn)                                      \
  static ::flotilla::cli::CommandRegistrar FLOTILLA_CONCAT(_cmd_registrar_, __LINE__)( \
      name, summary, usage, fn)
