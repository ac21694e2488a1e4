#include "json_check.h"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace flashplus::cli {

json JsonChecker::load() const {
  std::error_code ec;
  if (!std::filesystem::exists(file_, ec)) throw usage_error(file_ + ": no such file");
  std::ifstream f(file_);
  if (!f) throw usage_error(file_ + ": cannot open");
  std::ostringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    // Translate the byte offset into line:column, which is what an editor shows.
    size_t line = 1, col = 1;
    for (size_t i = 0; i < text.size() && i + 1 < e.byte; ++i) {
      if (text[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    std::string what = e.what();
    const auto pos = what.find("syntax error");
    if (pos != std::string::npos) what = what.substr(pos);
    throw usage_error(fmt::format("{}:{}:{}: invalid JSON: {}", file_, line, col, what));
  }
}

void JsonChecker::fail(const std::string& key, const std::string& reason) const {
  throw usage_error(fmt::format("{}: key '{}': {}", file_, key, reason));
}
void JsonChecker::fail_file(const std::string& reason) const {
  throw usage_error(fmt::format("{}: {}", file_, reason));
}

std::string JsonChecker::join(const std::string& where, const std::string& key) {
  return where.empty() ? key : where + "." + key;
}
std::string JsonChecker::index(const std::string& key, size_t i) {
  return fmt::format("{}[{}]", key, i);
}

void JsonChecker::require_object(const json& j, const std::string& key) const {
  if (!j.is_object()) {
    if (key.empty())
      fail_file(fmt::format("expected a JSON object at top level, got {}", j.type_name()));
    fail(key, fmt::format("expected an object, got {}", j.type_name()));
  }
}

void JsonChecker::check_keys(const json& obj, const std::string& where,
                             const std::set<std::string>& allowed) const {
  require_object(obj, where);
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    if (!allowed.count(it.key())) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      fail(join(where, it.key()), fmt::format("unknown key (allowed here: {})", list));
    }
  }
}

int JsonChecker::to_int(const json& j, const std::string& key, long long lo, long long hi) const {
  if (!j.is_number_integer())
    fail(key, fmt::format("expected an integer, got {} {}", j.type_name(), j.dump()));
  const long long v = j.get<long long>();
  if (v < lo || v > hi) fail(key, fmt::format("{} is out of range [{}, {}]", v, lo, hi));
  return static_cast<int>(v);
}

double JsonChecker::to_number(const json& j, const std::string& key, double lo, double hi) const {
  if (!j.is_number())
    fail(key, fmt::format("expected a number, got {} {}", j.type_name(), j.dump()));
  const double v = j.get<double>();
  if (!std::isfinite(v) || v < lo || v > hi)
    fail(key, fmt::format("{} is out of range [{}, {}]", v, lo, hi));
  return v;
}

bool JsonChecker::to_bool(const json& j, const std::string& key) const {
  if (!j.is_boolean()) fail(key, fmt::format("expected true or false, got {}", j.dump()));
  return j.get<bool>();
}

std::string JsonChecker::to_string(const json& j, const std::string& key) const {
  if (!j.is_string())
    fail(key, fmt::format("expected a string, got {} {}", j.type_name(), j.dump()));
  return j.get<std::string>();
}

std::string JsonChecker::to_choice(const json& j, const std::string& key,
                                   const std::vector<std::string>& choices) const {
  const std::string s = to_string(j, key);
  std::string list;
  for (const auto& c : choices) {
    if (s == c) return s;
    list += (list.empty() ? "" : ", ") + ("\"" + c + "\"");
  }
  fail(key, fmt::format("unknown value \"{}\" (expected one of {})", s, list));
}

DType JsonChecker::to_dtype(const json& j, const std::string& key) const {
  DType t;
  const std::string s = to_string(j, key);
  if (!parse_dtype(s, &t))
    fail(key, fmt::format("unknown dtype \"{}\" (expected \"fp32\", \"fp16\" or \"bf16\")", s));
  return t;
}

std::pair<int, int> JsonChecker::to_window(const json& j, const std::string& key) const {
  if (!j.is_array() || j.size() != 2)
    fail(key,
         fmt::format("expected [left, right] (two integers, -1 = unbounded), got {}", j.dump()));
  const int l = to_int(j[0], index(key, 0), -1, 1 << 30);
  const int r = to_int(j[1], index(key, 1), -1, 1 << 30);
  return {l, r};
}

std::vector<json> JsonChecker::to_list(const json& j, const std::string& key,
                                       bool scalar_ok) const {
  if (!j.is_array()) {
    if (scalar_ok) return {j};
    fail(key, fmt::format("expected a list, got {} {}", j.type_name(), j.dump()));
  }
  if (j.empty()) fail(key, "the list is empty");
  return std::vector<json>(j.begin(), j.end());
}

}  // namespace flashplus::cli
