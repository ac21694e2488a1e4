#include "bench.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <tuple>

#include "common.h"
#include "device_buffer.h"
#include "flashplus/numerics.h"
#include "flashplus/runtime.h"
#include "flops.h"
#include "verify.h"  // random_normal

namespace flashplus::cli {
namespace fs = std::filesystem;
using nlohmann::json;

std::vector<BenchCase> bench_cases(const std::vector<Workload>& work,
                                   const std::vector<std::string>& modes) {
  std::vector<BenchCase> out;
  if (modes.empty()) {
    for (const Workload& w : work) out.push_back({w.model, w.dtype, w.batch, w.seqlen, w.mode});
    return out;
  }
  for (const std::string& mode : modes) {
    std::set<std::tuple<const ModelConfig*, int, int, int>> seen;
    for (const Workload& w : work) {
      if (!seen.insert({w.model, static_cast<int>(w.dtype), w.batch, w.seqlen}).second) continue;
      out.push_back({w.model, w.dtype, w.batch, w.seqlen, mode});
    }
  }
  return out;
}

namespace {

FlopShape flop_shape(const BenchCase& c) {
  FlopShape fs;
  fs.batch = c.batch;
  fs.seqlen_q = fs.seqlen_k = c.seqlen;
  fs.nheads = c.model->nheads;
  fs.head_dim = c.model->head_dim;
  fs.causal = c.model->causal;
  fs.window_left = c.model->window_left;
  fs.window_right = c.model->window_right;
  return fs;
}

}  // namespace

double case_flops(const BenchCase& c) {
  const FlopShape fs = flop_shape(c);
  double f = 0;
  if (c.mode == "fwd" || c.mode == "fwd+bwd") f += attention_flops(fs, FlopMode::fwd);
  if (c.mode == "bwd" || c.mode == "fwd+bwd") f += attention_flops(fs, FlopMode::bwd);
  return f;
}

double case_bytes(const BenchCase& c) {
  const ModelConfig& m = *c.model;
  const double e = static_cast<double>(dtype_size(c.dtype));
  const double q = static_cast<double>(c.batch) * c.seqlen * m.nheads * m.head_dim * e;
  const double kv = static_cast<double>(c.batch) * c.seqlen * m.nheads_k * m.head_dim * e;
  const double lse = static_cast<double>(c.batch) * m.nheads * c.seqlen * 4.0;
  const double fwd = q + 2 * kv + q + lse;                 // q, k, v in; out, lse out
  const double bwd = 3 * q + 2 * kv + lse + q + 2 * kv;    // q, out, dout, k, v, lse in; dq, dk, dv out
  double b = 0;
  if (c.mode == "fwd" || c.mode == "fwd+bwd") b += fwd;
  if (c.mode == "bwd" || c.mode == "fwd+bwd") b += bwd;
  return b;
}

TuneKey case_key(const BenchCase& c, Backend be, const std::string& pass) {
  TuneKey k;
  k.arch = be == Backend::cpu ? "cpu" : backend_device(be).arch;
  k.dtype = c.dtype;
  k.head_dim_bucket = head_dim_bucket(c.model->head_dim);
  k.mask = mask_kind_for(c.model->causal, c.model->window_left, c.model->window_right);
  k.mode = pass;
  return k;
}

std::string case_shape(const BenchCase& c) {
  return fmt::format("b{} sq{} sk{} h{} hk{} d{}", c.batch, c.seqlen, c.seqlen, c.model->nheads,
                     c.model->nheads_k, c.model->head_dim);
}

BenchStats summarize(std::vector<double> v) {
  BenchStats s;
  s.samples = static_cast<int>(v.size());
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  s.median_ms = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  s.min_ms = v.front();
  s.max_ms = v.back();
  double sum = 0;
  for (double x : v) sum += x;
  s.mean_ms = sum / n;
  double var = 0;
  for (double x : v) var += (x - s.mean_ms) * (x - s.mean_ms);
  s.noise = n > 1 && s.mean_ms > 0 ? std::sqrt(var / (n - 1)) / s.mean_ms : 0;
  return s;
}

bool keep_sampling(const std::vector<double>& samples_ms, double wall_s, const BenchSettings& s,
                   bool* converged) {
  double timed = 0;
  for (double x : samples_ms) timed += x * 1e-3;
  const int n = static_cast<int>(samples_ms.size());
  const bool enough = n >= std::max(1, s.min_samples) && timed >= s.min_time_s;
  *converged = n >= 2 && enough && summarize(samples_ms).noise <= s.max_noise;
  if (*converged) return false;
  if (n >= 1 && wall_s >= s.max_time_s) return false;
  return true;
}

namespace {

// Storage-dtype bytes of `n` never-zero values from `pool`, starting at a per-set offset.
std::vector<uint8_t> host_values(DType t, const std::vector<float>& pool, int64_t n, size_t offset) {
  std::vector<uint8_t> host(static_cast<size_t>(n) * dtype_size(t));
  for (int64_t i = 0; i < n; ++i) {
    float x = pool[(static_cast<size_t>(i) + offset) % pool.size()];
    store_float(host.data(), t, i, x);
    if (load_float(host.data(), t, i) == 0.f) store_float(host.data(), t, i, 0.5f);
  }
  return host;
}

DeviceBuffer upload(Backend be, const std::vector<uint8_t>& host) {
  DeviceBuffer d(be, host.size());
  if (!host.empty()) d.upload(host.data());
  return d;
}

struct Set {
  DeviceBuffer q, k, v, out, lse, dout, dq, dk, dv;
};

}  // namespace

BenchResult bench_case(const BenchCase& c, Backend be, const BenchSettings& s,
                       const KernelConfig* config_override) {
  const ModelConfig& m = *c.model;
  const int64_t B = c.batch, S = c.seqlen, H = m.nheads, HK = m.nheads_k, D = m.head_dim;
  const DeviceKind dk = runtime::device_kind(be);
  const bool need_bwd = c.mode != "fwd";
  const size_t e = dtype_size(c.dtype);
  const size_t qbytes = static_cast<size_t>(B * S * H * D) * e;
  const size_t kvbytes = static_cast<size_t>(B * S * HK * D) * e;
  const size_t set_bytes = 2 * qbytes + 2 * kvbytes + static_cast<size_t>(B * H * S) * 4 +
                           (need_bwd ? 2 * qbytes + 2 * kvbytes : 0);
  // Enough sets that one pass over them exceeds the cache; at least 2 so consecutive samples
  // never reuse the same inputs.
  const size_t l2 = runtime::default_l2_bytes(be);
  const int nsets = static_cast<int>(
      std::clamp<size_t>(set_bytes ? l2 / set_bytes + 1 : 2, 2, 1024));

  static const std::vector<float> pool = random_normal(1, "bench", "pool", (1 << 20) + 7);
  std::vector<Set> sets(static_cast<size_t>(nsets));
  for (int i = 0; i < nsets; ++i) {
    Set& st = sets[i];
    const size_t off = static_cast<size_t>(i) * 7919;
    st.q = upload(be, host_values(c.dtype, pool, B * S * H * D, off));
    st.k = upload(be, host_values(c.dtype, pool, B * S * HK * D, off + 104729));
    st.v = upload(be, host_values(c.dtype, pool, B * S * HK * D, off + 224737));
    st.out = DeviceBuffer(be, qbytes);
    st.lse = DeviceBuffer(be, static_cast<size_t>(B * H * S) * 4);
    if (need_bwd) {
      st.dout = upload(be, host_values(c.dtype, pool, B * S * H * D, off + 350377));
      st.dq = DeviceBuffer(be, qbytes);
      st.dk = DeviceBuffer(be, kvbytes);
      st.dv = DeviceBuffer(be, kvbytes);
    }
  }
  std::optional<TensorView> alibi;
  DeviceBuffer slopes_dev;
  if (m.alibi) {
    std::vector<float> slopes(static_cast<size_t>(H));
    for (int64_t h = 0; h < H; ++h) slopes[h] = std::exp2(-8.0f * (h + 1) / H);
    slopes_dev = DeviceBuffer(be, slopes.size() * 4);
    slopes_dev.upload(slopes.data());
    alibi = TensorView::contiguous(slopes_dev.get(), DType::f32, {H}, dk);
  }
  RunOptions ro;
  ro.backend = be;
  ro.num_threads = s.threads;
  ro.config_override = config_override;
  const auto scale = static_cast<float>(m.softmax_scale);
  const auto cap = static_cast<float>(m.softcap);
  auto v4 = [&](const DeviceBuffer& d, int64_t heads) {
    return TensorView::contiguous(d.get(), c.dtype, {B, S, heads, D}, dk);
  };
  BenchResult r;
  auto check = [](const Status& st) {
    if (st.code() == StatusCode::unsupported || st.code() == StatusCode::no_instance)
      throw UnsupportedCase(st.to_string());
    throw_if_error(st);
  };
  auto fwd = [&](Set& st) {
    check(mha_fwd(v4(st.q, H), v4(st.k, HK), v4(st.v, HK), v4(st.out, H),
                           TensorView::contiguous(st.lse.get(), DType::f32, {B, H, S}, dk), alibi,
                           0.f, scale, m.causal, m.window_left, m.window_right, cap, false, ro));
  };
  auto bwd = [&](Set& st) {
    check(mha_bwd(v4(st.dout, H), v4(st.q, H), v4(st.k, HK), v4(st.v, HK), v4(st.out, H),
                           TensorView::contiguous(st.lse.get(), DType::f32, {B, H, S}, dk),
                           v4(st.dq, H), v4(st.dk, HK), v4(st.dv, HK), alibi, 0.f, scale, m.causal,
                           m.window_left, m.window_right, cap, false, std::nullopt, ro));
  };
  auto note_config = [&](const char* pass) {
    KernelConfig kc;
    if (runtime::last_kernel_config(be, &kc)) r.configs[pass] = kc;
  };
  // bwd needs out and lse of its own inputs: one forward per set (setup, not timed).
  if (need_bwd) {
    for (Set& st : sets) fwd(st);
    note_config("fwd");
    if (c.mode == "bwd") r.configs.clear();
  }
  auto once = [&](Set& st) {
    if (c.mode == "fwd" || c.mode == "fwd+bwd") {
      fwd(st);
      note_config("fwd");
    }
    if (need_bwd) {
      bwd(st);
      note_config("bwd");
    }
  };
  throw_if_error(runtime::synchronize(be));
  const auto t0 = std::chrono::steady_clock::now();
  auto wall = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  int next = 0;
  for (int i = 0; i < s.warmup; ++i) once(sets[next++ % nsets]);
  throw_if_error(runtime::synchronize(be));
  std::vector<double> samples;
  runtime::Timer timer(be);
  bool converged = false;
  do {
    Set& st = sets[next++ % nsets];
    timer.start();
    once(st);
    samples.push_back(timer.stop_ms());
  } while (keep_sampling(samples, wall(), s, &converged));
  r.stats = summarize(samples);
  r.stats.converged = converged;
  r.stats.seconds = wall();
  r.stats.buffer_sets = nsets;
  return r;
}

// ---- peaks ------------------------------------------------------------------------------------

std::string peaks_cache_path() {
  std::string base;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) {
    base = x;
  } else if (const char* h = std::getenv("HOME"); h && *h) {
    base = std::string(h) + "/.cache";
  } else {
    base = ".cache";
  }
  return base + "/flashplus/peaks.json";
}

namespace {

json read_peaks_file(const std::string& path) {
  std::ifstream f(path);
  if (!f) return json::object();
  std::stringstream ss;
  ss << f.rdbuf();
  json j = json::parse(ss.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("devices") || !j["devices"].is_object())
    return json::object();
  return j;
}

}  // namespace

Peaks cached_peaks(Backend be) {
  Peaks p;
  const DeviceDesc d = backend_device(be);
  const std::string fp = device_fingerprint(d);
  const std::string path = peaks_cache_path();
  const json j = read_peaks_file(path);
  p.source = fmt::format("not measured (run `flashplus bench --peaks --backend {}`)",
                         backend_name(be));
  if (!j.contains("devices") || !j["devices"].contains(fp)) return p;
  const json& e = j["devices"][fp];
  // The fingerprint names a device class; the CPU's also depends on the thread count, which the
  // device name carries, so a cached entry is used only for the same name.
  if (!e.is_object() || e.value("device", "") != d.name || !e.contains("matmul_tflops") ||
      !e.contains("copy_gbs") || !e["matmul_tflops"].is_number() || !e["copy_gbs"].is_number())
    return p;
  p.measured = true;
  p.matmul_tflops = e["matmul_tflops"].get<double>();
  p.copy_gbs = e["copy_gbs"].get<double>();
  p.device = d.name;
  p.date = e.value("measured", "");
  p.source = path;
  return p;
}

Peaks measure_peaks(Backend be) {
  Peaks p;
  const DeviceDesc d = backend_device(be);
  double mm = 0, bw = 0;
  Status st = runtime::measure_matmul_tflops(be, &mm);
  if (st.ok()) st = runtime::measure_copy_gbs(be, &bw);
  if (!st.ok()) {
    if (st.code() == StatusCode::unsupported) {
      p.source = "not measured (" + st.message() + ")";
      return p;
    }
    throw status_error(st);
  }
  p.measured = true;
  p.matmul_tflops = mm;
  p.copy_gbs = bw;
  p.device = d.name;
  p.date = utc_now_iso();
  const std::string path = peaks_cache_path();
  json j = read_peaks_file(path);
  if (!j.contains("devices")) j = {{"schema_version", 1}, {"devices", json::object()}};
  j["devices"][device_fingerprint(d)] = {{"device", d.name},
                                         {"backend", backend_name(be)},
                                         {"matmul_tflops", mm},
                                         {"copy_gbs", bw},
                                         {"measured", p.date},
                                         {"git_revision", git_revision()}};
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  write_file_atomic(path, j.dump(2) + "\n");
  p.source = path;
  return p;
}

// ---- provenance -------------------------------------------------------------------------------

std::string utc_now_iso() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string git_revision() {
#ifdef FLASHPLUS_GIT_REVISION
  return FLASHPLUS_GIT_REVISION;
#else
  return "unknown";
#endif
}

std::string compiler_id() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#else
  return "unknown";
#endif
}

DeviceDesc backend_device(Backend be) {
  for (const DeviceDesc& d : list_devices())
    if (d.backend == be) return d;
  throw runtime_error(fmt::format("the {} backend has no device", backend_name(be)));
}

void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + fmt::format(".tmp.{}", static_cast<long>(::getpid()));
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw usage_error(fmt::format("{}: cannot write", tmp));
    f << text;
    f.flush();
    if (!f) {
      std::error_code ec;
      fs::remove(tmp, ec);
      throw runtime_error(fmt::format("{}: write failed", tmp));
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw runtime_error(fmt::format("{}: rename failed: {}", path, ec.message()));
  }
}

}  // namespace flashplus::cli
