#include "suite.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>

#include "json_check.h"

namespace flashplus::cli {

const char* alibi_mode_name(AlibiMode a) {
  switch (a) {
    case AlibiMode::none:
      return "none";
    case AlibiMode::per_head:
      return "h";
    case AlibiMode::per_batch_head:
      return "bh";
  }
  return "?";
}
const char* layout_name(Layout l) {
  switch (l) {
    case Layout::contiguous:
      return "contiguous";
    case Layout::qkvpacked:
      return "qkvpacked";
    case Layout::kv_in_cache:
      return "kv_in_cache";
  }
  return "?";
}

namespace {

// Every case parameter a suite may set (in "defaults", "set", "axes", "cases", "when").
// clang-format off
const std::set<std::string> kCaseFields = {
    "batch", "seqlen_q", "seqlen_k", "seqlens", "nheads", "nheads_k", "heads", "head_dim",
    "dtype", "causal", "window", "softcap", "alibi", "scale", "layout", "mode", "deterministic",
    "dropout", "varlen", "num_splits", "kvcache", "cache_len", "page_size", "new_keys", "rotary",
    "rotary_interleaved"};
// clang-format on
// Derived values an exclusion rule may also test (docs/VERIFY.md).
const std::set<std::string> kDerivedFields = {"gqa", "mqa", "seqlen_q_gt_k", "seqlen_q_lt_k"};

struct Entry {
  std::string key, path;
  json value;
};

// Builds a Case from (key, value) entries applied in order (later ones win).
class CaseBuilder {
 public:
  explicit CaseBuilder(const JsonChecker& c) : c_(c) {}

  void apply(const Entry& e) {
    const json& v = e.value;
    const std::string& p = e.path;
    const std::string& k = e.key;
    auto pair = [&](const char* what) {
      if (!v.is_array() || v.size() != 2)
        c_.fail(p, fmt::format("expected [{}], got {}", what, JsonChecker::preview(v)));
    };
    if (k == "batch") {
      c_case.batch = c_.to_int(v, p, 1, 1 << 16);
    } else if (k == "seqlen_q") {
      c_case.seqlen_q = c_.to_int(v, p, 1, 1 << 24);
    } else if (k == "seqlen_k") {
      c_case.seqlen_k = c_.to_int(v, p, 0, 1 << 24);
      sk_set_ = true;
    } else if (k == "seqlens") {
      pair("seqlen_q, seqlen_k");
      c_case.seqlen_q = c_.to_int(v[0], JsonChecker::index(p, 0), 1, 1 << 24);
      c_case.seqlen_k = c_.to_int(v[1], JsonChecker::index(p, 1), 0, 1 << 24);
      sk_set_ = true;
    } else if (k == "nheads") {
      c_case.nheads = c_.to_int(v, p, 1, 1024);
    } else if (k == "nheads_k") {
      c_case.nheads_k = c_.to_int(v, p, 1, 1024);
      hk_set_ = true;
    } else if (k == "heads") {
      pair("nheads, nheads_k");
      c_case.nheads = c_.to_int(v[0], JsonChecker::index(p, 0), 1, 1024);
      c_case.nheads_k = c_.to_int(v[1], JsonChecker::index(p, 1), 1, 1024);
      hk_set_ = true;
    } else if (k == "head_dim") {
      c_case.head_dim = c_.to_int(v, p, 1, 256);
    } else if (k == "dtype") {
      c_case.dtype = c_.to_dtype(v, p);
    } else if (k == "causal") {
      c_case.causal = c_.to_bool(v, p);
    } else if (k == "window") {
      const auto w = c_.to_window(v, p);
      c_case.window_left = w.first;
      c_case.window_right = w.second;
    } else if (k == "softcap") {
      c_case.softcap = c_.to_number(v, p, 0, 1e6);
    } else if (k == "alibi") {
      const std::string s = c_.to_choice(v, p, {"none", "h", "bh"});
      c_case.alibi = s == "h"    ? AlibiMode::per_head
                     : s == "bh" ? AlibiMode::per_batch_head
                                 : AlibiMode::none;
    } else if (k == "scale") {
      c_case.scale = c_.to_number(v, p, 0, 1e6);
    } else if (k == "layout") {
      const std::string s = c_.to_choice(v, p, {"contiguous", "qkvpacked", "kv_in_cache"});
      c_case.layout = s == "qkvpacked"     ? Layout::qkvpacked
                      : s == "kv_in_cache" ? Layout::kv_in_cache
                                           : Layout::contiguous;
    } else if (k == "mode") {
      c_case.bwd = c_.to_choice(v, p, {"fwd", "bwd"}) == "bwd";
    } else if (k == "deterministic") {
      c_case.deterministic = c_.to_bool(v, p);
    } else if (k == "dropout") {
      c_case.dropout = c_.to_number(v, p, 0, 0.999);
    } else if (k == "varlen") {
      // [n, [sq, sk], ...]: n means seqlen_q = seqlen_k = n.
      if (!v.is_array())
        c_.fail(p, fmt::format("expected a list of sequence lengths, got {}", JsonChecker::preview(v)));
      c_case.varlen.clear();
      for (size_t i = 0; i < v.size(); ++i) {
        const std::string ip = JsonChecker::index(p, i);
        if (v[i].is_array()) {
          if (v[i].size() != 2) c_.fail(ip, "expected n or [seqlen_q, seqlen_k]");
          c_case.varlen.emplace_back(c_.to_int(v[i][0], JsonChecker::index(ip, 0), 0, 1 << 20),
                                     c_.to_int(v[i][1], JsonChecker::index(ip, 1), 0, 1 << 20));
        } else {
          const int n = c_.to_int(v[i], ip, 0, 1 << 20);
          c_case.varlen.emplace_back(n, n);
        }
      }
    } else if (k == "num_splits") {
      c_case.num_splits = c_.to_int(v, p, 0, 128);
    } else if (k == "kvcache") {
      c_case.kvcache = c_.to_bool(v, p);
    } else if (k == "cache_len") {
      c_case.cache_len = c_.to_int(v, p, 0, 1 << 24);
    } else if (k == "page_size") {
      c_case.page_size = c_.to_int(v, p, 0, 1 << 20);
    } else if (k == "new_keys") {
      c_case.new_keys = c_.to_int(v, p, 0, 1 << 20);
    } else if (k == "rotary") {
      c_case.rotary = c_.to_int(v, p, 0, 256);
    } else if (k == "rotary_interleaved") {
      c_case.rotary_interleaved = c_.to_bool(v, p);
    } else {
      c_.fail(p, "unknown case parameter");
    }
  }

  Case finish() {
    if (!sk_set_) c_case.seqlen_k = c_case.seqlen_q;
    if (!hk_set_) c_case.nheads_k = c_case.nheads;
    if (!c_case.varlen.empty()) {  // batch and lengths follow the sequence list
      c_case.batch = static_cast<int>(c_case.varlen.size());
      c_case.seqlen_q = c_case.seqlen_k = 0;
      for (const auto& s : c_case.varlen) {
        c_case.seqlen_q = std::max(c_case.seqlen_q, s.first);
        c_case.seqlen_k = std::max(c_case.seqlen_k, s.second);
      }
    }
    if (c_case.kvcache) c_case.seqlen_k = c_case.cache_len + c_case.new_keys;
    return c_case;
  }

  Case c_case;

 private:
  const JsonChecker& c_;
  bool sk_set_ = false, hk_set_ = false;
};

// The case as JSON, for matching exclusion rules (same keys as the suite uses, plus derived ones).
json case_json(const Case& c) {
  return json{{"batch", c.batch},
              {"seqlen_q", c.seqlen_q},
              {"seqlen_k", c.seqlen_k},
              {"seqlens", {c.seqlen_q, c.seqlen_k}},
              {"nheads", c.nheads},
              {"nheads_k", c.nheads_k},
              {"heads", {c.nheads, c.nheads_k}},
              {"head_dim", c.head_dim},
              {"dtype", dtype_name(c.dtype)},
              {"causal", c.causal},
              {"window", {c.window_left, c.window_right}},
              {"softcap", c.softcap},
              {"alibi", alibi_mode_name(c.alibi)},
              {"scale", c.scale},
              {"layout", layout_name(c.layout)},
              {"mode", c.bwd ? "bwd" : "fwd"},
              {"deterministic", c.deterministic},
              {"dropout", c.dropout},
              {"varlen", !c.varlen.empty()},
              {"num_splits", c.num_splits},
              {"kvcache", c.kvcache},
              {"cache_len", c.cache_len},
              {"page_size", c.page_size},
              {"new_keys", c.new_keys},
              {"rotary", c.rotary},
              {"rotary_interleaved", c.rotary_interleaved},
              {"gqa", c.nheads_k < c.nheads},
              {"mqa", c.nheads_k == 1 && c.nheads > 1},
              {"seqlen_q_gt_k", c.seqlen_q > c.seqlen_k},
              {"seqlen_q_lt_k", c.seqlen_q < c.seqlen_k}};
}

bool is_pair_field(const std::string& k) { return k == "window" || k == "seqlens" || k == "heads"; }

struct Rule {
  json when;            // field -> value | [alternatives] | {"min": x, "max": y}
  std::string match;    // substring of the case name ("" = any)
  std::string backend;  // known failures only
  std::string reason;
};

// One condition: `want` is a value, a list of alternatives, or a {"min", "max"} range.
bool matches_value(const std::string& key, const json& want, const json& have) {
  if (want.is_object()) {
    if (!have.is_number()) return false;
    const double h = have.get<double>();
    if (want.contains("min") && h < want["min"].get<double>()) return false;
    if (want.contains("max") && h > want["max"].get<double>()) return false;
    return true;
  }
  const bool alternatives =
      want.is_array() && (!is_pair_field(key) || (!want.empty() && want[0].is_array()));
  if (alternatives) {
    for (const json& w : want)
      if (w == have) return true;
    return false;
  }
  return want == have;
}

bool rule_matches(const Rule& r, const Case& c, const json& cj) {
  if (!r.match.empty() && c.name.find(r.match) == std::string::npos) return false;
  for (auto it = r.when.begin(); it != r.when.end(); ++it)
    if (!matches_value(it.key(), it.value(), cj[it.key()])) return false;
  return true;
}

Rule parse_rule(const JsonChecker& c, const json& j, const std::string& path, bool known_failure) {
  std::set<std::string> allowed = {"when", "match", "reason"};
  if (known_failure) allowed.insert("backend");
  c.check_keys(j, path, allowed);
  Rule r;
  if (!j.contains("reason") || c.to_string(j["reason"], JsonChecker::join(path, "reason")).empty())
    c.fail(JsonChecker::join(path, "reason"), "every rule needs a non-empty reason");
  r.reason = j["reason"].get<std::string>();
  if (j.contains("match")) r.match = c.to_string(j["match"], JsonChecker::join(path, "match"));
  if (j.contains("when")) {
    const std::string wp = JsonChecker::join(path, "when");
    c.require_object(j["when"], wp);
    for (auto it = j["when"].begin(); it != j["when"].end(); ++it) {
      if (!kCaseFields.count(it.key()) && !kDerivedFields.count(it.key()))
        c.fail(JsonChecker::join(wp, it.key()), "unknown case parameter");
      if (it.value().is_object()) {
        c.check_keys(it.value(), JsonChecker::join(wp, it.key()), {"min", "max"});
        for (auto b = it.value().begin(); b != it.value().end(); ++b)
          c.to_number(b.value(), JsonChecker::join(JsonChecker::join(wp, it.key()), b.key()), -1e18,
                      1e18);
      }
    }
    r.when = j["when"];
  }
  if (known_failure) {
    if (!j.contains("backend"))
      c.fail(JsonChecker::join(path, "backend"), "required key is missing");
    r.backend =
        c.to_choice(j["backend"], JsonChecker::join(path, "backend"), {"cpu", "cuda", "hip", "*"});
  }
  if (r.match.empty() && r.when.empty())
    c.fail(path, "a rule needs \"when\" or \"match\" (it would match every case)");
  return r;
}

std::vector<Rule> parse_rules(const JsonChecker& c, const json& j, const std::string& path,
                              bool known_failure) {
  std::vector<Rule> out;
  if (!j.is_array()) c.fail(path, "expected a list of rules");
  for (size_t i = 0; i < j.size(); ++i)
    out.push_back(parse_rule(c, j[i], JsonChecker::index(path, i), known_failure));
  return out;
}

std::vector<Entry> object_entries(const JsonChecker& c, const json& j, const std::string& path,
                                  const std::set<std::string>& extra_keys = {}) {
  c.require_object(j, path);
  std::vector<Entry> out;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (extra_keys.count(it.key())) continue;
    if (!kCaseFields.count(it.key()))
      c.fail(JsonChecker::join(path, it.key()), "unknown key (not a case parameter)");
    out.push_back({it.key(), JsonChecker::join(path, it.key()), it.value()});
  }
  return out;
}

// Built-in validity: combinations the layouts or the API cannot express.
std::string builtin_exclusion(const Case& c) {
  if (c.nheads % c.nheads_k != 0)
    return fmt::format("nheads_k ({}) must divide nheads ({})", c.nheads_k, c.nheads);
  if (c.layout == Layout::qkvpacked && (c.seqlen_q != c.seqlen_k || c.nheads != c.nheads_k))
    return "qkvpacked needs seqlen_q == seqlen_k and nheads == nheads_k";
  if (c.deterministic && !c.bwd) return "deterministic only affects the backward (mode bwd)";
  const bool special = !c.varlen.empty() || c.kvcache;
  if (special && c.layout != Layout::contiguous)
    return "varlen and kvcache cases use their own layouts (layout must be contiguous)";
  if (!c.varlen.empty() && c.kvcache) return "varlen and kvcache cannot be combined";
  if (c.kvcache && c.bwd) return "the KV cache is forward only (mode fwd)";
  if (c.kvcache && c.dropout > 0) return "the KV cache has no dropout";
  if (c.dropout > 0 && c.softcap > 0) return "dropout with softcap is invalid (as upstream)";
  if (c.num_splits > 0 && !special) return "num_splits needs varlen or kvcache";
  if (!c.kvcache && (c.cache_len || c.page_size || c.new_keys || c.rotary || c.rotary_interleaved))
    return "cache_len/page_size/new_keys/rotary need kvcache";
  if (c.rotary && c.new_keys == 0) return "rotary needs new_keys > 0";
  if (c.rotary % 2 != 0 || c.rotary > c.head_dim) return "rotary must be even and <= head_dim";
  if (c.rotary_interleaved && !c.rotary) return "rotary_interleaved needs rotary";
  return "";
}

}  // namespace

std::string case_label(const Case& c) {
  std::string s = fmt::format("{}_{}_b{}_sq{}_sk{}_h{}", c.bwd ? "bwd" : "fwd", dtype_name(c.dtype),
                              c.batch, c.seqlen_q, c.seqlen_k, c.nheads);
  if (c.nheads_k != c.nheads) s += fmt::format("_hk{}", c.nheads_k);
  s += fmt::format("_d{}", c.head_dim);
  if (c.causal) s += "_causal";
  if (c.window_left >= 0 || c.window_right >= 0)
    s += fmt::format("_win{}.{}", c.window_left, c.window_right);
  if (c.softcap > 0) s += fmt::format("_cap{:g}", c.softcap);
  if (c.alibi != AlibiMode::none) s += fmt::format("_alibi-{}", alibi_mode_name(c.alibi));
  if (c.scale > 0) s += fmt::format("_scale{:g}", c.scale);
  if (c.layout != Layout::contiguous) s += fmt::format("_{}", layout_name(c.layout));
  if (c.deterministic) s += "_det";
  if (c.dropout > 0) s += fmt::format("_drop{:g}", c.dropout);
  if (!c.varlen.empty()) {
    s += "_varlen";
    for (size_t i = 0; i < c.varlen.size(); ++i)
      s += fmt::format("{}{}", i ? "." : "",
                       c.varlen[i].first == c.varlen[i].second
                           ? std::to_string(c.varlen[i].first)
                           : fmt::format("{}x{}", c.varlen[i].first, c.varlen[i].second));
  }
  if (c.kvcache) {
    s += fmt::format("_kv{}", c.cache_len);
    if (c.page_size) s += fmt::format("_page{}", c.page_size);
    if (c.new_keys) s += fmt::format("_new{}", c.new_keys);
    if (c.rotary) s += fmt::format("_rot{}{}", c.rotary, c.rotary_interleaved ? "i" : "");
  }
  if (c.num_splits) s += fmt::format("_split{}", c.num_splits);
  return s;
}

Suite load_suite(const std::string& path, Backend backend) {
  JsonChecker c(path);
  const json j = c.load();
  c.check_keys(j, "",
               {"schema_version", "name", "description", "seed", "defaults", "matrices", "cases",
                "exclude", "known_failures"});
  Suite s;
  s.file = path;
  if (!j.contains("schema_version")) c.fail("schema_version", "required key is missing");
  const int version = c.to_int(j["schema_version"], "schema_version", 0, 1 << 20);
  if (version != kSuiteSchemaVersion)
    c.fail("schema_version", fmt::format("unsupported version {} (this build reads version {})",
                                         version, kSuiteSchemaVersion));
  if (!j.contains("name")) c.fail("name", "required key is missing");
  s.name = c.to_string(j["name"], "name");
  if (j.contains("description")) s.description = c.to_string(j["description"], "description");
  s.seed = j.contains("seed") ? static_cast<uint64_t>(c.to_int(j["seed"], "seed", 0, 2147483647))
                              : 20261125;

  std::vector<Entry> defaults;
  if (j.contains("defaults")) defaults = object_entries(c, j["defaults"], "defaults");
  std::vector<Rule> excludes;
  if (j.contains("exclude")) excludes = parse_rules(c, j["exclude"], "exclude", false);
  std::vector<Rule> known;
  if (j.contains("known_failures"))
    known = parse_rules(c, j["known_failures"], "known_failures", true);
  for (const Rule& r : known) s.known_failures.push_back({r.backend, r.match, r.reason});

  std::set<std::string> names;
  auto add = [&](Case cs, const std::vector<Rule>& local_excludes) {
    cs.name = cs.group + "/" + case_label(cs);
    if (names.count(cs.name)) return;  // identical parameters reached twice: run once
    names.insert(cs.name);
    const json cj = case_json(cs);
    cs.excluded = builtin_exclusion(cs);
    const std::vector<Rule>* rule_sets[] = {&local_excludes, &excludes};
    for (const std::vector<Rule>* rules : rule_sets) {
      for (const Rule& r : *rules) {
        if (cs.excluded.empty() && rule_matches(r, cs, cj)) cs.excluded = r.reason;
      }
    }
    for (const Rule& r : known) {
      if ((r.backend == "*" || r.backend == backend_name(backend)) && rule_matches(r, cs, cj)) {
        cs.known_failure = r.reason;
        break;
      }
    }
    s.cases.push_back(std::move(cs));
  };

  if (j.contains("matrices")) {
    const json& ms = j["matrices"];
    if (!ms.is_array()) c.fail("matrices", "expected a list of matrices");
    std::set<std::string> mnames;
    for (size_t mi = 0; mi < ms.size(); ++mi) {
      const std::string mp = JsonChecker::index("matrices", mi);
      const json& m = ms[mi];
      c.check_keys(m, mp, {"name", "description", "set", "axes", "exclude"});
      if (!m.contains("name")) c.fail(JsonChecker::join(mp, "name"), "required key is missing");
      const std::string mname = c.to_string(m["name"], JsonChecker::join(mp, "name"));
      if (mname.empty() || mname.find('/') != std::string::npos)
        c.fail(JsonChecker::join(mp, "name"), "must be non-empty and contain no '/'");
      if (!mnames.insert(mname).second)
        c.fail(JsonChecker::join(mp, "name"), fmt::format("duplicate matrix name \"{}\"", mname));
      if (m.contains("description"))
        c.to_string(m["description"], JsonChecker::join(mp, "description"));
      std::vector<Entry> set;
      if (m.contains("set")) set = object_entries(c, m["set"], JsonChecker::join(mp, "set"));
      std::vector<Rule> local;
      if (m.contains("exclude"))
        local = parse_rules(c, m["exclude"], JsonChecker::join(mp, "exclude"), false);
      // Axes: each a non-empty list of values; the cartesian product, first axis slowest.
      std::vector<std::pair<std::string, std::vector<json>>> axes;
      if (m.contains("axes")) {
        const std::string ap = JsonChecker::join(mp, "axes");
        c.require_object(m["axes"], ap);
        for (auto it = m["axes"].begin(); it != m["axes"].end(); ++it) {
          const std::string kp = JsonChecker::join(ap, it.key());
          if (!kCaseFields.count(it.key())) c.fail(kp, "unknown key (not a case parameter)");
          axes.emplace_back(it.key(), c.to_list(it.value(), kp));
        }
      }
      // A few hundred bytes of axes can multiply to 10^9 cases (minutes of expansion, gigabytes
      // of case list): refuse before expanding. A double cannot overflow on a product of sizes.
      double product = 1;
      for (const auto& ax : axes) product *= static_cast<double>(ax.second.size());
      if (product + static_cast<double>(s.cases.size()) > static_cast<double>(kMaxSuiteCases))
        c.fail(JsonChecker::join(mp, "axes"),
               fmt::format("expands to {:.0f} cases, more than the {} a suite may have; split it "
                           "into several suites", product, kMaxSuiteCases));
      std::vector<size_t> idx(axes.size(), 0);
      for (bool done = false; !done;) {
        CaseBuilder b(c);
        for (const Entry& e : defaults) b.apply(e);
        for (const Entry& e : set) b.apply(e);
        for (size_t a = 0; a < axes.size(); ++a)
          b.apply({axes[a].first,
                   JsonChecker::index(
                       JsonChecker::join(JsonChecker::join(mp, "axes"), axes[a].first), idx[a]),
                   axes[a].second[idx[a]]});
        Case cs = b.finish();
        cs.group = mname;
        add(cs, local);
        // Next index tuple, last axis fastest; done after the last one (or at once without axes).
        done = true;
        for (size_t a = axes.size(); a-- > 0;) {
          if (++idx[a] < axes[a].second.size()) {
            done = false;
            break;
          }
          idx[a] = 0;
        }
      }
    }
  }
  if (j.contains("cases")) {
    const json& cs = j["cases"];
    if (!cs.is_array()) c.fail("cases", "expected a list of cases");
    for (size_t i = 0; i < cs.size(); ++i) {
      const std::string cp = JsonChecker::index("cases", i);
      CaseBuilder b(c);
      for (const Entry& e : defaults) b.apply(e);
      for (const Entry& e : object_entries(c, cs[i], cp, {"note"})) b.apply(e);
      if (cs[i].contains("note")) c.to_string(cs[i]["note"], JsonChecker::join(cp, "note"));
      Case k = b.finish();
      k.group = "cases";
      const std::string bad = builtin_exclusion(k);
      if (!bad.empty()) c.fail(cp, bad);  // an explicit case must be valid
      add(k, {});
    }
  }
  if (s.cases.empty()) c.fail_file("the suite has no cases (add \"matrices\" or \"cases\")");
  return s;
}

}  // namespace flashplus::cli
