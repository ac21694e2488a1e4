// Where the CLI finds its data files (configs/) relative to the executable.
#pragma once
#include <string>
#include <vector>

namespace flashplus::cli {

// Directory of the running executable ("" when unknown).
std::string executable_dir();

// Candidate locations of configs/, in search order: next to the executable (../configs,
// ../../configs: build trees), the install prefix (../share/flashplus/configs), the current
// directory (./configs), and finally the source tree this binary was built from.
std::vector<std::string> config_dirs();

// Resolves `relative` (e.g. "suites/ci.json") against config_dirs(); throws a usage error
// listing every place tried when it is nowhere.
std::string find_config(const std::string& relative);

}  // namespace flashplus::cli
