// Running the `flashplus` executable from tests, in a temporary folder of their own.
#pragma once
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "npy.h"

namespace flashplus::clitest {

struct Result {
  int code = -1;
  std::string output;  // stdout and stderr together
};

#ifdef FLASHPLUS_CLI_PATH
// Runs `flashplus ARGS` (in `cwd` when given) and returns its exit code and output.
inline Result run_cli(const std::string& args, const std::string& cwd = "") {
  std::string cmd = std::string("'") + FLASHPLUS_CLI_PATH + "' " + args + " 2>&1";
  if (!cwd.empty()) cmd = "cd '" + cwd + "' && " + cmd;
  Result r;
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p);
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  const int st = pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}
#endif

// A fresh folder under the system temp dir, removed with everything in it.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() / ("flashplus_cli_test_" + std::to_string(rd()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path / name).string(); }
  std::string dir() const { return path.string(); }
  // File names in the folder, sorted.
  std::vector<std::string> listing() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(path))
      out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
  void write(const std::string& name, const std::string& bytes) const {
    std::ofstream(file(name), std::ios::binary) << bytes;
  }
  void write_npy(const std::string& name, const std::vector<float>& v,
                 const std::vector<int64_t>& shape) const {
    write(name, cli::encode_npy(v.data(), shape));
  }
  void write_npy_i32(const std::string& name, const std::vector<int32_t>& v,
                     const std::vector<int64_t>& shape) const {
    write(name, cli::encode_npy_int32(v.data(), shape));
  }
};

}  // namespace flashplus::clitest
