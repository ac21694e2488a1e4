// Strict reading of JSON config files: every error names the file, the key (as a path such as
// "axes.window[1]") and the reason, and unknown keys are rejected, so a typo never silently
// becomes a default.
#pragma once
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "common.h"

namespace flashplus::cli {

using json = nlohmann::json;

// Deeper nesting is refused while parsing (no config or suite needs more than a few levels).
constexpr int kMaxJsonDepth = 64;

class JsonChecker {
 public:
  explicit JsonChecker(std::string file) : file_(std::move(file)) {}
  const std::string& file() const { return file_; }

  // Reads (at most kMaxJsonBytes) and parses the file; syntax errors name the line and column.
  // Refused too: NUL bytes, nesting deeper than kMaxJsonDepth, a key twice in one object, and
  // numbers that overflow (1e400), each with a message naming the file.
  json load() const;
  json parse_text(const std::string& text) const;

  // A short rendering of `j` for messages (at most ~60 characters, two levels deep).
  static std::string preview(const json& j);

  // "<file>: key '<key>': <reason>" as a usage error.
  [[noreturn]] void fail(const std::string& key, const std::string& reason) const;
  [[noreturn]] void fail_file(const std::string& reason) const;

  void require_object(const json& j, const std::string& key) const;
  // Rejects keys of `obj` not in `allowed` (`where` is the object's own key path, "" at top).
  void check_keys(const json& obj, const std::string& where,
                  const std::set<std::string>& allowed) const;

  // Typed reads of `j` (the value found at `key`).
  int to_int(const json& j, const std::string& key, long long lo, long long hi) const;
  double to_number(const json& j, const std::string& key, double lo, double hi) const;
  bool to_bool(const json& j, const std::string& key) const;
  std::string to_string(const json& j, const std::string& key) const;
  std::string to_choice(const json& j, const std::string& key,
                        const std::vector<std::string>& choices) const;
  DType to_dtype(const json& j, const std::string& key) const;
  // [left, right] sliding window; each -1 (unbounded) or >= 0.
  std::pair<int, int> to_window(const json& j, const std::string& key) const;
  // A non-empty list (a scalar counts as a one-element list when `scalar_ok`).
  std::vector<json> to_list(const json& j, const std::string& key, bool scalar_ok = false) const;

  static std::string join(const std::string& where, const std::string& key);
  static std::string index(const std::string& key, size_t i);

 private:
  std::string file_;
};

}  // namespace flashplus::cli
