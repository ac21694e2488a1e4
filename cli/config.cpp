#include "config.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "json_check.h"

namespace flashplus::cli {

namespace {

// Keys a variant may set; each replaces the base file's value.
const std::set<std::string> kVariantKeys = {"name",    "description", "nheads",        "nheads_k",
                                            "head_dim", "mask",        "softcap",       "alibi",
                                            "softmax_scale", "dtype", "batch_sizes", "batch_tokens",
                                            "seqlens", "modes"};

ModelConfig parse_model_config(const JsonChecker& c, const json& j, const std::string& path) {
  c.check_keys(j, "",
               {"schema_version", "name", "description", "source", "workload", "nheads", "nheads_k",
                "head_dim", "mask", "softcap", "alibi", "softmax_scale", "dtype", "batch_sizes",
                "batch_tokens", "seqlens", "modes"});
  auto need = [&](const char* key) -> const json& {
    if (!j.contains(key)) c.fail(key, "required key is missing");
    return j.at(key);
  };
  ModelConfig m;
  m.file = path;
  const int version = c.to_int(need("schema_version"), "schema_version", 0, 1 << 20);
  if (version != kModelSchemaVersion)
    c.fail("schema_version", fmt::format("unsupported version {} (this build reads version {})",
                                         version, kModelSchemaVersion));
  m.name = c.to_string(need("name"), "name");
  if (m.name.empty()) c.fail("name", "must not be empty");
  if (j.contains("description")) m.description = c.to_string(j["description"], "description");
  if (j.contains("source")) m.source = c.to_string(j["source"], "source");
  if (j.contains("workload")) {
    m.workload = c.to_string(j["workload"], "workload");
    if (m.workload == "decode" || m.workload == "varlen")
      c.fail("workload", fmt::format("\"{}\" workloads are reserved for a later schema_version; "
                                     "schema_version 1 supports only \"prefill\"",
                                     m.workload));
    if (m.workload != "prefill")
      c.fail("workload", fmt::format("unknown value \"{}\" (expected \"prefill\")", m.workload));
  }
  m.nheads = c.to_int(need("nheads"), "nheads", 1, 1024);
  m.nheads_k = j.contains("nheads_k") ? c.to_int(j["nheads_k"], "nheads_k", 1, 1024) : m.nheads;
  if (m.nheads % m.nheads_k != 0)
    c.fail("nheads_k", fmt::format("{} does not divide nheads ({})", m.nheads_k, m.nheads));
  m.head_dim = c.to_int(need("head_dim"), "head_dim", 1, 256);

  if (j.contains("mask")) {
    const json& mk = j["mask"];
    c.check_keys(mk, "mask", {"causal", "window"});
    if (mk.contains("causal")) m.causal = c.to_bool(mk["causal"], "mask.causal");
    if (mk.contains("window")) {
      auto w = c.to_window(mk["window"], "mask.window");
      m.window_left = w.first;
      m.window_right = w.second;
    }
  }
  if (j.contains("softcap")) m.softcap = c.to_number(j["softcap"], "softcap", 0, 1e6);
  if (j.contains("alibi")) m.alibi = c.to_bool(j["alibi"], "alibi");
  if (j.contains("softmax_scale"))
    m.softmax_scale = c.to_number(j["softmax_scale"], "softmax_scale", 0, 1e6);

  for (const json& d : c.to_list(need("dtype"), "dtype", /*scalar_ok=*/true)) {
    const DType t = c.to_dtype(d, "dtype");
    if (std::find(m.dtypes.begin(), m.dtypes.end(), t) != m.dtypes.end())
      c.fail("dtype", fmt::format("\"{}\" is listed twice", dtype_name(t)));
    m.dtypes.push_back(t);
  }
  auto int_list = [&](const char* key, int lo, int hi) {
    std::vector<int> out;
    const auto items = c.to_list(need(key), key);
    for (size_t i = 0; i < items.size(); ++i) {
      const int v = c.to_int(items[i], JsonChecker::index(key, i), lo, hi);
      if (std::find(out.begin(), out.end(), v) != out.end())
        c.fail(JsonChecker::index(key, i), fmt::format("{} is listed twice", v));
      out.push_back(v);
    }
    return out;
  };
  if (j.contains("batch_sizes") == j.contains("batch_tokens"))
    c.fail("batch_sizes", "exactly one of batch_sizes and batch_tokens is required");
  if (j.contains("batch_sizes")) m.batch_sizes = int_list("batch_sizes", 1, 1 << 16);
  if (j.contains("batch_tokens"))
    m.batch_tokens = c.to_int(j["batch_tokens"], "batch_tokens", 1, 1 << 30);
  m.seqlens = int_list("seqlens", 1, 1 << 24);
  const auto modes = c.to_list(need("modes"), "modes");
  for (size_t i = 0; i < modes.size(); ++i) {
    const std::string key = JsonChecker::index("modes", i);
    const std::string s = c.to_choice(modes[i], key, {"fwd", "bwd"});
    if (std::find(m.modes.begin(), m.modes.end(), s) != m.modes.end())
      c.fail(key, fmt::format("\"{}\" is listed twice", s));
    m.modes.push_back(s);
  }
  return m;
}

}  // namespace

ModelConfig load_model_config(const std::string& path) {
  JsonChecker c(path);
  json j = c.load();
  if (j.is_object() && j.contains("variants")) {
    (void)load_model_configs(path);  // the variants must be valid too
    j.erase("variants");
  }
  return parse_model_config(c, j, path);
}

std::vector<ModelConfig> load_model_configs(const std::string& path) {
  JsonChecker c(path);
  json j = c.load();
  if (!j.is_object() || !j.contains("variants")) return {parse_model_config(c, j, path)};
  const json variants = j["variants"];
  j.erase("variants");
  std::vector<ModelConfig> out;
  const auto items = c.to_list(variants, "variants");
  std::set<std::string> names;
  for (size_t i = 0; i < items.size(); ++i) {
    const std::string where = JsonChecker::index("variants", i);
    c.require_object(items[i], where);
    c.check_keys(items[i], where, kVariantKeys);
    if (!items[i].contains("name")) c.fail(where + ".name", "required key is missing");
    const std::string vname = c.to_string(items[i]["name"], where + ".name");
    if (vname.empty()) c.fail(where + ".name", "must not be empty");
    if (!names.insert(vname).second) c.fail(where + ".name", "\"" + vname + "\" is listed twice");
    json merged = j;
    for (auto it = items[i].begin(); it != items[i].end(); ++it) {
      // A variant's batch_sizes/batch_tokens replaces whichever the base has.
      if (it.key() == "batch_sizes") merged.erase("batch_tokens");
      if (it.key() == "batch_tokens") merged.erase("batch_sizes");
      merged[it.key()] = it.value();
    }
    merged["name"] = c.to_string(j.value("name", json("")), "name") + "/" + vname;
    // Errors inside a variant name it: "<file> (variants[1])".
    const JsonChecker vc(path + " (" + where + ")");
    out.push_back(parse_model_config(vc, merged, path));
  }
  return out;
}

std::vector<Workload> expand_workloads(const ModelConfig& m, const WorkloadFilter& f) {
  std::vector<Workload> out;
  const bool per_seqlen = f.batch_override.empty() && m.batch_tokens > 0;
  const std::vector<int>& batches =
      per_seqlen ? std::vector<int>{0} : f.batch_override.empty() ? m.batch_sizes : f.batch_override;
  for (const std::string& mode : m.modes) {
    if (!f.modes.empty() && std::find(f.modes.begin(), f.modes.end(), mode) == f.modes.end())
      continue;
    for (DType t : m.dtypes) {
      if (!f.dtypes.empty() && std::find(f.dtypes.begin(), f.dtypes.end(), t) == f.dtypes.end())
        continue;
      for (int b : batches) {
        for (int s : m.seqlens) {
          if (f.max_seqlen > 0 && s > f.max_seqlen) continue;
          out.push_back({&m, t, per_seqlen ? std::max(1, m.batch_tokens / s) : b, s, mode});
        }
      }
    }
  }
  return out;
}

std::string mask_label(const ModelConfig& m) {
  std::string s;
  if (m.causal) s = "causal";
  if (m.window_left >= 0 || (!m.causal && m.window_right >= 0))
    s += fmt::format("{}window({},{})", s.empty() ? "" : "+", m.window_left,
                     m.causal ? 0 : m.window_right);
  if (s.empty()) s = "none";
  if (m.softcap > 0) s += fmt::format("+softcap{:g}", m.softcap);
  if (m.alibi) s += "+alibi";
  return s;
}

}  // namespace flashplus::cli
