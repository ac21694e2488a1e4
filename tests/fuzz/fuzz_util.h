// Shared by the fuzz targets: the contract every parser promises (a usage error naming the input,
// nothing else escapes), and a scratch file for the loaders that read from a path.
#pragma once
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "common.h"

namespace flashplus::fuzz {

// Any exception other than cli::Error escapes the target and libFuzzer reports it as a crash
// (std::terminate). A cli::Error must be a usage error whose message starts with the file name.
inline void check_error(const cli::Error& e, const std::string& name) {
  const std::string m = e.what();
  if (e.exit_code() != cli::kExitUsage || m.rfind(name, 0) != 0) {
    std::fprintf(stderr, "bad error (exit %d): %s\n", e.exit_code(), m.c_str());
    std::abort();
  }
}

// One file per process, rewritten with each input (the config and suite loaders take a path);
// removed at exit. Plain storage, so the exit handler never sees a destroyed string.
inline char g_scratch[4096];
inline std::string scratch_path(const char* suffix) {
  if (!g_scratch[0]) {
    const char* dir = std::getenv("TMPDIR");
    const std::string p = std::string(dir && *dir ? dir : "/tmp") + "/flashplus-fuzz-XXXXXX" + suffix;
    if (p.size() >= sizeof g_scratch) std::abort();
    p.copy(g_scratch, p.size());
    const int fd = ::mkstemps(g_scratch, static_cast<int>(std::string(suffix).size()));
    if (fd < 0) std::abort();
    ::close(fd);
    std::atexit([] { std::remove(g_scratch); });
  }
  return g_scratch;
}

inline void write_scratch(const std::string& path, const uint8_t* data, size_t size) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  if (std::fclose(f) != 0) std::abort();
}

}  // namespace flashplus::fuzz
