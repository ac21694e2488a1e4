#include "paths.h"

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <filesystem>

#include "common.h"

namespace flashplus::cli {
namespace fs = std::filesystem;

std::string executable_dir() {
  std::error_code ec;
  const fs::path p = fs::read_symlink("/proc/self/exe", ec);  // Linux
  if (ec) return "";
  return p.parent_path().string();
}

std::vector<std::string> config_dirs() {
  std::vector<std::string> dirs;
  const std::string exe = executable_dir();
  if (!exe.empty()) {
    dirs.push_back((fs::path(exe) / ".." / "configs").lexically_normal().string());
    dirs.push_back((fs::path(exe) / ".." / ".." / "configs").lexically_normal().string());
    dirs.push_back(
        (fs::path(exe) / ".." / "share" / "flashplus" / "configs").lexically_normal().string());
  }
  dirs.push_back("configs");
#ifdef FLASHPLUS_CONFIG_SOURCE_DIR
  dirs.push_back(FLASHPLUS_CONFIG_SOURCE_DIR);
#endif
  std::vector<std::string> unique;  // the same directory reached two ways is listed once
  for (const auto& d : dirs) {
    std::error_code ec;
    const std::string key = fs::weakly_canonical(d, ec).string();
    bool seen = false;
    for (const auto& u : unique) seen = seen || fs::weakly_canonical(u, ec).string() == key;
    if (!seen) unique.push_back(d);
  }
  return unique;
}

std::string find_config(const std::string& relative) {
  std::string tried;
  for (const std::string& d : config_dirs()) {
    const fs::path p = fs::path(d) / relative;
    std::error_code ec;
    if (fs::is_regular_file(p, ec)) return p.string();
    tried += (tried.empty() ? "" : ", ") + p.string();
  }
  throw usage_error(
      fmt::format("cannot find {} (looked in: {}); pass the file explicitly", relative, tried));
}

namespace {
CLI::Validator number_at_least(double lo, bool strict, const char* what) {
  return CLI::Validator(
      [lo, strict, what](std::string& s) -> std::string {
        double v = 0;
        if (!CLI::detail::lexical_cast(s, v)) return fmt::format("'{}' is not a number", s);
        // NaN passes every comparison below, and inf means "never stop" to a time limit.
        if (!std::isfinite(v)) return fmt::format("{} must be a finite number {}", s, what);
        if (v < lo || (strict && v == lo)) return fmt::format("{} must be {}", s, what);
        return "";
      },
      what);
}
}  // namespace

const CLI::Validator& non_negative() {
  static const CLI::Validator v = number_at_least(0, false, ">= 0");
  return v;
}
const CLI::Validator& positive() {
  static const CLI::Validator v = number_at_least(0, true, "> 0");
  return v;
}

const CLI::Validator& unsigned_integer() {
  // Digits only, at most 2^64 - 1: CLI11 alone wraps "-1" to 2^64 - 1 and saturates "1e23".
  static const CLI::Validator v(
      [](std::string& s) -> std::string {
        if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos)
          return fmt::format("'{}' is not a non-negative integer (decimal digits only)", s);
        const std::string max = "18446744073709551615";
        const size_t nz = std::min(s.find_first_not_of('0'), s.size() - 1);
        const std::string digits = s.substr(nz);
        if (digits.size() > max.size() || (digits.size() == max.size() && digits > max))
          return fmt::format("{} does not fit in 64 bits (at most {})", s, max);
        return "";
      },
      "UINT64");
  return v;
}

Backend resolve_backend(const std::string& name) {
  Backend b;
  if (!parse_backend(name, &b))
    throw usage_error(fmt::format("unknown backend '{}' (expected cpu, cuda, hip or auto)", name));
  if (b == Backend::auto_select) b = best_backend();
  const auto compiled = compiled_backends();
  if (std::find(compiled.begin(), compiled.end(), b) == compiled.end()) {
    std::string list;
    for (Backend c : compiled) list += (list.empty() ? "" : ", ") + std::string(backend_name(c));
    throw Error(kExitRuntime, fmt::format("backend '{}' is not compiled into this build "
                                          "(compiled: {}); see `flashplus info`",
                                          backend_name(b), list));
  }
  return b;
}

}  // namespace flashplus::cli
