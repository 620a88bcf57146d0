#include "common/version.h"

namespace flotilla {

const char* Version() { return FLOTILLA_VERSION; }

std::string VersionLine(const std::string& program) {
  return program + " (Flotilla) " + FLOTILLA_VERSION + "\n";
}

}  // namespace flotilla
