#include "bench.h"
#include "file_io.h"
#include "git_revision.h"

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
#include "json_check.h"
#include "verify.h"  // random_normal

namespace flashplus::cli {
namespace fs = std::filesystem;
using nlohmann::json;

BenchCase bench_case_of(const Workload& w, const std::string& mode) {
  BenchCase c;
  c.model = w.model;
  c.dtype = w.dtype;
  c.batch = w.batch;
  c.seqlen = w.seqlen;
  c.mode = mode;
  c.kind = w.kind;
  c.page_size = w.page_size;
  c.num_splits = w.num_splits;
  c.varlen = w.varlen;
  return c;
}

std::vector<BenchCase> bench_cases(const std::vector<Workload>& work,
                                   const std::vector<std::string>& modes) {
  std::vector<BenchCase> out;
  if (modes.empty()) {
    for (const Workload& w : work) out.push_back(bench_case_of(w, w.mode));
    return out;
  }
  for (const std::string& mode : modes) {
    std::set<std::tuple<const ModelConfig*, int, int, int, std::string>> seen;
    for (const Workload& w : work) {
      if (w.kind == "decode" && mode != "fwd") continue;  // the KV cache is forward only
      if (!seen.insert({w.model, static_cast<int>(w.dtype), w.batch, w.seqlen, workload_label(w)})
               .second)
        continue;
      out.push_back(bench_case_of(w, mode));
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
  if (c.kind == "decode") {
    fs.seqlen_q = c.model->decode_seqlen_q;
    fs.seqlen_k = c.seqlen + fs.seqlen_q;
    if (fs.seqlen_q == 1) fs.causal = false;  // one bottom-right-aligned row: nothing is masked
  }
  return fs;
}

// The cases a varlen case is the sum of: one batch-1 prefill case per sequence.
std::vector<BenchCase> varlen_parts(const BenchCase& c) {
  std::vector<BenchCase> out;
  for (int s : c.varlen) {
    BenchCase p;
    p.model = c.model;
    p.dtype = c.dtype;
    p.batch = 1;
    p.seqlen = s;
    p.mode = c.mode;
    out.push_back(p);
  }
  return out;
}

}  // namespace

double case_flops(const BenchCase& c) {
  if (c.kind == "varlen") {
    double f = 0;
    for (const BenchCase& p : varlen_parts(c)) f += case_flops(p);
    return f;
  }
  const FlopShape fs = flop_shape(c);
  double f = 0;
  if (c.mode == "fwd" || c.mode == "fwd+bwd") f += attention_flops(fs, FlopMode::fwd);
  if (c.mode == "bwd" || c.mode == "fwd+bwd") f += attention_flops(fs, FlopMode::bwd);
  return f;
}

double case_bytes(const BenchCase& c) {
  const ModelConfig& m = *c.model;
  const double e = static_cast<double>(dtype_size(c.dtype));
  if (c.kind == "varlen") {
    double b = 0;
    for (const BenchCase& p : varlen_parts(c)) b += case_bytes(p);
    return b;
  }
  if (c.kind == "decode")  // the KV-cache read: k and v of every visible position
    return 2.0 * c.batch * (c.seqlen + m.decode_seqlen_q) * m.nheads_k * m.head_dim * e;
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
  // Query rows, as tune_key_of() counts them for the library's call.
  long long rows_per_head = static_cast<long long>(c.batch) * c.seqlen;
  if (c.kind == "decode") rows_per_head = static_cast<long long>(c.batch) * c.model->decode_seqlen_q;
  if (c.kind == "varlen") {
    rows_per_head = 0;
    for (int n : c.varlen) rows_per_head += n;
  }
  k.rows_bucket = rows_bucket(rows_per_head * c.model->nheads);
  return k;
}

std::string case_shape(const BenchCase& c) {
  if (c.kind == "decode")
    return fmt::format("b{} sq{} cache{} page{} splits{} h{} hk{} d{}", c.batch,
                       c.model->decode_seqlen_q, c.seqlen, c.page_size, c.num_splits,
                       c.model->nheads, c.model->nheads_k, c.model->head_dim);
  if (c.kind == "varlen") {
    long total = 0;
    for (int s : c.varlen) total += s;
    return fmt::format("varlen b{} total{} max{} h{} hk{} d{}", c.batch, total, c.seqlen,
                       c.model->nheads, c.model->nheads_k, c.model->head_dim);
  }
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

void check_timing(const BenchSettings& s, Backend be) {
  if (s.timing != "call" && s.timing != "stream" && s.timing != "flush")
    throw usage_error(fmt::format("--timing: unknown '{}' (call|stream|flush)", s.timing));
  if (s.timing != "call" && runtime::device_kind(be) == DeviceKind::cpu)
    throw usage_error(fmt::format(
        "--timing {} needs a GPU backend: the CPU backend runs each call on the host, so "
        "there is no launch to hide and no device cache to clear (use --timing call)",
        s.timing));
  // Finite limits only (the flags' validators refuse NaN and inf too): NaN passes every
  // comparison, so `--max-time nan` would never end the sampling loop.
  if (!std::isfinite(s.max_time_s) || !std::isfinite(s.min_time_s) ||
      !std::isfinite(s.max_noise) || s.max_time_s < 0 || s.min_time_s < 0 || s.max_noise < 0)
    throw usage_error("--min-time, --max-time and --max-noise must be finite numbers >= 0");
  if (!(s.delay_us >= 0) || s.delay_us > 1e6)
    throw usage_error("--timing-delay: 0 to 1e6 microseconds");
}

void before_sample(const BenchSettings& s, Backend be) {
  if (s.timing == "stream") throw_if_error(runtime::delay(be, s.delay_us));
  if (s.timing == "flush") throw_if_error(runtime::flush_l2(be, s.flush_bytes));
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

// ---- decode and varlen cases ------------------------------------------------------------------

struct WorkloadRunner::Impl {
  BenchCase c;
  Backend be;
  DeviceKind dk;
  RunOptions ro;
  int64_t H, HK, D;
  size_t bytes = 0;
  DeviceBuffer q, k, v, out, lse, dout, dq, dk_, dv, cuq, cuk, k_new, v_new, seqlens, table,
      slopes;
  std::optional<TensorView> alibi;
  // decode
  int64_t sq = 1, c0 = 0, c1 = 0, mb = 0;
  // varlen
  int64_t tq = 0, max_len = 0;

  DeviceBuffer values(int64_t n, size_t offset) {
    static const std::vector<float> pool = random_normal(1, "bench", "pool", (1 << 20) + 7);
    const std::vector<uint8_t> h = host_values(c.dtype, pool, n, offset);
    bytes += h.size();
    return upload(be, h);
  }
  DeviceBuffer ints(const std::vector<int32_t>& v) {
    DeviceBuffer d(be, v.size() * 4);
    if (!v.empty()) d.upload(v.data());
    bytes += v.size() * 4;
    return d;
  }
  DeviceBuffer empty(size_t n) {
    bytes += n;
    return DeviceBuffer(be, n);
  }
  TensorView view(const DeviceBuffer& d, std::initializer_list<int64_t> shape,
                  DType t = DType::f32, bool storage = true) const {
    return TensorView::contiguous(d.get(), storage ? c.dtype : t, shape, dk);
  }
  static void check(const Status& st) {
    if (st.code() == StatusCode::unsupported || st.code() == StatusCode::no_instance)
      throw UnsupportedCase(st.to_string());
    throw_if_error(st);
  }
  void fwd() {
    const ModelConfig& m = *c.model;
    const auto scale = static_cast<float>(m.softmax_scale), cap = static_cast<float>(m.softcap);
    const int64_t B = c.batch;
    if (c.kind == "decode") {
      std::optional<TensorView> tab;
      if (c.page_size > 0) tab = TensorView::contiguous(table.get(), DType::i32, {B, mb}, dk);
      check(mha_fwd_kvcache(
          view(q, {B, sq, H, D}), view(k, {c0, c1, HK, D}), view(v, {c0, c1, HK, D}),
          view(k_new, {B, sq, HK, D}), view(v_new, {B, sq, HK, D}),
          TensorView::contiguous(seqlens.get(), DType::i32, {B}, dk), std::nullopt,
          std::nullopt, std::nullopt, std::nullopt, tab, alibi, view(out, {B, sq, H, D}),
          TensorView::contiguous(lse.get(), DType::f32, {B, H, sq}, dk), scale, m.causal,
          m.window_left, m.window_right, cap, false, c.num_splits, ro));
    } else {
      check(mha_varlen_fwd(
          view(q, {tq, H, D}), view(k, {tq, HK, D}), view(v, {tq, HK, D}), view(out, {tq, H, D}),
          TensorView::contiguous(lse.get(), DType::f32, {H, tq}, dk),
          TensorView::contiguous(cuq.get(), DType::i32, {B + 1}, dk),
          TensorView::contiguous(cuk.get(), DType::i32, {B + 1}, dk), std::nullopt, std::nullopt,
          std::nullopt, alibi, static_cast<int>(max_len), static_cast<int>(max_len),
          static_cast<float>(m.dropout), scale, false, m.causal, m.window_left, m.window_right, cap, false, 0, ro));
    }
  }
  void bwd() {
    const ModelConfig& m = *c.model;
    const auto scale = static_cast<float>(m.softmax_scale), cap = static_cast<float>(m.softcap);
    const int64_t B = c.batch;
    check(mha_varlen_bwd(
        view(dout, {tq, H, D}), view(q, {tq, H, D}), view(k, {tq, HK, D}), view(v, {tq, HK, D}),
        view(out, {tq, H, D}), TensorView::contiguous(lse.get(), DType::f32, {H, tq}, dk),
        view(dq, {tq, H, D}), view(dk_, {tq, HK, D}), view(dv, {tq, HK, D}),
        TensorView::contiguous(cuq.get(), DType::i32, {B + 1}, dk),
        TensorView::contiguous(cuk.get(), DType::i32, {B + 1}, dk), alibi,
        static_cast<int>(max_len), static_cast<int>(max_len), static_cast<float>(m.dropout), scale,
        false, m.causal,
        m.window_left, m.window_right, cap, false, std::nullopt, ro));
  }
};

WorkloadRunner::WorkloadRunner(const BenchCase& c, Backend be, int threads,
                               const KernelConfig* config_override, int set_index)
    : impl_(std::make_unique<Impl>()) {
  Impl& r = *impl_;
  const ModelConfig& m = *c.model;
  r.c = c;
  r.be = be;
  r.dk = runtime::device_kind(be);
  r.ro.backend = be;
  r.ro.num_threads = threads;
  r.ro.config_override = config_override;
  r.H = m.nheads;
  r.HK = m.nheads_k;
  r.D = m.head_dim;
  const int64_t B = c.batch, H = r.H, HK = r.HK, D = r.D;
  const size_t off = static_cast<size_t>(set_index) * 7919;
  const size_t e = dtype_size(c.dtype);
  if (c.kind == "decode") {
    r.sq = m.decode_seqlen_q;
    const int64_t cap = c.seqlen + r.sq;  // the cache after this step's append
    if (c.page_size > 0) {
      r.mb = (cap + c.page_size - 1) / c.page_size;
      r.c0 = B * r.mb;
      r.c1 = c.page_size;
      std::vector<int32_t> tab(static_cast<size_t>(B * r.mb));
      // Blocks of a sequence are not adjacent: block j of sequence b is j * B + b.
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < r.mb; ++j) tab[b * r.mb + j] = static_cast<int32_t>(j * B + b);
      r.table = r.ints(tab);
    } else {
      r.c0 = B;
      r.c1 = cap;
    }
    r.q = r.values(B * r.sq * H * D, off);
    r.k = r.values(r.c0 * r.c1 * HK * D, off + 104729);
    r.v = r.values(r.c0 * r.c1 * HK * D, off + 224737);
    r.k_new = r.values(B * r.sq * HK * D, off + 350377);
    r.v_new = r.values(B * r.sq * HK * D, off + 350381);
    r.seqlens = r.ints(std::vector<int32_t>(static_cast<size_t>(B), c.seqlen));
    r.out = r.empty(static_cast<size_t>(B * r.sq * H * D) * e);
    r.lse = r.empty(static_cast<size_t>(B * H * r.sq) * 4);
  } else {
    std::vector<int32_t> cu = {0};
    for (int s : c.varlen) {
      cu.push_back(cu.back() + s);
      r.max_len = std::max<int64_t>(r.max_len, s);
    }
    r.tq = cu.back();
    r.cuq = r.ints(cu);
    r.cuk = r.ints(cu);
    r.q = r.values(r.tq * H * D, off);
    r.k = r.values(r.tq * HK * D, off + 104729);
    r.v = r.values(r.tq * HK * D, off + 224737);
    r.out = r.empty(static_cast<size_t>(r.tq * H * D) * e);
    r.lse = r.empty(static_cast<size_t>(H * r.tq) * 4);
    if (c.mode != "fwd") {
      r.dout = r.values(r.tq * H * D, off + 350377);
      r.dq = r.empty(static_cast<size_t>(r.tq * H * D) * e);
      r.dk_ = r.empty(static_cast<size_t>(r.tq * HK * D) * e);
      r.dv = r.empty(static_cast<size_t>(r.tq * HK * D) * e);
    }
  }
  if (m.alibi) {
    std::vector<float> slopes(static_cast<size_t>(H));
    for (int64_t h = 0; h < H; ++h) slopes[h] = std::exp2(-8.0f * (h + 1) / H);
    r.slopes = DeviceBuffer(be, slopes.size() * 4);
    r.slopes.upload(slopes.data());
    r.alibi = TensorView::contiguous(r.slopes.get(), DType::f32, {H}, r.dk);
  }
}

WorkloadRunner::~WorkloadRunner() = default;

void WorkloadRunner::setup() {
  if (impl_->c.kind == "varlen" && impl_->c.mode == "bwd") impl_->fwd();
}

void WorkloadRunner::run() {
  const std::string& mode = impl_->c.mode;
  if (mode == "fwd" || mode == "fwd+bwd") impl_->fwd();
  if (impl_->c.kind == "varlen" && mode != "fwd") impl_->bwd();
}

size_t WorkloadRunner::set_bytes() const { return impl_->bytes; }

namespace {

BenchResult bench_workload(const BenchCase& c, Backend be, const BenchSettings& s,
                           const KernelConfig* config_override) {
  if (c.kind == "decode" && c.mode != "fwd")
    throw usage_error("decode workloads are forward only (the KV cache has no backward)");
  std::vector<std::unique_ptr<WorkloadRunner>> sets;
  sets.push_back(std::make_unique<WorkloadRunner>(c, be, s.threads, config_override, 0));
  const size_t set_bytes = sets[0]->set_bytes();
  const size_t l2 = runtime::default_l2_bytes(be);
  const int nsets = static_cast<int>(
      std::clamp<size_t>(set_bytes ? l2 / set_bytes + 1 : 2, 2, 1024));
  for (int i = 1; i < nsets; ++i)
    sets.push_back(std::make_unique<WorkloadRunner>(c, be, s.threads, config_override, i));
  BenchResult r;
  for (auto& st : sets) st->setup();
  throw_if_error(runtime::synchronize(be));
  const auto t0 = std::chrono::steady_clock::now();
  auto wall = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  int next = 0;
  for (int i = 0; i < s.warmup; ++i) sets[next++ % nsets]->run();
  throw_if_error(runtime::synchronize(be));
  std::vector<double> samples;
  runtime::Timer timer(be);
  bool converged = false;
  do {
    WorkloadRunner& st = *sets[next++ % nsets];
    before_sample(s, be);
    timer.start();
    st.run();
    samples.push_back(timer.stop_ms());
  } while (keep_sampling(samples, wall(), s, &converged));
  KernelConfig kc;
  if (runtime::last_kernel_config(be, &kc)) r.configs[c.mode == "bwd" ? "bwd" : "fwd"] = kc;
  r.stats = summarize(samples);
  r.stats.converged = converged;
  r.stats.seconds = wall();
  r.stats.buffer_sets = nsets;
  return r;
}

}  // namespace

BenchResult bench_case(const BenchCase& c, Backend be, const BenchSettings& s,
                       const KernelConfig* config_override) {
  if (c.kind != "prefill") return bench_workload(c, be, s, config_override);
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
  // A configuration override is for the pass being measured: when only the backward is timed,
  // its set-up forward runs with the library's own choice (a bwd tile may not exist as a fwd tile).
  RunOptions fro = ro;
  if (c.mode == "bwd") fro.config_override = nullptr;
  auto fwd = [&](Set& st) {
    check(mha_fwd(v4(st.q, H), v4(st.k, HK), v4(st.v, HK), v4(st.out, H),
                           TensorView::contiguous(st.lse.get(), DType::f32, {B, H, S}, dk), alibi,
                           static_cast<float>(m.dropout), scale, m.causal, m.window_left,
                           m.window_right, cap, false, fro));
  };
  auto bwd = [&](Set& st) {
    check(mha_bwd(v4(st.dout, H), v4(st.q, H), v4(st.k, HK), v4(st.v, HK), v4(st.out, H),
                           TensorView::contiguous(st.lse.get(), DType::f32, {B, H, S}, dk),
                           v4(st.dq, H), v4(st.dk, HK), v4(st.dv, HK), alibi,
                           static_cast<float>(m.dropout), scale, m.causal,
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
    before_sample(s, be);
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
  std::string text;
  try {
    text = read_file_bounded(path, kMaxJsonBytes);  // a cache: anything unreadable is ignored
  } catch (const Error&) {
    return json::object();
  }
  json j;
  try {
    j = JsonChecker(path).parse_text(text);  // bounded nesting: it is dumped again when updated
  } catch (const Error&) {
    return json::object();
  }
  if ( !j.is_object() || !j.contains("devices") || !j["devices"].is_object())
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

std::string git_revision() { return FLASHPLUS_GIT_REVISION; }  // generated/git_revision.h

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

}  // namespace flashplus::cli
