// The release of this build, for --version of every program.
#pragma once

#include <string>

namespace flotilla {

const char* Version();  // "0.1.0"
// "PROGRAM (Flotilla) 0.1.0\n"
std::string VersionLine(const std::string& program);

}  // namespace flotilla
