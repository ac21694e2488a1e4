#include "flashplus/tuning.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <set>
#include <sstream>
#include <tuple>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace flashplus {
namespace fs = std::filesystem;
using nlohmann::json;

std::string KernelConfig::to_string() const {
  return fmt::format("m{}n{}w{}s{}k{}", block_m, block_n, num_warps, stages, num_splits);
}

const char* mask_kind_name(MaskKind m) {
  switch (m) {
    case MaskKind::none: return "none";
    case MaskKind::causal: return "causal";
    case MaskKind::window: return "window";
  }
  return "?";
}

MaskKind mask_kind_for(bool is_causal, int window_left, int window_right) {
  if (is_causal) return window_left < 0 ? MaskKind::causal : MaskKind::window;
  return window_left >= 0 || window_right >= 0 ? MaskKind::window : MaskKind::none;
}

std::string TuneKey::to_string() const {
  return fmt::format("{}/{}/d{}/{}/{}/r{}", arch, dtype_name(dtype), head_dim_bucket,
                     mask_kind_name(mask), mode, rows_bucket);
}

bool TuneKey::parse(const std::string& s, TuneKey* out) {
  std::vector<std::string> parts;
  std::stringstream ss(s);
  for (std::string p; std::getline(ss, p, '/');) parts.push_back(p);
  if (parts.size() != 6 || parts[0].empty()) return false;
  TuneKey k;
  k.arch = parts[0];
  bool dt = false;
  for (DType t : {DType::f32, DType::f16, DType::bf16})
    if (parts[1] == dtype_name(t)) k.dtype = t, dt = true;
  if (!dt) return false;
  if (parts[2].size() < 2 || parts[2][0] != 'd') return false;
  try {
    size_t pos = 0;
    k.head_dim_bucket = std::stoi(parts[2].substr(1), &pos);
    if (pos != parts[2].size() - 1) return false;
  } catch (...) {
    return false;
  }
  if (k.head_dim_bucket <= 0 || k.head_dim_bucket > 256 || k.head_dim_bucket % 32) return false;
  bool mk = false;
  for (MaskKind m : {MaskKind::none, MaskKind::causal, MaskKind::window})
    if (parts[3] == mask_kind_name(m)) k.mask = m, mk = true;
  if (!mk) return false;
  if (parts[4] != "fwd" && parts[4] != "bwd") return false;
  k.mode = parts[4];
  if (parts[5] != "r12" && parts[5] != "r14" && parts[5] != "r16" && parts[5] != "r18" &&
      parts[5] != "r20")
    return false;
  k.rows_bucket = std::stoi(parts[5].substr(1));
  *out = k;
  return true;
}

namespace {

Status bad(const std::string& origin, const std::string& key, const std::string& why) {
  return Status::Invalid(fmt::format("{}: {}: {}", origin, key, why));
}

Status read_int(const json& obj, const char* name, const std::string& origin,
                const std::string& where, int lo, int hi, int* out) {
  auto it = obj.find(name);
  if (it == obj.end()) return Status::Ok();  // optional: 0 = family default
  if (!it->is_number_integer())
    return bad(origin, where + "." + name, "must be an integer");
  const long long v = it->get<long long>();
  if (v < lo || v > hi)
    return bad(origin, where + "." + name, fmt::format("must be in {}..{}, got {}", lo, hi, v));
  *out = static_cast<int>(v);
  return Status::Ok();
}

Status check_keys(const json& obj, std::initializer_list<const char*> allowed,
                  const std::string& origin, const std::string& where) {
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    bool ok = false;
    for (const char* a : allowed) ok = ok || it.key() == a;
    if (!ok) return bad(origin, where.empty() ? it.key() : where + "." + it.key(), "unknown key");
  }
  return Status::Ok();
}

Status read_string(const json& obj, const char* name, const std::string& origin,
                   const std::string& where, std::string* out) {
  auto it = obj.find(name);
  if (it == obj.end()) return Status::Ok();
  if (!it->is_string()) return bad(origin, where + name, "must be a string");
  *out = it->get<std::string>();
  return Status::Ok();
}

Status read_number(const json& obj, const char* name, const std::string& origin,
                   const std::string& where, double* out) {
  auto it = obj.find(name);
  if (it == obj.end()) return Status::Ok();
  if (!it->is_number() || it->get<double>() < 0)
    return bad(origin, where + "." + name, "must be a non-negative number");
  *out = it->get<double>();
  return Status::Ok();
}

}  // namespace

Status TunedTable::parse(const std::string& text, const std::string& origin, TunedTable* out) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::Invalid(fmt::format("{}: not valid JSON", origin));
  if (!j.is_object()) return Status::Invalid(fmt::format("{}: must be a JSON object", origin));
  FLASHPLUS_RETURN_IF_ERROR(check_keys(
      j, {"schema_version", "device", "fingerprint", "git_revision", "created", "entries"}, origin,
      ""));
  auto ver = j.find("schema_version");
  if (ver == j.end() || !ver->is_number_integer())
    return bad(origin, "schema_version", "missing or not an integer");
  if (ver->get<int>() != kSchemaVersion)
    return bad(origin, "schema_version",
               fmt::format("version {} is not the supported version {}", ver->get<int>(),
                           kSchemaVersion));
  TunedTable t;
  FLASHPLUS_RETURN_IF_ERROR(read_string(j, "device", origin, "", &t.device));
  FLASHPLUS_RETURN_IF_ERROR(read_string(j, "fingerprint", origin, "", &t.fingerprint));
  FLASHPLUS_RETURN_IF_ERROR(read_string(j, "git_revision", origin, "", &t.git_revision));
  FLASHPLUS_RETURN_IF_ERROR(read_string(j, "created", origin, "", &t.created));
  if (t.fingerprint.empty()) return bad(origin, "fingerprint", "missing");
  auto ents = j.find("entries");
  if (ents == j.end() || !ents->is_object()) return bad(origin, "entries", "missing or not an object");
  for (auto it = ents->begin(); it != ents->end(); ++it) {
    const std::string where = "entries." + it.key();
    TuneKey key;
    if (!TuneKey::parse(it.key(), &key))
      return bad(origin, where, "not a kernel key of the form arch/dtype/dNN/mask/mode/rNN");
    const json& e = it.value();
    if (!e.is_object()) return bad(origin, where, "must be an object");
    FLASHPLUS_RETURN_IF_ERROR(check_keys(
        e, {"kernel", "config", "time_ms", "runner_up", "runner_up_ms", "workload"}, origin,
        where));
    TunedEntry te;
    FLASHPLUS_RETURN_IF_ERROR(read_string(e, "kernel", origin, where + ".", &te.kernel));
    FLASHPLUS_RETURN_IF_ERROR(read_string(e, "runner_up", origin, where + ".", &te.runner_up));
    FLASHPLUS_RETURN_IF_ERROR(read_string(e, "workload", origin, where + ".", &te.workload));
    FLASHPLUS_RETURN_IF_ERROR(read_number(e, "time_ms", origin, where, &te.time_ms));
    FLASHPLUS_RETURN_IF_ERROR(read_number(e, "runner_up_ms", origin, where, &te.runner_up_ms));
    auto c = e.find("config");
    if (c == e.end() || !c->is_object()) return bad(origin, where + ".config", "missing or not an object");
    const std::string cw = where + ".config";
    FLASHPLUS_RETURN_IF_ERROR(check_keys(
        *c, {"block_m", "block_n", "num_warps", "stages", "num_splits"}, origin, cw));
    FLASHPLUS_RETURN_IF_ERROR(read_int(*c, "block_m", origin, cw, 0, 1024, &te.config.block_m));
    FLASHPLUS_RETURN_IF_ERROR(read_int(*c, "block_n", origin, cw, 0, 1024, &te.config.block_n));
    FLASHPLUS_RETURN_IF_ERROR(read_int(*c, "num_warps", origin, cw, 0, 32, &te.config.num_warps));
    FLASHPLUS_RETURN_IF_ERROR(read_int(*c, "stages", origin, cw, 0, 8, &te.config.stages));
    FLASHPLUS_RETURN_IF_ERROR(read_int(*c, "num_splits", origin, cw, 0, 128, &te.config.num_splits));
    t.entries_[key.to_string()] = te;
  }
  *out = std::move(t);
  return Status::Ok();
}

Status TunedTable::load(const std::string& path, TunedTable* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return Status::Invalid(fmt::format("{}: cannot open", path));
  // Bounded: /dev/zero or a runaway file as FLASHPLUS_TUNED_TABLE must not be read until memory
  // runs out (it is loaded by every command). Real tables are a few KB.
  constexpr size_t kMaxTableBytes = size_t{16} << 20;
  std::string text;
  char buf[1 << 16];
  while (f.read(buf, sizeof buf) || f.gcount() > 0) {
    text.append(buf, static_cast<size_t>(f.gcount()));
    if (text.size() > kMaxTableBytes)
      return Status::Invalid(fmt::format(
          "{}: more than {} bytes, not a tuned table (a stream that never ends?)", path,
          kMaxTableBytes));
  }
  if (f.bad()) return Status::Invalid(fmt::format("{}: read error", path));
  return parse(text, path, out);
}

std::string TunedTable::dump() const {
  json ents = json::object();
  for (const auto& [k, e] : entries_) {
    ents[k] = {{"kernel", e.kernel},
               {"config",
                {{"block_m", e.config.block_m},
                 {"block_n", e.config.block_n},
                 {"num_warps", e.config.num_warps},
                 {"stages", e.config.stages},
                 {"num_splits", e.config.num_splits}}},
               {"time_ms", e.time_ms},
               {"runner_up", e.runner_up},
               {"runner_up_ms", e.runner_up_ms},
               {"workload", e.workload}};
  }
  json j = {{"schema_version", kSchemaVersion}, {"device", device},
            {"fingerprint", fingerprint},       {"git_revision", git_revision},
            {"created", created},               {"entries", ents}};
  return j.dump(2) + "\n";
}

Status TunedTable::save(const std::string& path) const {
  const fs::path target(path);
  std::error_code ec;
  if (target.has_parent_path()) fs::create_directories(target.parent_path(), ec);
  const std::string tmp = path + fmt::format(".tmp.{}", static_cast<long>(::getpid()));
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) return Status::Runtime(fmt::format("{}: cannot write", tmp));
    f << dump();
    f.flush();
    if (!f) {
      f.close();
      fs::remove(tmp, ec);
      return Status::Runtime(fmt::format("{}: write failed", tmp));
    }
  }
  fs::rename(tmp, target, ec);
  if (ec) {
    const std::string why = ec.message();  // before fs::remove overwrites ec
    fs::remove(tmp, ec);
    return Status::Runtime(fmt::format("{}: rename failed: {}", path, why));
  }
  return Status::Ok();
}

void TunedTable::merge(const TunedTable& other) {
  for (const auto& [k, e] : other.entries_) entries_[k] = e;
  if (!other.device.empty()) device = other.device;
  if (!other.fingerprint.empty()) fingerprint = other.fingerprint;
  if (!other.git_revision.empty()) git_revision = other.git_revision;
  if (!other.created.empty()) created = other.created;
}

const TunedEntry* TunedTable::find(const TuneKey& key) const {
  auto it = entries_.find(key.to_string());
  return it == entries_.end() ? nullptr : &it->second;
}

std::string device_fingerprint(const DeviceDesc& d) {
  if (d.backend == Backend::cpu) return "cpu-" + d.arch;
  // Memory tells apart parts of one architecture and SM count (H100 SXM 80 GB vs H200 141 GB).
  return fmt::format("{}-{}sm-{}g", d.arch, d.multiprocessors,
                     (d.memory_bytes + (size_t{1} << 29)) >> 30);
}

std::string backend_fingerprint(Backend b) {
  for (const DeviceDesc& d : list_devices())
    if (d.backend == b) return device_fingerprint(d);
  return "";
}

bool parse_fingerprint(const std::string& fingerprint, FingerprintParts* out) {
  // From the right: [-<M>g] then -<N>sm; what precedes is the arch (no '-' in GPU arch names).
  auto number = [](const std::string& s, int* v) {
    if (s.empty() || s.size() > 6) return false;
    for (char c : s)
      if (c < '0' || c > '9') return false;
    *v = std::stoi(s);
    return true;
  };
  FingerprintParts p;
  std::string rest = fingerprint;
  size_t dash = rest.rfind('-');
  if (dash == std::string::npos) return false;
  std::string last = rest.substr(dash + 1);
  if (last.size() > 1 && last.back() == 'g' &&
      number(last.substr(0, last.size() - 1), &p.memory_gib)) {
    rest = rest.substr(0, dash);
    dash = rest.rfind('-');
    if (dash == std::string::npos) return false;
    last = rest.substr(dash + 1);
  }
  if (last.size() < 3 || last.compare(last.size() - 2, 2, "sm") != 0 ||
      !number(last.substr(0, last.size() - 2), &p.multiprocessors))
    return false;
  p.arch = rest.substr(0, dash);
  if (p.arch.empty() || p.arch.find('-') != std::string::npos) return false;
  *out = p;
  return true;
}

std::string nearest_fingerprint(const std::string& want, const std::vector<std::string>& available,
                                bool* nearest) {
  if (nearest) *nearest = false;
  for (const std::string& a : available)
    if (a == want) return a;
  FingerprintParts w;
  if (!parse_fingerprint(want, &w)) return "";
  // Rank: (SM count differs, memory distance, SM distance, name); unknown memory ranks last.
  std::string best;
  std::tuple<bool, long, long> best_rank{};
  for (const std::string& a : available) {
    FingerprintParts c;
    if (!parse_fingerprint(a, &c) || c.arch != w.arch) continue;
    const long mem = c.memory_gib < 0 || w.memory_gib < 0
                         ? std::numeric_limits<long>::max()
                         : std::labs(static_cast<long>(c.memory_gib) - w.memory_gib);
    const std::tuple<bool, long, long> rank{c.multiprocessors != w.multiprocessors, mem,
                                            std::labs(static_cast<long>(c.multiprocessors) -
                                                      w.multiprocessors)};
    if (best.empty() || rank < best_rank || (rank == best_rank && a < best)) {
      best = a;
      best_rank = rank;
    }
  }
  if (nearest) *nearest = !best.empty();
  return best;
}

// ---- the active table ------------------------------------------------------------------------
namespace {

struct Active {
  bool loaded = false;
  std::unique_ptr<TunedTable> table;
  std::string source;
  std::string match;  // active_table_match
};

std::mutex g_mu;
std::map<std::string, Active> g_active;  // by fingerprint

// The folder of the loaded libflashplus (of the executable, when linked statically): found from
// the address of a function of ours, so it is right inside any host process (python).
fs::path library_dir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<const void*>(&library_dir), &info) == 0 || info.dli_fname == nullptr ||
      *info.dli_fname == '\0')
    return {};
  std::error_code ec;
  const fs::path lib = fs::canonical(info.dli_fname, ec);
  return ec ? fs::path() : lib.parent_path();
}

std::vector<fs::path> candidate_dirs() {
  std::vector<fs::path> dirs;
  // Installed (cmake --install, or a wheel's flashplus/lib + flashplus/share): relative to the
  // library. Then the build tree (build/kernels/libflashplus.so -> ../../configs/tuned).
  if (const fs::path lib = library_dir(); !lib.empty()) {
#ifdef FLASHPLUS_LIB_TO_TUNED_DIR
    dirs.push_back(lib / FLASHPLUS_LIB_TO_TUNED_DIR);
#endif
    dirs.push_back(lib / "../share/flashplus/tuned");
    dirs.push_back(lib / "../../configs/tuned");
  }
  // Relative to the executable: build trees and a CLI binary unpacked next to configs/.
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path d = exe.parent_path();
    dirs.push_back(d / "../configs/tuned");
    dirs.push_back(d / "../../configs/tuned");
    dirs.push_back(d / "../share/flashplus/tuned");
  }
  return dirs;
}

std::string file_name_for(const std::string& fingerprint) {
  std::string s = fingerprint;
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') c = '_';
  return s + ".json";
}

// No file of the exact fingerprint: the nearest table of the same architecture among the
// candidate folders' tables (nearest_fingerprint; the file's stem is its fingerprint, the first
// folder holding a name wins). "" when none.
std::string nearest_table_path(const std::string& fingerprint) {
  std::map<std::string, std::string> by_fingerprint;
  for (const fs::path& d : candidate_dirs()) {
    std::error_code ec;
    for (fs::directory_iterator it(d, ec), end; !ec && it != end; it.increment(ec)) {
      const fs::path& p = it->path();
      std::error_code fe;
      if (p.extension() != ".json" || !fs::is_regular_file(p, fe)) continue;
      by_fingerprint.emplace(p.stem().string(), fs::weakly_canonical(p, fe).string());
    }
  }
  std::vector<std::string> names;
  for (const auto& [fp, path] : by_fingerprint) names.push_back(fp);
  const std::string best = nearest_fingerprint(fingerprint, names);
  return best.empty() ? "" : by_fingerprint[best];
}

// Why the table of fingerprint `table_fp` serves a device of `fingerprint` (active_table_match),
// or "" when it must not (another architecture, another CPU).
std::string match_reason(const std::string& fingerprint, const std::string& table_fp) {
  bool nearest = false;
  if (nearest_fingerprint(fingerprint, {table_fp}, &nearest).empty()) return "";
  if (!nearest) return "exact";
  FingerprintParts w, t;
  parse_fingerprint(fingerprint, &w);
  parse_fingerprint(table_fp, &t);
  return fmt::format("nearest: {} (no table for {}; same arch {}, {})", table_fp, fingerprint,
                     w.arch,
                     w.multiprocessors == t.multiprocessors ? "same SM count, closest memory"
                                                            : "closest memory, other SM count");
}

Active load_active(const std::string& fingerprint) {
  Active a;
  a.loaded = true;
  std::string path;
  if (const char* env = std::getenv("FLASHPLUS_TUNED_TABLE"); env && *env) {
    path = env;
  } else {
    for (const fs::path& d : candidate_dirs()) {
      std::error_code ec;
      const fs::path p = d / file_name_for(fingerprint);
      if (fs::is_regular_file(p, ec)) {
        path = fs::weakly_canonical(p, ec).string();
        break;
      }
    }
  }
  if (path.empty()) path = nearest_table_path(fingerprint);
  if (path.empty()) {
    a.source = fmt::format("none: no {} found, nor a table of the same arch (heuristics in use)",
                           file_name_for(fingerprint));
    return a;
  }
  auto t = std::make_unique<TunedTable>();
  Status st = TunedTable::load(path, t.get());
  if (st.ok()) a.match = match_reason(fingerprint, t->fingerprint);
  if (st.ok() && a.match.empty())
    st = Status::Invalid(fmt::format("{}: fingerprint '{}' does not match this device '{}'", path,
                                     t->fingerprint, fingerprint));
  if (!st.ok()) {
    std::fprintf(stderr, "flashplus: warning: ignoring tuned table: %s; using heuristics\n",
                 st.message().c_str());
    a.source = "none: " + st.message();
    a.match.clear();
    return a;
  }
  a.source = path;
  a.table = std::move(t);
  return a;
}

const Active& get_active(const std::string& fingerprint) {
  std::lock_guard<std::mutex> lock(g_mu);
  Active& a = g_active[fingerprint];
  if (!a.loaded) a = load_active(fingerprint);
  return a;
}

}  // namespace

const TunedTable* active_table(const std::string& fingerprint) {
  return get_active(fingerprint).table.get();
}

std::string active_table_source(const std::string& fingerprint) {
  return get_active(fingerprint).source;
}

std::string active_table_match(const std::string& fingerprint) {
  return get_active(fingerprint).match;
}

void reset_active_tables_for_testing() {
  std::lock_guard<std::mutex> lock(g_mu);
  g_active.clear();
}

KernelConfig choose_config(const std::string& fingerprint, const TuneKey& key,
                           const KernelConfig& heuristic, bool* from_table) {
  return choose_config(fingerprint, key, heuristic, nullptr, from_table);
}

KernelConfig choose_config(const std::string& fingerprint, const TuneKey& key,
                           const KernelConfig& heuristic,
                           const std::function<bool(const KernelConfig&)>& compiled,
                           bool* from_table) {
  if (from_table) *from_table = false;
  const TunedTable* t = active_table(fingerprint);
  const TunedEntry* e = t ? t->find(key) : nullptr;
  if (e == nullptr) return heuristic;
  if (compiled && !compiled(e->config)) {
    static std::mutex mu;
    static std::set<std::string> warned;  // by fingerprint and key: one line each
    std::lock_guard<std::mutex> lock(mu);
    if (warned.insert(fingerprint + " " + key.to_string()).second) {
      const std::string what = e->kernel.empty()
                                   ? e->config.to_string()
                                   : fmt::format("kernel '{}' ({})", e->kernel, e->config.to_string());
      std::fprintf(stderr,
                   "flashplus: warning: tuned table entry %s names %s, which this build has no "
                   "instance for; using the heuristics' %s\n",
                   key.to_string().c_str(), what.c_str(), heuristic.to_string().c_str());
    }
    return heuristic;
  }
  if (from_table) *from_table = true;
  return e->config;
}

}  // namespace flashplus
