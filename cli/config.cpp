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
                                            "head_dim", "mask",        "softcap",       "dropout", "alibi",
                                            "softmax_scale", "dtype", "batch_sizes", "batch_tokens",
                                            "seqlens", "modes", "workload", "decode", "varlen"};

ModelConfig parse_model_config(const JsonChecker& c, const json& j, const std::string& path) {
  c.check_keys(j, "",
               {"schema_version", "name", "description", "source", "workload", "nheads", "nheads_k",
                "head_dim", "mask", "softcap", "dropout", "alibi", "softmax_scale", "dtype", "batch_sizes",
                "batch_tokens", "seqlens", "modes", "decode", "varlen"});
  auto need = [&](const char* key) -> const json& {
    if (!j.contains(key)) c.fail(key, "required key is missing");
    return j.at(key);
  };
  ModelConfig m;
  m.file = path;
  const int version = c.to_int(need("schema_version"), "schema_version", 0, 1 << 20);
  if (version != 1 && version != kModelSchemaVersion)
    c.fail("schema_version", fmt::format("unsupported version {} (this build reads versions 1 "
                                         "and {})",
                                         version, kModelSchemaVersion));
  m.name = c.to_string(need("name"), "name");
  if (m.name.empty()) c.fail("name", "must not be empty");
  if (j.contains("description")) m.description = c.to_string(j["description"], "description");
  if (j.contains("source")) m.source = c.to_string(j["source"], "source");
  if (j.contains("workload")) {
    m.workload = c.to_choice(j["workload"], "workload", {"prefill", "decode", "varlen"});
    if (m.workload != "prefill" && version < 2)
      c.fail("workload", fmt::format("\"{}\" workloads need schema_version 2", m.workload));
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
  if (j.contains("dropout")) m.dropout = c.to_number(j["dropout"], "dropout", 0, 0.99);
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
  const bool prefill = m.workload == "prefill";
  if (prefill) {
    for (const char* k : {"decode", "varlen"})
      if (j.contains(k))
        c.fail(k, fmt::format("only for \"workload\": \"{}\" (this config is prefill)", k));
    if (j.contains("batch_sizes") == j.contains("batch_tokens"))
      c.fail("batch_sizes", "exactly one of batch_sizes and batch_tokens is required");
    if (j.contains("batch_sizes")) m.batch_sizes = int_list("batch_sizes", 1, 1 << 16);
    if (j.contains("batch_tokens"))
      m.batch_tokens = c.to_int(j["batch_tokens"], "batch_tokens", 1, 1 << 30);
    m.seqlens = int_list("seqlens", 1, 1 << 24);
  } else {
    for (const char* k : {"batch_sizes", "batch_tokens", "seqlens"})
      if (j.contains(k))
        c.fail(k, fmt::format("not used by \"workload\": \"{}\" (sizes go in \"{}\")",
                              m.workload, m.workload));
    const char* other = m.workload == "decode" ? "varlen" : "decode";
    if (j.contains(other))
      c.fail(other, fmt::format("only for \"workload\": \"{}\"", other));
  }
  if (m.workload == "decode") {
    const json& d = need("decode");
    c.require_object(d, "decode");
    c.check_keys(d, "decode", {"shapes", "page_sizes", "num_splits", "seqlen_q"});
    if (!d.contains("shapes")) c.fail("decode.shapes", "required key is missing");
    const auto shapes = c.to_list(d["shapes"], "decode.shapes");
    for (size_t i = 0; i < shapes.size(); ++i) {
      const std::string k = JsonChecker::index("decode.shapes", i);
      if (!shapes[i].is_array() || shapes[i].size() != 2)
        c.fail(k, fmt::format("expected [batch, cache_len], got {}", JsonChecker::preview(shapes[i])));
      const std::pair<int, int> bs{c.to_int(shapes[i][0], JsonChecker::index(k, 0), 1, 1 << 16),
                                   c.to_int(shapes[i][1], JsonChecker::index(k, 1), 0, 1 << 24)};
      if (std::find(m.decode_shapes.begin(), m.decode_shapes.end(), bs) != m.decode_shapes.end())
        c.fail(k, "is listed twice");
      m.decode_shapes.push_back(bs);
    }
    auto list = [&](const char* key, int lo, int hi, std::vector<int>* out) {
      if (!d.contains(key)) return;
      out->clear();
      const std::string kp = std::string("decode.") + key;
      const auto items = c.to_list(d[key], kp);
      for (size_t i = 0; i < items.size(); ++i) {
        const int v = c.to_int(items[i], JsonChecker::index(kp, i), lo, hi);
        if (std::find(out->begin(), out->end(), v) != out->end())
          c.fail(JsonChecker::index(kp, i), fmt::format("{} is listed twice", v));
        out->push_back(v);
      }
    };
    list("page_sizes", 0, 1 << 20, &m.page_sizes);
    list("num_splits", 0, 128, &m.num_splits);
    if (d.contains("seqlen_q"))
      m.decode_seqlen_q = c.to_int(d["seqlen_q"], "decode.seqlen_q", 1, 1 << 16);
  }
  if (m.workload == "varlen") {
    const json& v = need("varlen");
    c.require_object(v, "varlen");
    c.check_keys(v, "varlen", {"batches"});
    if (!v.contains("batches")) c.fail("varlen.batches", "required key is missing");
    const auto batches = c.to_list(v["batches"], "varlen.batches");
    for (size_t i = 0; i < batches.size(); ++i) {
      const std::string k = JsonChecker::index("varlen.batches", i);
      std::vector<int> lens;
      for (size_t s = 0; s < c.to_list(batches[i], k).size(); ++s)
        lens.push_back(c.to_int(batches[i][s], JsonChecker::index(k, s), 1, 1 << 24));
      m.varlen_batches.push_back(lens);
    }
  }
  if (prefill || j.contains("modes")) {
    const auto modes = c.to_list(need("modes"), "modes");
    for (size_t i = 0; i < modes.size(); ++i) {
      const std::string key = JsonChecker::index("modes", i);
      const std::string s = c.to_choice(modes[i], key, {"fwd", "bwd"});
      if (std::find(m.modes.begin(), m.modes.end(), s) != m.modes.end())
        c.fail(key, fmt::format("\"{}\" is listed twice", s));
      if (s == "bwd" && m.workload == "decode")
        c.fail(key, "decode (the KV cache) is forward only");
      m.modes.push_back(s);
    }
  } else {
    m.modes = {"fwd"};
  }
  return m;
}

}  // namespace

ModelConfig load_model_config(const std::string& path) {
  JsonChecker c(path);
  json j = c.load();
  if (j.is_object() && (j.contains("variants") || j.contains("workloads"))) {
    (void)load_model_configs(path);  // the variants and extra workloads must be valid too
    j.erase("variants");
    j.erase("workloads");
  }
  return parse_model_config(c, j, path);
}

namespace {

// Schema 2 "workloads": extra decode/varlen workloads of the same attention, each a config
// named "<name>/<workload name>" built from the file's base keys (not its prefill sizes).
void add_extra_workloads(const JsonChecker& c, const json& base, const json& extra,
                         const std::string& path, std::vector<ModelConfig>* out) {
  if (!base.contains("schema_version") || !base["schema_version"].is_number_integer() ||
      base["schema_version"].get<int>() < 2)
    c.fail("workloads", "needs schema_version 2");
  const auto items = c.to_list(extra, "workloads");
  std::set<std::string> names;
  for (size_t i = 0; i < items.size(); ++i) {
    const std::string where = JsonChecker::index("workloads", i);
    c.require_object(items[i], where);
    c.check_keys(items[i], where,
                 {"name", "description", "workload", "decode", "varlen", "modes", "dtype"});
    for (const char* k : {"name", "workload"})
      if (!items[i].contains(k)) c.fail(where + "." + k, "required key is missing");
    const std::string wname = c.to_string(items[i]["name"], where + ".name");
    if (wname.empty()) c.fail(where + ".name", "must not be empty");
    if (!names.insert(wname).second) c.fail(where + ".name", "\"" + wname + "\" is listed twice");
    if (c.to_choice(items[i]["workload"], where + ".workload", {"decode", "varlen"}).empty())
      c.fail(where + ".workload", "must not be empty");
    json merged = base;
    for (const char* k : {"batch_sizes", "batch_tokens", "seqlens", "modes"}) merged.erase(k);
    for (auto it = items[i].begin(); it != items[i].end(); ++it) merged[it.key()] = it.value();
    merged["name"] = c.to_string(base.value("name", json("")), "name") + "/" + wname;
    const JsonChecker wc(path + " (" + where + ")");
    out->push_back(parse_model_config(wc, merged, path));
  }
}

}  // namespace

std::vector<ModelConfig> load_model_configs(const std::string& path) {
  JsonChecker c(path);
  json j = c.load();
  json extra;
  if (j.is_object() && j.contains("workloads")) {
    extra = j["workloads"];
    j.erase("workloads");
  }
  if (!j.is_object() || !j.contains("variants")) {
    std::vector<ModelConfig> out = {parse_model_config(c, j, path)};
    if (!extra.is_null()) add_extra_workloads(c, j, extra, path, &out);
    return out;
  }
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
    // A variant with another workload kind does not inherit the base's sizes or modes.
    if (items[i].contains("workload") && items[i]["workload"] != j.value("workload", json("prefill")))
      for (const char* k : {"batch_sizes", "batch_tokens", "seqlens", "modes", "decode", "varlen"})
        merged.erase(k);
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
  if (!extra.is_null()) add_extra_workloads(c, j, extra, path, &out);
  return out;
}

namespace {
Workload make_workload(const ModelConfig& m, DType t, int batch, int seqlen,
                       const std::string& mode) {
  Workload w;
  w.model = &m;
  w.dtype = t;
  w.batch = batch;
  w.seqlen = seqlen;
  w.mode = mode;
  return w;
}
}  // namespace

std::string workload_label(const Workload& w) {
  if (w.kind == "decode")
    return fmt::format("decode page{} splits{}", w.page_size, w.num_splits);
  if (w.kind == "varlen") {
    long total = 0;
    for (int s : w.varlen) total += s;
    return fmt::format("varlen {} seqs {} tok", w.varlen.size(), total);
  }
  return "";
}

std::vector<Workload> expand_workloads(const ModelConfig& m, const WorkloadFilter& f) {
  std::vector<Workload> out;
  auto keep_mode = [&](const std::string& mode) {
    return f.modes.empty() || std::find(f.modes.begin(), f.modes.end(), mode) != f.modes.end();
  };
  auto keep_dtype = [&](DType t) {
    return f.dtypes.empty() || std::find(f.dtypes.begin(), f.dtypes.end(), t) != f.dtypes.end();
  };
  if (!f.kinds.empty() && std::find(f.kinds.begin(), f.kinds.end(), m.workload) == f.kinds.end())
    return out;
  if (m.workload == "decode") {
    for (const std::string& mode : m.modes) {
      if (!keep_mode(mode)) continue;
      for (DType t : m.dtypes) {
        if (!keep_dtype(t)) continue;
        for (const auto& shape : m.decode_shapes) {
          if (f.max_seqlen > 0 && shape.second > f.max_seqlen) continue;
          const std::vector<int> batches =
              f.batch_override.empty() ? std::vector<int>{shape.first} : f.batch_override;
          for (int b : batches)
            for (int page : m.page_sizes)
              for (int splits : m.num_splits) {
                Workload w = make_workload(m, t, b, shape.second, mode);
                w.kind = "decode";
                w.page_size = page;
                w.num_splits = splits;
                out.push_back(w);
              }
        }
      }
    }
    return out;
  }
  if (m.workload == "varlen") {
    for (const std::string& mode : m.modes) {
      if (!keep_mode(mode)) continue;
      for (DType t : m.dtypes) {
        if (!keep_dtype(t)) continue;
        for (const auto& lens : m.varlen_batches) {
          const int longest = *std::max_element(lens.begin(), lens.end());
          if (f.max_seqlen > 0 && longest > f.max_seqlen) continue;
          Workload w = make_workload(m, t, static_cast<int>(lens.size()), longest, mode);
          w.kind = "varlen";
          w.varlen = lens;
          out.push_back(w);
        }
      }
    }
    return out;
  }
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
          out.push_back(
              make_workload(m, t, per_seqlen ? std::max(1, m.batch_tokens / s) : b, s, mode));
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
  if (m.dropout > 0) s += fmt::format("+dropout{:g}", m.dropout);
  return s;
}

}  // namespace flashplus::cli
