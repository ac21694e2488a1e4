#include "json_check.h"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>

#include "file_io.h"

namespace flashplus::cli {

json JsonChecker::load() const { return parse_text(read_file_bounded(file_, kMaxJsonBytes)); }

json JsonChecker::parse_text(const std::string& text) const {
  // A NUL would end the text for some readers and not others: what follows it is not ignored.
  if (const size_t nul = text.find('\0'); nul != std::string::npos)
    fail_file(fmt::format("contains a NUL byte at offset {}; not a JSON text file", nul));
  // Strict reading while parsing: nesting is bounded (deep values would exhaust the stack of
  // anything that walks them recursively), and a key given twice in one object is refused
  // (nlohmann keeps the last silently: a typo'd copy would override the real value).
  std::vector<std::set<std::string>> keys;
  auto strict = [&](int depth, json::parse_event_t event, json& parsed) -> bool {
    if (depth > kMaxJsonDepth)
      fail_file(fmt::format("nested deeper than {} levels", kMaxJsonDepth));
    switch (event) {
      case json::parse_event_t::object_start:
        keys.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case json::parse_event_t::key:
        if (!keys.empty() && !keys.back().insert(parsed.get<std::string>()).second)
          fail_file(fmt::format("key '{}' appears twice in the same object",
                                parsed.get<std::string>()));
        break;
      default:
        break;
    }
    return true;
  };
  try {
    return json::parse(text, strict);
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
  } catch (const json::exception& e) {
    // Everything else nlohmann throws while parsing, e.g. out_of_range 406 for 1e400: the
    // message without its "[json.exception.out_of_range.406] " prefix, with the file.
    std::string what = e.what();
    if (what.rfind("[json.exception.", 0) == 0) {
      const auto end = what.find("] ");
      if (end != std::string::npos) what = what.substr(end + 2);
    }
    throw usage_error(fmt::format("{}: invalid JSON: {}", file_, what));
  }
}

std::string JsonChecker::preview(const json& j) {
  // Bounded in depth and length: a value nested 100k levels deep must not be walked
  // recursively just to print an error.
  std::string out;
  constexpr size_t kMax = 60;
  auto put = [&](auto&& self, const json& v, int depth) -> void {
    if (out.size() > kMax) return;
    if (v.is_array()) {
      if (depth >= 2) {
        out += v.empty() ? "[]" : "[...]";
        return;
      }
      out += '[';
      size_t i = 0;
      for (const auto& e : v) {
        if (out.size() > kMax) break;
        if (i++) out += ", ";
        self(self, e, depth + 1);
      }
      out += ']';
    } else if (v.is_object()) {
      if (depth >= 2) {
        out += v.empty() ? "{}" : "{...}";
        return;
      }
      out += '{';
      size_t i = 0;
      for (auto it = v.begin(); it != v.end(); ++it) {
        if (out.size() > kMax) break;
        if (i++) out += ", ";
        out += json(it.key()).dump() + ": ";
        self(self, it.value(), depth + 1);
      }
      out += '}';
    } else {
      out += v.dump();
    }
  };
  put(put, j, 0);
  if (out.size() > kMax) out = out.substr(0, kMax) + "...";
  return out;
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
    fail(key, fmt::format("expected an integer, got {} {}", j.type_name(), preview(j)));
  const long long v = j.get<long long>();
  if (v < lo || v > hi) fail(key, fmt::format("{} is out of range [{}, {}]", v, lo, hi));
  return static_cast<int>(v);
}

double JsonChecker::to_number(const json& j, const std::string& key, double lo, double hi) const {
  if (!j.is_number())
    fail(key, fmt::format("expected a number, got {} {}", j.type_name(), preview(j)));
  const double v = j.get<double>();
  if (!std::isfinite(v) || v < lo || v > hi)
    fail(key, fmt::format("{} is out of range [{}, {}]", v, lo, hi));
  return v;
}

bool JsonChecker::to_bool(const json& j, const std::string& key) const {
  if (!j.is_boolean()) fail(key, fmt::format("expected true or false, got {}", preview(j)));
  return j.get<bool>();
}

std::string JsonChecker::to_string(const json& j, const std::string& key) const {
  if (!j.is_string())
    fail(key, fmt::format("expected a string, got {} {}", j.type_name(), preview(j)));
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
         fmt::format("expected [left, right] (two integers, -1 = unbounded), got {}", preview(j)));
  const int l = to_int(j[0], index(key, 0), -1, 1 << 30);
  const int r = to_int(j[1], index(key, 1), -1, 1 << 30);
  return {l, r};
}

std::vector<json> JsonChecker::to_list(const json& j, const std::string& key,
                                       bool scalar_ok) const {
  if (!j.is_array()) {
    if (scalar_ok) return {j};
    fail(key, fmt::format("expected a list, got {} {}", j.type_name(), preview(j)));
  }
  if (j.empty()) fail(key, "the list is empty");
  return std::vector<json>(j.begin(), j.end());
}

}  // namespace flashplus::cli
