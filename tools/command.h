// Subcommands of the `flotilla` program. Each command file registers itself with
// FLOTILLA_COMMAND(name, summary, function); `flotilla help` lists them.
#pragma once

#include "common/status.h"

#include <string>
#include <vector>

namespace flotilla::cli {

using CommandFn = int (*)(const std::vector<std::string>& args);  // args after the name

struct CommandInfo {
  const char* name;
  const char* summary;
  CommandFn fn;
};

std::vector<CommandInfo>& CommandTable();

struct CommandRegistrar {
  CommandRegistrar(const char* name, const char* summary, CommandFn fn) {
    CommandTable().push_back({name, summary, fn});
  }
};

}  // namespace flotilla::cli

#define FLOTILLA_COMMAND(name, summary, fn) \
  static ::flotilla::cli::CommandRegistrar FLOTILLA_CONCAT(_cmd_registrar_, __LINE__)(name, summary, fn)
