// Helpers shared by test_bench.cpp and test_autotune.cpp: run the built CLI, temp folders.
#pragma once
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

namespace flashplus::benchtest {

namespace fs = std::filesystem;

struct CliResult {
  int code = -1;
  std::string out;  // stdout
};

// Runs `flashplus <args>` with $XDG_CACHE_HOME = `cache` (when given); stderr goes to `err_file`.
#ifdef FLASHPLUS_CLI_PATH
inline CliResult run_flashplus(const std::string& args, const std::string& cache = "",
                               const std::string& err_file = "/dev/null") {
  std::string cmd;
  if (!cache.empty()) cmd += "XDG_CACHE_HOME='" + cache + "' ";
  cmd += std::string("'") + FLASHPLUS_CLI_PATH + "' " + args + " 2>'" + err_file + "'";
  CliResult r;
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p);
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int st = pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}
#endif

struct Tmp {
  fs::path path;
  explicit Tmp(const std::string& tag) {
    std::random_device rd;
    path = fs::temp_directory_path() / ("flashplus_" + tag + "_" + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~Tmp() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
  std::string write(const std::string& name, const std::string& text) const {
    fs::create_directories(fs::path(file(name)).parent_path());
    std::ofstream(file(name), std::ios::binary) << text;
    return file(name);
  }
  std::string read(const std::string& name) const {
    std::ifstream f(file(name), std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
};

// A tiny model config (fast on the CPU): 2 heads, d 32, seqlen 64, batch 1, fp32.
inline std::string tiny_model(const std::string& name = "tiny", bool causal = true) {
  return std::string(R"({"schema_version": 1, "name": ")") + name +
         R"(", "nheads": 2, "nheads_k": 1, "head_dim": 32, "mask": {"causal": )" +
         (causal ? "true" : "false") +
         R"(}, "dtype": "fp32", "batch_sizes": [1], "seqlens": [64], "modes": ["fwd", "bwd"]})";
}

}  // namespace flashplus::benchtest
