// `flashplus run`: model workloads from configs (timing table), or one attention call on .npy
// inputs (the NumPy contract: flag names are part of the interface, see the --help text).
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <memory>
#include <optional>
#include <set>

#include "bench.h"
#include "commands.h"
#include "common.h"
#include "config.h"
#include "device_buffer.h"
#include "flashplus/numerics.h"
#include "flashplus/runtime.h"
#include "flops.h"
#include "npy.h"
#include "verify.h"  // random_normal

namespace flashplus::cli {
namespace {

struct RunArgs {
  // config mode
  std::vector<std::string> configs;
  int max_seqlen = 0;
  std::vector<int> batch;
  std::vector<std::string> modes;
  int iters = -1, warmup = -1;
  bool list = false;
  // npy mode
  std::string q, k, v, out, lse, alibi, dout, dq, dk, dv;
  bool causal = false;
  std::vector<int> window;
  double softcap = 0, scale = 0;
  bool deterministic = false;
  // npy mode: variable-length batches (mha_varlen_fwd/bwd)
  std::string cu_seqlens_q, cu_seqlens_k, seqused_k;
  int max_seqlen_q = -1, max_seqlen_k = -1;
  // npy mode: KV cache (mha_fwd_kvcache)
  std::string k_cache, v_cache, cache_seqlens, block_table, k_new, v_new, rotary_cos, rotary_sin,
      cache_batch_idx, cache_leftpad, k_cache_out, v_cache_out;
  bool rotary_interleaved = false;
  int num_splits = -1;  // -1 = not given
  // npy mode: dropout
  double dropout = 0;
  bool dropout_given = false;
  uint64_t seed = 0, dropout_offset = 0;
  bool seed_given = false, offset_given = false;
  std::string s_dmask;  // return_softmax: S_dmask output (.npy)
  // both
  std::string dtype;
  std::string backend = "auto";
  int threads = 0;
};

// Copies `values` (float) into storage dtype `t` on the device.
DeviceBuffer upload_as(Backend be, DType t, const std::vector<float>& values) {
  std::vector<uint8_t> host(values.size() * dtype_size(t));
  for (size_t i = 0; i < values.size(); ++i)
    store_float(host.data(), t, static_cast<int64_t>(i), values[i]);
  DeviceBuffer d(be, host.size());
  d.upload(host.data());
  return d;
}

std::vector<float> download_as_float(const DeviceBuffer& d, DType t, size_t n) {
  std::vector<uint8_t> host(n * dtype_size(t));
  if (n) d.download(host.data());
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = load_float(host.data(), t, static_cast<int64_t>(i));
  return out;
}

TensorView view4(const DeviceBuffer& d, DType t, int64_t a, int64_t b, int64_t c, int64_t e,
                 DeviceKind dk) {
  return TensorView::contiguous(d.get(), t, {a, b, c, e}, dk);
}

// ---------------------------------------------------------------------------------------------
// config mode
// ---------------------------------------------------------------------------------------------

int run_configs(const RunArgs& a) {
  WorkloadFilter f;
  f.max_seqlen = a.max_seqlen;
  f.batch_override = a.batch;
  f.modes = a.modes;
  std::optional<DType> dtype_override;
  if (!a.dtype.empty()) {
    DType t;
    if (!parse_dtype(a.dtype, &t))
      throw usage_error(fmt::format("--dtype: unknown dtype '{}'", a.dtype));
    dtype_override = t;
  }
  std::vector<std::unique_ptr<ModelConfig>> models;
  std::vector<Workload> work;
  for (const auto& path : a.configs) {
    for (ModelConfig& m : load_model_configs(path)) {
      models.push_back(std::make_unique<ModelConfig>(std::move(m)));
      if (dtype_override) models.back()->dtypes = {*dtype_override};
      for (const Workload& w : expand_workloads(*models.back(), f)) work.push_back(w);
    }
  }
  if (work.empty())
    throw usage_error("no workloads left after --max-seqlen/--batch/--mode filters");

  auto header = [] {
    fmt::print("{:<12} {:<4} {:<5} {:>5} {:>7} {:>7} {:>4} {:<28} {:>10} {:>9}\n", "model", "mode",
               "dtype", "batch", "seqlen", "heads", "d", "mask", "ms", "TFLOP/s");
  };
  auto shape_cols = [](const Workload& w) {
    const ModelConfig& m = *w.model;
    return fmt::format("{:<12} {:<4} {:<5} {:>5} {:>7} {:>7} {:>4} {:<28}", m.name, w.mode,
                       dtype_name(w.dtype), w.batch, w.seqlen,
                       fmt::format("{}/{}", m.nheads, m.nheads_k), m.head_dim, mask_label(m));
  };
  if (a.list) {
    header();
    for (const Workload& w : work) fmt::print("{} {}\n", shape_cols(w), workload_label(w));
    return kExitOk;
  }

  const Backend be = resolve_backend(a.backend);
  const DeviceKind dk = runtime::device_kind(be);
  const bool cpu = be == Backend::cpu;
  const int warmup = a.warmup >= 0 ? a.warmup : (cpu ? 0 : 3);
  const int iters = a.iters > 0 ? a.iters : (cpu ? 1 : 10);
  fmt::print(
      "backend {}, {} warm-up + {} timed iteration(s) per workload; TFLOP/s counts "
      "unmasked work only (4*b*h*d*pairs fwd, 2.5x for bwd; see cli/flops.h)\n",
      backend_name(be), warmup, iters);
  header();
  std::fflush(stdout);
  RunOptions ro;
  ro.backend = be;
  ro.num_threads = a.threads;

  // One block of random values, tiled into every input (timing does not need fresh values).
  const std::vector<float> pool = random_normal(1, "run", "pool", 1 << 20);
  auto tiled = [&](int64_t n) {
    std::vector<float> out(static_cast<size_t>(n));
    for (size_t i = 0; i < out.size(); ++i) out[i] = pool[i % pool.size()];
    return out;
  };

  // THE convention (cli/flops.h) through bench's case_flops: varlen sums its sequences, decode
  // counts sq x (cache_len + sq).
  auto flops_of = [](const Workload& w) { return case_flops(bench_case_of(w, w.mode)); };
  double total_flops = 0;
  for (const Workload& w : work) total_flops += flops_of(w) * (warmup + iters);
  if (cpu && total_flops > 2e12)
    fmt::print(stderr,
               "note: {:.0f} TFLOP of attention on the CPU may take a long time; for a quick "
               "subset use e.g. --max-seqlen 1024 --batch 1 --mode fwd\n",
               total_flops / 1e12);
  // Progress with an estimate from the throughput measured so far (long CPU runs).
  double done_flops = 0, done_seconds = 0;

  for (size_t wi = 0; wi < work.size(); ++wi) {
    const Workload& w = work[wi];
    const ModelConfig& m = *w.model;
    const int64_t B = w.batch, S = w.seqlen, H = m.nheads, HK = m.nheads_k, D = m.head_dim;
    const auto w_start = std::chrono::steady_clock::now();
    auto progress = [&] {
      if (work.size() > 1) {
        std::string eta;
        if (done_seconds > 0)
          eta = fmt::format(" (about {:.1f} s)",
                            flops_of(w) * (warmup + iters) / (done_flops / done_seconds));
        fmt::print(stderr, "[{}/{}] {} {} {} b={} s={}{} ...\n", wi + 1, work.size(), m.name,
                   w.mode, dtype_name(w.dtype), B, S, eta);
      }
    };
    progress();
    if (w.kind != "prefill") {  // decode (mha_fwd_kvcache) and varlen (mha_varlen_fwd/bwd)
      const BenchCase bc = bench_case_of(w, w.mode);
      double ms = 0;
      try {
        WorkloadRunner runner(bc, be, a.threads, nullptr, 0);
        runner.setup();
        for (int i = 0; i < warmup; ++i) runner.run();
        runtime::Timer t(be);
        t.start();
        for (int i = 0; i < iters; ++i) runner.run();
        ms = t.stop_ms() / iters;
      } catch (const UnsupportedCase& e) {  // e.g. a GPU backend without the feature yet
        fmt::print("{} unsupported: {}\n", shape_cols(w), e.what());
        std::fflush(stdout);
        continue;
      }
      const double flops = case_flops(bc), bytes = case_bytes(bc);
      done_flops += flops * (warmup + iters);
      done_seconds +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - w_start).count();
      fmt::print("{} {:>10.3f} {:>9.4g}  {} {} {:.4g} GB/s\n", shape_cols(w), ms,
                 flops / (ms * 1e-3) / 1e12, workload_label(w),
                 w.kind == "decode" ? "KV read" : "min traffic", bytes / (ms * 1e-3) / 1e9);
      std::fflush(stdout);
      continue;
    }
    DeviceBuffer q = upload_as(be, w.dtype, tiled(B * S * H * D));
    DeviceBuffer k = upload_as(be, w.dtype, tiled(B * S * HK * D));
    DeviceBuffer v = upload_as(be, w.dtype, tiled(B * S * HK * D));
    DeviceBuffer out(be, B * S * H * D * dtype_size(w.dtype));
    DeviceBuffer lse(be, B * H * S * 4);
    std::optional<TensorView> alibi;
    DeviceBuffer slopes_dev;
    if (m.alibi) {
      std::vector<float> slopes(static_cast<size_t>(H));
      for (int64_t h = 0; h < H; ++h) slopes[h] = std::exp2(-8.0f * (h + 1) / H);
      slopes_dev = upload_as(be, DType::f32, slopes);
      alibi = TensorView::contiguous(slopes_dev.get(), DType::f32, {H}, dk);
    }
    const TensorView qv = view4(q, w.dtype, B, S, H, D, dk),
                     kv = view4(k, w.dtype, B, S, HK, D, dk),
                     vv = view4(v, w.dtype, B, S, HK, D, dk),
                     ov = view4(out, w.dtype, B, S, H, D, dk);
    const TensorView lv = TensorView::contiguous(lse.get(), DType::f32, {B, H, S}, dk);
    const auto scale = static_cast<float>(m.softmax_scale);
    const auto cap = static_cast<float>(m.softcap);
    const auto p_drop = static_cast<float>(m.dropout);  // as labelled ("+dropout0.1") and as bench
    auto fwd = [&] {
      throw_if_error(mha_fwd(qv, kv, vv, ov, lv, alibi, p_drop, scale, m.causal, m.window_left,
                             m.window_right, cap, false, ro));
    };
    double ms = 0;
    if (w.mode == "fwd") {
      for (int i = 0; i < warmup; ++i) fwd();
      runtime::Timer t(be);
      t.start();
      for (int i = 0; i < iters; ++i) fwd();
      ms = t.stop_ms() / iters;
    } else {
      fwd();
      DeviceBuffer dout = upload_as(be, w.dtype, tiled(B * S * H * D));
      DeviceBuffer dq(be, q.size()), dkb(be, k.size()), dvb(be, v.size());
      const TensorView dov = view4(dout, w.dtype, B, S, H, D, dk);
      auto bwd = [&] {
        throw_if_error(mha_bwd(dov, qv, kv, vv, ov, lv, view4(dq, w.dtype, B, S, H, D, dk),
                               view4(dkb, w.dtype, B, S, HK, D, dk),
                               view4(dvb, w.dtype, B, S, HK, D, dk), alibi, p_drop, scale, m.causal,
                               m.window_left, m.window_right, cap, false, std::nullopt, ro));
      };
      for (int i = 0; i < warmup; ++i) bwd();
      runtime::Timer t(be);
      t.start();
      for (int i = 0; i < iters; ++i) bwd();
      ms = t.stop_ms() / iters;
    }
    const double flops = flops_of(w);
    done_flops += flops * (warmup + iters);
    done_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - w_start).count();
    fmt::print("{} {:>10.3f} {:>9.4g}\n", shape_cols(w), ms, flops / (ms * 1e-3) / 1e12);
    std::fflush(stdout);
  }
  return kExitOk;
}

// ---------------------------------------------------------------------------------------------
// npy mode
// ---------------------------------------------------------------------------------------------

NpyArray read_nd(const std::string& path, const char* what, size_t ndim, const char* dims) {
  NpyArray a = read_npy(path);
  if (a.shape.size() != ndim)
    throw usage_error(fmt::format("{}: {} must have {} dimensions {}, got shape {}", path, what,
                                  ndim, dims, a.shape_str()));
  return a;
}
NpyArray read_4d(const std::string& path, const char* what) {
  return read_nd(path, what, 4, "(batch, seqlen, nheads, headdim)");
}

// An int32 index array of the given rank; `len0` >= 0 also fixes its first dimension.
NpyIntArray read_index(const std::string& path, const char* flag, size_t ndim, int64_t len0,
                       const char* dims) {
  NpyIntArray a = read_npy_int32(path);
  if (a.shape.size() != ndim || (len0 >= 0 && a.shape[0] != len0))
    throw usage_error(
        fmt::format("{}: {} must be int32 of shape {}, got {}", path, flag, dims, a.shape_str()));
  return a;
}

DeviceBuffer upload_i32(Backend be, const std::vector<int32_t>& v) {
  DeviceBuffer d(be, v.size() * 4);
  if (!v.empty()) d.upload(v.data());
  return d;
}

// Everything the three npy paths share.
struct NpyCommon {
  DType t = DType::f32;
  Backend be = Backend::cpu;
  DeviceKind dk = DeviceKind::cpu;
  RunOptions ro;
  int wl = -1, wr = -1;
  float scale = 0, cap = 0, p_dropout = 0;
};

// Staged results: written all-or-nothing at the end.
struct Results {
  std::vector<std::pair<std::string, std::pair<std::vector<float>, std::vector<int64_t>>>> list;
  void add(const std::string& path, std::vector<float> v, std::vector<int64_t> shape) {
    if (!path.empty()) list.push_back({path, {std::move(v), std::move(shape)}});
  }
  std::string commit() {
    OutputSet outputs;
    for (const auto& r : list) outputs.stage(r.first, r.second.first.data(), r.second.second);
    outputs.commit();
    std::string written;
    for (const auto& r : list) written += (written.empty() ? "" : ", ") + r.first;
    return written;
  }
};

// return_softmax's S_dmask (--s-dmask): (B, H, round128(rows), round128(cols)) in storage type t
// on the device, downloaded into the results with the other outputs. Empty path: not requested.
struct DmaskOutput {
  DmaskOutput(const std::string& path, Backend be, DType t, DeviceKind dk, int64_t B, int64_t H,
              int64_t rows, int64_t cols)
      : path(path), t(t), shape{B, H, (rows + 127) / 128 * 128, (cols + 127) / 128 * 128},
        buf(be, path.empty() ? 0 : static_cast<size_t>(numel()) * dtype_size(t)), dk(dk) {}
  bool wanted() const { return !path.empty(); }
  int64_t numel() const { return shape[0] * shape[1] * shape[2] * shape[3]; }
  std::optional<TensorView> view() const {
    if (!wanted()) return std::nullopt;
    return TensorView::contiguous(buf.get(), t, {shape[0], shape[1], shape[2], shape[3]}, dk);
  }
  void add_to(Results* res) const {
    if (wanted()) res->add(path, download_as_float(buf, t, static_cast<size_t>(numel())), shape);
  }
  std::string path;
  DType t;
  std::vector<int64_t> shape;
  DeviceBuffer buf;
  DeviceKind dk;
};

std::optional<NpyArray> read_alibi(const std::string& path, int64_t B, int64_t H) {
  if (path.empty()) return std::nullopt;
  NpyArray s = read_npy(path);
  const bool ok = (s.shape.size() == 1 && s.shape[0] == H) ||
                  (s.shape.size() == 2 && s.shape[0] == B && s.shape[1] == H);
  if (!ok)
    throw usage_error(fmt::format("{}: ALiBi slopes must have shape ({},) or ({}, {}), got {}",
                                  path, H, B, H, s.shape_str()));
  return s;
}

std::optional<TensorView> alibi_view(const std::optional<NpyArray>& s, DeviceBuffer* buf,
                                     const NpyCommon& c, int64_t B, int64_t H) {
  if (!s) return std::nullopt;
  *buf = upload_as(c.be, DType::f32, s->data);
  return s->shape.size() == 1 ? TensorView::contiguous(buf->get(), DType::f32, {H}, c.dk)
                              : TensorView::contiguous(buf->get(), DType::f32, {B, H}, c.dk);
}

// Combinations of flags that make no sense: one-line usage errors before any file is read.
void check_npy_flags(const RunArgs& a) {
  const bool varlen = !a.cu_seqlens_q.empty() || !a.cu_seqlens_k.empty();
  const bool kvc = !a.k_cache.empty();
  const bool bwd = !a.dout.empty() || !a.dq.empty() || !a.dk.empty() || !a.dv.empty();
  if (a.q.empty() || a.out.empty() || (!kvc && (a.k.empty() || a.v.empty())))
    throw usage_error(
        "run needs either --config FILE, or --q Q.npy --k K.npy --v V.npy --out OUT.npy (with "
        "--k-cache: --q, --k-cache, --v-cache, --out)");
  if (!a.cu_seqlens_q.empty() != !a.cu_seqlens_k.empty())
    throw usage_error("--cu-seqlens-q and --cu-seqlens-k must be given together");
  if (!varlen) {
    if (a.max_seqlen_q >= 0 || a.max_seqlen_k >= 0)
      throw usage_error("--max-seqlen-q/--max-seqlen-k need --cu-seqlens-q and --cu-seqlens-k");
    if (!a.seqused_k.empty())
      throw usage_error("--seqused-k needs --cu-seqlens-q and --cu-seqlens-k");
  }
  if (!a.seqused_k.empty() && bwd)
    throw usage_error(
        "--seqused-k is forward only: it cannot be combined with --dout/--dq/--dk/--dv");
  const std::pair<const char*, const std::string*> cache_flags[] = {
      {"--v-cache", &a.v_cache},
      {"--cache-seqlens", &a.cache_seqlens},
      {"--block-table", &a.block_table},
      {"--k-new", &a.k_new},
      {"--v-new", &a.v_new},
      {"--rotary-cos", &a.rotary_cos},
      {"--rotary-sin", &a.rotary_sin},
      {"--cache-batch-idx", &a.cache_batch_idx},
      {"--cache-leftpad", &a.cache_leftpad},
      {"--k-cache-out", &a.k_cache_out},
      {"--v-cache-out", &a.v_cache_out}};
  if (!kvc) {
    for (const auto& f : cache_flags)
      if (!f.second->empty()) throw usage_error(fmt::format("{} needs --k-cache", f.first));
    if (a.rotary_interleaved) throw usage_error("--rotary-interleaved needs --k-cache");
    if (a.num_splits >= 0 && !varlen)
      throw usage_error("--num-splits needs --k-cache or --cu-seqlens-q/--cu-seqlens-k");
  } else {
    if (a.v_cache.empty()) throw usage_error("--k-cache needs --v-cache");
    if (varlen)
      throw usage_error("--k-cache cannot be combined with --cu-seqlens-q/--cu-seqlens-k");
    if (!a.k.empty() || !a.v.empty())
      throw usage_error(
          "--k/--v cannot be combined with --k-cache (new keys go in --k-new/--v-new)");
    if (bwd)
      throw usage_error(
          "--k-cache is forward only: it cannot be combined with --dout/--dq/--dk/--dv");
    if (a.dropout_given)
      throw usage_error(
          "--dropout cannot be combined with --k-cache (KV-cache decoding has no dropout)");
    if (a.k_new.empty() != a.v_new.empty())
      throw usage_error("--k-new and --v-new must be given together");
    if (!a.k_new.empty() && a.cache_seqlens.empty())
      throw usage_error("--k-new needs --cache-seqlens (where the new keys go)");
    if (a.rotary_cos.empty() != a.rotary_sin.empty())
      throw usage_error("--rotary-cos and --rotary-sin must be given together");
    if (!a.rotary_cos.empty() && a.k_new.empty())
      throw usage_error("--rotary-cos/--rotary-sin need --k-new");
    if (a.rotary_interleaved && a.rotary_cos.empty())
      throw usage_error("--rotary-interleaved needs --rotary-cos and --rotary-sin");
    if (!a.block_table.empty() && (!a.cache_batch_idx.empty() || !a.cache_leftpad.empty()))
      throw usage_error(
          "--block-table cannot be combined with --cache-batch-idx or --cache-leftpad");
  }
  if ((a.seed_given || a.offset_given) && !a.dropout_given)
    throw usage_error("--seed and --dropout-offset need --dropout");
  if (a.dropout_given && !(a.dropout >= 0 && a.dropout < 1))
    throw usage_error(fmt::format("--dropout must be in [0, 1), got {}", a.dropout));
  if (bwd && (a.dout.empty() || a.dq.empty() || a.dk.empty() || a.dv.empty()))
    throw usage_error("the backward needs all of --dout, --dq, --dk and --dv");
  // Outputs: distinct files (by identity: "o.npy" and "./o.npy", a symlink or a hard link to
  // the same file collide), in existing directories -- checked before any work is done.
  const std::vector<std::pair<std::string, std::string>> outs = {
      {"--out", a.out},         {"--lse", a.lse},
      {"--dq", a.dq},           {"--dk", a.dk},
      {"--dv", a.dv},           {"--k-cache-out", a.k_cache_out},
      {"--v-cache-out", a.v_cache_out}, {"--s-dmask", a.s_dmask}};
  check_distinct_outputs(outs);
  for (const auto& o : outs)
    if (!o.second.empty()) check_output_dir(o.second);
}

NpyCommon npy_common(const RunArgs& a) {
  NpyCommon c;
  if (!a.dtype.empty() && !parse_dtype(a.dtype, &c.t))
    throw usage_error(
        fmt::format("--dtype: unknown dtype '{}' (expected fp32, fp16 or bf16)", a.dtype));
  if (!a.window.empty()) {
    c.wl = a.window[0];
    c.wr = a.window[1];
  }
  c.scale = static_cast<float>(a.scale);
  c.cap = static_cast<float>(a.softcap);
  c.p_dropout = static_cast<float>(a.dropout);
  return c;
}

void npy_backend(const RunArgs& a, NpyCommon* c) {
  c->be = resolve_backend(a.backend);
  c->dk = runtime::device_kind(c->be);
  c->ro.backend = c->be;
  c->ro.num_threads = a.threads;
  c->ro.dropout_seed = a.seed;
  c->ro.dropout_offset = a.dropout_offset;
}

int run_npy_dense(const RunArgs& a) {
  NpyCommon c = npy_common(a);
  const bool bwd = !a.dout.empty();
  const NpyArray q = read_4d(a.q, "q"), k = read_4d(a.k, "k"), v = read_4d(a.v, "v");
  if (k.shape != v.shape)
    throw usage_error(fmt::format("{}: v has shape {} but k has shape {}; they must match", a.v,
                                  v.shape_str(), k.shape_str()));
  if (k.shape[0] != q.shape[0] || k.shape[3] != q.shape[3])
    throw usage_error(
        fmt::format("{}: k has shape {}, incompatible with q {}: batch and headdim "
                    "must match",
                    a.k, k.shape_str(), q.shape_str()));
  const int64_t B = q.shape[0], SQ = q.shape[1], H = q.shape[2], D = q.shape[3];
  const int64_t SK = k.shape[1], HK = k.shape[2];
  const std::optional<NpyArray> slopes = read_alibi(a.alibi, B, H);
  std::optional<NpyArray> dout;
  if (bwd) {
    dout = read_npy(a.dout);
    if (dout->shape != q.shape)
      throw usage_error(fmt::format("{}: dout must have the shape of q {}, got {}", a.dout,
                                    q.shape_str(), dout->shape_str()));
  }
  npy_backend(a, &c);
  const DType t = c.t;
  const DeviceKind dk = c.dk;
  const Backend be = c.be;
  DeviceBuffer qd = upload_as(be, t, q.data), kd = upload_as(be, t, k.data),
               vd = upload_as(be, t, v.data);
  DeviceBuffer od(be, q.data.size() * dtype_size(t)), ld(be, static_cast<size_t>(B * H * SQ) * 4);
  DeviceBuffer sd;
  const std::optional<TensorView> alibi = alibi_view(slopes, &sd, c, B, H);
  const TensorView qv = view4(qd, t, B, SQ, H, D, dk), kv = view4(kd, t, B, SK, HK, D, dk),
                   vv = view4(vd, t, B, SK, HK, D, dk), ov = view4(od, t, B, SQ, H, D, dk);
  const TensorView lv = TensorView::contiguous(ld.get(), DType::f32, {B, H, SQ}, dk);
  const DmaskOutput dmask(a.s_dmask, be, t, dk, B, H, SQ, SK);
  runtime::Timer timer(be);
  timer.start();
  throw_if_error(mha_fwd(qv, kv, vv, ov, lv, alibi, c.p_dropout, c.scale, a.causal, c.wl, c.wr,
                         c.cap, dmask.wanted(), dmask.view(), c.ro));
  double ms = timer.stop_ms();

  Results res;  // nothing is written unless everything below succeeds
  res.add(a.out, download_as_float(od, t, q.data.size()), q.shape);
  res.add(a.lse, download_as_float(ld, DType::f32, static_cast<size_t>(B * H * SQ)), {B, H, SQ});
  dmask.add_to(&res);
  if (bwd) {
    DeviceBuffer dod = upload_as(be, t, dout->data);
    DeviceBuffer dqd(be, qd.size()), dkd(be, kd.size()), dvd(be, vd.size());
    timer.start();
    throw_if_error(mha_bwd(view4(dod, t, B, SQ, H, D, dk), qv, kv, vv, ov, lv,
                           view4(dqd, t, B, SQ, H, D, dk), view4(dkd, t, B, SK, HK, D, dk),
                           view4(dvd, t, B, SK, HK, D, dk), alibi, c.p_dropout, c.scale, a.causal,
                           c.wl, c.wr, c.cap, a.deterministic, std::nullopt, c.ro));
    ms += timer.stop_ms();
    res.add(a.dq, download_as_float(dqd, t, q.data.size()), q.shape);
    res.add(a.dk, download_as_float(dkd, t, k.data.size()), k.shape);
    res.add(a.dv, download_as_float(dvd, t, v.data.size()), v.shape);
  }
  const std::string written = res.commit();
  fmt::print("{} q{} k{} {} on {}: {:.3f} ms; wrote {}\n", bwd ? "fwd+bwd" : "fwd", q.shape_str(),
             k.shape_str(), dtype_name(t), backend_name(be), ms, written);
  return kExitOk;
}

// cu_seqlens checked on the host (the library does not check device memory): starts at 0,
// non-decreasing, ends within `total`. Returns the longest sequence.
int check_cu_seqlens(const NpyIntArray& cu, const std::string& path, int64_t total,
                     const char* what) {
  if (cu.data[0] != 0)
    throw usage_error(fmt::format("{}: cu_seqlens must start at 0, got {}", path, cu.data[0]));
  int longest = 0;
  for (size_t i = 1; i < cu.data.size(); ++i) {
    if (cu.data[i] < cu.data[i - 1])
      throw usage_error(fmt::format("{}: cu_seqlens must be non-decreasing ({} then {} at {})",
                                    path, cu.data[i - 1], cu.data[i], i));
    longest = std::max(longest, cu.data[i] - cu.data[i - 1]);
  }
  if (cu.data.back() > total)
    throw usage_error(fmt::format("{}: cu_seqlens ends at {}, past the {} {} tokens", path,
                                  cu.data.back(), total, what));
  return longest;
}

int run_npy_varlen(const RunArgs& a) {
  NpyCommon c = npy_common(a);
  const bool bwd = !a.dout.empty();
  const char* dims = "(total, nheads, headdim)";
  const NpyArray q = read_nd(a.q, "q", 3, dims), k = read_nd(a.k, "k", 3, dims),
                 v = read_nd(a.v, "v", 3, dims);
  if (k.shape != v.shape)
    throw usage_error(fmt::format("{}: v has shape {} but k has shape {}; they must match", a.v,
                                  v.shape_str(), k.shape_str()));
  if (k.shape[2] != q.shape[2])
    throw usage_error(fmt::format("{}: k has shape {}, incompatible with q {}: headdim must match",
                                  a.k, k.shape_str(), q.shape_str()));
  const int64_t TQ = q.shape[0], H = q.shape[1], D = q.shape[2], TK = k.shape[0], HK = k.shape[1];
  const NpyIntArray cuq = read_index(a.cu_seqlens_q, "--cu-seqlens-q", 1, -1, "(batch + 1,)");
  if (cuq.shape[0] < 2)
    throw usage_error(fmt::format("{}: --cu-seqlens-q needs at least 2 entries (batch + 1), got {}",
                                  a.cu_seqlens_q, cuq.shape_str()));
  const int64_t B = cuq.shape[0] - 1;
  const NpyIntArray cuk =
      read_index(a.cu_seqlens_k, "--cu-seqlens-k", 1, B + 1, fmt::format("({},)", B + 1).c_str());
  const int longest_q = check_cu_seqlens(cuq, a.cu_seqlens_q, TQ, "query");
  const int longest_k = check_cu_seqlens(cuk, a.cu_seqlens_k, TK, "key");
  const int max_q = a.max_seqlen_q >= 0 ? a.max_seqlen_q : longest_q;
  const int max_k = a.max_seqlen_k >= 0 ? a.max_seqlen_k : longest_k;
  if (max_q < longest_q || max_k < longest_k)
    throw usage_error(fmt::format(
        "--max-seqlen-q/--max-seqlen-k ({}, {}) are below the longest sequences ({}, {})", max_q,
        max_k, longest_q, longest_k));
  std::optional<NpyIntArray> used;
  if (!a.seqused_k.empty()) {
    used = read_index(a.seqused_k, "--seqused-k", 1, B, fmt::format("({},)", B).c_str());
    for (int64_t b = 0; b < B; ++b)
      if (used->data[b] < 0 || used->data[b] > cuk.data[b + 1] - cuk.data[b])
        throw usage_error(fmt::format("{}: seqused_k[{}] = {} is outside [0, {}]", a.seqused_k, b,
                                      used->data[b], cuk.data[b + 1] - cuk.data[b]));
  }
  const std::optional<NpyArray> slopes = read_alibi(a.alibi, B, H);
  std::optional<NpyArray> dout;
  if (bwd) {
    dout = read_npy(a.dout);
    if (dout->shape != q.shape)
      throw usage_error(fmt::format("{}: dout must have the shape of q {}, got {}", a.dout,
                                    q.shape_str(), dout->shape_str()));
  }
  npy_backend(a, &c);
  const DType t = c.t;
  const DeviceKind dk = c.dk;
  const Backend be = c.be;
  auto view3 = [&](const DeviceBuffer& d, int64_t n, int64_t h) {
    return TensorView::contiguous(d.get(), t, {n, h, D}, dk);
  };
  DeviceBuffer qd = upload_as(be, t, q.data), kd = upload_as(be, t, k.data),
               vd = upload_as(be, t, v.data);
  DeviceBuffer od(be, q.data.size() * dtype_size(t)), ld(be, static_cast<size_t>(H * TQ) * 4);
  DeviceBuffer cuqd = upload_i32(be, cuq.data), cukd = upload_i32(be, cuk.data), usedd;
  const TensorView cuqv = TensorView::contiguous(cuqd.get(), DType::i32, {B + 1}, dk),
                   cukv = TensorView::contiguous(cukd.get(), DType::i32, {B + 1}, dk);
  std::optional<TensorView> usedv;
  if (used) {
    usedd = upload_i32(be, used->data);
    usedv = TensorView::contiguous(usedd.get(), DType::i32, {B}, dk);
  }
  DeviceBuffer sd;
  const std::optional<TensorView> alibi = alibi_view(slopes, &sd, c, B, H);
  const TensorView qv = view3(qd, TQ, H), kv = view3(kd, TK, HK), vv = view3(vd, TK, HK),
                   ov = view3(od, TQ, H);
  const TensorView lv = TensorView::contiguous(ld.get(), DType::f32, {H, TQ}, dk);
  const int splits = a.num_splits >= 0 ? a.num_splits : 0;
  // zero_tensors: rows no sequence covers read out = 0, lse = -inf (and dq/dk/dv = 0), not garbage.
  const DmaskOutput dmask(a.s_dmask, be, t, dk, B, H, max_q, max_k);
  runtime::Timer timer(be);
  timer.start();
  throw_if_error(mha_varlen_fwd(qv, kv, vv, ov, lv, cuqv, cukv, usedv, std::nullopt, std::nullopt,
                                alibi, max_q, max_k, c.p_dropout, c.scale, true, a.causal, c.wl,
                                c.wr, c.cap, dmask.wanted(), splits, dmask.view(), c.ro));
  double ms = timer.stop_ms();
  Results res;
  res.add(a.out, download_as_float(od, t, q.data.size()), q.shape);
  res.add(a.lse, download_as_float(ld, DType::f32, static_cast<size_t>(H * TQ)), {H, TQ});
  dmask.add_to(&res);
  if (bwd) {
    DeviceBuffer dod = upload_as(be, t, dout->data);
    DeviceBuffer dqd(be, qd.size()), dkd(be, kd.size()), dvd(be, vd.size());
    timer.start();
    throw_if_error(mha_varlen_bwd(view3(dod, TQ, H), qv, kv, vv, ov, lv, view3(dqd, TQ, H),
                                  view3(dkd, TK, HK), view3(dvd, TK, HK), cuqv, cukv, alibi, max_q,
                                  max_k, c.p_dropout, c.scale, true, a.causal, c.wl, c.wr, c.cap,
                                  a.deterministic, std::nullopt, c.ro));
    ms += timer.stop_ms();
    res.add(a.dq, download_as_float(dqd, t, q.data.size()), q.shape);
    res.add(a.dk, download_as_float(dkd, t, k.data.size()), k.shape);
    res.add(a.dv, download_as_float(dvd, t, v.data.size()), v.shape);
  }
  const std::string written = res.commit();
  fmt::print("varlen {} batch {} q{} k{} max_seqlen {}/{} {} on {}: {:.3f} ms; wrote {}\n",
             bwd ? "fwd+bwd" : "fwd", B, q.shape_str(), k.shape_str(), max_q, max_k, dtype_name(t),
             backend_name(be), ms, written);
  return kExitOk;
}

int run_npy_kvcache(const RunArgs& a) {
  NpyCommon c = npy_common(a);
  const NpyArray q = read_4d(a.q, "q");
  const NpyArray kc = read_4d(a.k_cache, "k_cache"), vc = read_4d(a.v_cache, "v_cache");
  if (kc.shape != vc.shape)
    throw usage_error(
        fmt::format("{}: v_cache has shape {} but k_cache has shape {}; they must "
                    "match",
                    a.v_cache, vc.shape_str(), kc.shape_str()));
  if (kc.shape[3] != q.shape[3])
    throw usage_error(
        fmt::format("{}: k_cache has shape {}, incompatible with q {}: headdim "
                    "must match",
                    a.k_cache, kc.shape_str(), q.shape_str()));
  const int64_t B = q.shape[0], SQ = q.shape[1], H = q.shape[2], D = q.shape[3];
  const int64_t C0 = kc.shape[0], C1 = kc.shape[1], HK = kc.shape[2];
  const std::string bdims = fmt::format("({},)", B);
  std::optional<NpyIntArray> table, seqlens, batch_idx, leftpad;
  int64_t capacity = C1;
  if (!a.block_table.empty()) {
    table = read_index(a.block_table, "--block-table", 2, B,
                       fmt::format("({}, max_blocks_per_seq)", B).c_str());
    // The page count below divides by the page size: refuse 0 before (the library would too).
    if (C1 <= 0)
      throw usage_error(fmt::format(
          "{}: a paged k_cache (num_blocks, page_block_size, nheads_k, headdim) needs "
          "page_block_size >= 1, got shape {}",
          a.k_cache, kc.shape_str()));
    capacity = table->shape[1] * C1;
  }
  if (!a.cache_seqlens.empty())
    seqlens = read_index(a.cache_seqlens, "--cache-seqlens", 1, B, bdims.c_str());
  if (!a.cache_batch_idx.empty())
    batch_idx = read_index(a.cache_batch_idx, "--cache-batch-idx", 1, B, bdims.c_str());
  if (!a.cache_leftpad.empty())
    leftpad = read_index(a.cache_leftpad, "--cache-leftpad", 1, B, bdims.c_str());
  std::optional<NpyArray> k_new, v_new, cos, sin;
  int64_t s_new = 0;
  if (!a.k_new.empty()) {
    k_new = read_4d(a.k_new, "k_new");
    v_new = read_4d(a.v_new, "v_new");
    if (k_new->shape != v_new->shape)
      throw usage_error(
          fmt::format("{}: v_new has shape {} but k_new has shape {}; they must "
                      "match",
                      a.v_new, v_new->shape_str(), k_new->shape_str()));
    if (k_new->shape[0] != B || k_new->shape[2] != HK || k_new->shape[3] != D)
      throw usage_error(fmt::format("{}: k_new must have shape ({}, s_new, {}, {}), got {}",
                                    a.k_new, B, HK, D, k_new->shape_str()));
    s_new = k_new->shape[1];
  }
  if (!a.rotary_cos.empty()) {
    cos = read_nd(a.rotary_cos, "rotary_cos", 2, "(seqlen_ro, rotary_dim / 2)");
    sin = read_nd(a.rotary_sin, "rotary_sin", 2, "(seqlen_ro, rotary_dim / 2)");
    if (cos->shape != sin->shape)
      throw usage_error(
          fmt::format("{}: rotary_sin has shape {} but rotary_cos has shape {}; "
                      "they must match",
                      a.rotary_sin, sin->shape_str(), cos->shape_str()));
  }
  // Host-side range checks of everything the kernel dereferences (device memory is not checked
  // by the library).
  for (int64_t b = 0; b < B; ++b) {
    const int64_t end = (seqlens ? seqlens->data[b] : capacity) + (seqlens ? s_new : 0);
    if (seqlens && (seqlens->data[b] < 0 || end > capacity))
      throw usage_error(fmt::format(
          "{}: cache_seqlens[{}] = {} plus {} new key(s) does not fit the cache capacity {}",
          a.cache_seqlens, b, seqlens->data[b], s_new, capacity));
    if (table) {
      const int64_t pages = (end + C1 - 1) / C1;
      for (int64_t j = 0; j < pages; ++j) {
        const int32_t e = table->data[b * table->shape[1] + j];
        if (e < 0 || e >= C0)
          throw usage_error(fmt::format("{}: block_table[{}, {}] = {} is outside [0, {})",
                                        a.block_table, b, j, e, C0));
      }
    }
    if (batch_idx && (batch_idx->data[b] < 0 || batch_idx->data[b] >= C0))
      throw usage_error(fmt::format("{}: cache_batch_idx[{}] = {} is outside [0, {})",
                                    a.cache_batch_idx, b, batch_idx->data[b], C0));
    if (leftpad && (leftpad->data[b] < 0 || leftpad->data[b] > end))
      throw usage_error(fmt::format("{}: cache_leftpad[{}] = {} is outside [0, {}]",
                                    a.cache_leftpad, b, leftpad->data[b], end));
  }
  const std::optional<NpyArray> slopes = read_alibi(a.alibi, B, H);
  npy_backend(a, &c);
  const DType t = c.t;
  const DeviceKind dk = c.dk;
  const Backend be = c.be;
  DeviceBuffer qd = upload_as(be, t, q.data), kcd = upload_as(be, t, kc.data),
               vcd = upload_as(be, t, vc.data);
  DeviceBuffer od(be, q.data.size() * dtype_size(t)), ld(be, static_cast<size_t>(B * H * SQ) * 4);
  DeviceBuffer tabd, seqd, bid, lpd, knd, vnd, cosd, sind, sd;
  auto idx = [&](const std::optional<NpyIntArray>& arr,
                 DeviceBuffer* buf) -> std::optional<TensorView> {
    if (!arr) return std::nullopt;
    *buf = upload_i32(be, arr->data);
    if (arr->shape.size() == 2)
      return TensorView::contiguous(buf->get(), DType::i32, {arr->shape[0], arr->shape[1]}, dk);
    return TensorView::contiguous(buf->get(), DType::i32, {arr->shape[0]}, dk);
  };
  const auto tabv = idx(table, &tabd), seqv = idx(seqlens, &seqd), biv = idx(batch_idx, &bid),
             lpv = idx(leftpad, &lpd);
  std::optional<TensorView> knv, vnv, cosv, sinv;
  if (k_new) {
    knd = upload_as(be, t, k_new->data);
    vnd = upload_as(be, t, v_new->data);
    knv = view4(knd, t, B, s_new, HK, D, dk);
    vnv = view4(vnd, t, B, s_new, HK, D, dk);
  }
  if (cos) {
    cosd = upload_as(be, t, cos->data);
    sind = upload_as(be, t, sin->data);
    cosv = TensorView::contiguous(cosd.get(), t, {cos->shape[0], cos->shape[1]}, dk);
    sinv = TensorView::contiguous(sind.get(), t, {sin->shape[0], sin->shape[1]}, dk);
  }
  const std::optional<TensorView> alibi = alibi_view(slopes, &sd, c, B, H);
  const TensorView qv = view4(qd, t, B, SQ, H, D, dk), kcv = view4(kcd, t, C0, C1, HK, D, dk),
                   vcv = view4(vcd, t, C0, C1, HK, D, dk), ov = view4(od, t, B, SQ, H, D, dk);
  const TensorView lv = TensorView::contiguous(ld.get(), DType::f32, {B, H, SQ}, dk);
  const int splits = a.num_splits >= 0 ? a.num_splits : 0;
  runtime::Timer timer(be);
  timer.start();
  throw_if_error(mha_fwd_kvcache(qv, kcv, vcv, knv, vnv, seqv, cosv, sinv, biv, lpv, tabv, alibi,
                                 ov, lv, c.scale, a.causal, c.wl, c.wr, c.cap, a.rotary_interleaved,
                                 splits, c.ro));
  const double ms = timer.stop_ms();
  Results res;
  res.add(a.out, download_as_float(od, t, q.data.size()), q.shape);
  res.add(a.lse, download_as_float(ld, DType::f32, static_cast<size_t>(B * H * SQ)), {B, H, SQ});
  if (!a.k_cache_out.empty())
    res.add(a.k_cache_out, download_as_float(kcd, t, kc.data.size()), kc.shape);
  if (!a.v_cache_out.empty())
    res.add(a.v_cache_out, download_as_float(vcd, t, vc.data.size()), vc.shape);
  const std::string written = res.commit();
  fmt::print("kvcache fwd q{} {} cache{} capacity {} new {} {} on {}: {:.3f} ms; wrote {}\n",
             q.shape_str(), table ? "paged" : "contiguous", kc.shape_str(), capacity, s_new,
             dtype_name(t), backend_name(be), ms, written);
  return kExitOk;
}

int run_npy(const RunArgs& a) {
  check_npy_flags(a);
  if (!a.k_cache.empty()) return run_npy_kvcache(a);
  if (!a.cu_seqlens_q.empty()) return run_npy_varlen(a);
  return run_npy_dense(a);
}

}  // namespace

void register_run(CLI::App& app, Action& action) {
  auto a = std::make_shared<RunArgs>();
  CLI::App* sub = app.add_subcommand(
      "run",
      "Time model workloads from JSON configs (--config), or run attention on NumPy inputs "
      "(--q/--k/--v/--out)");
  auto* g1 = sub->add_option_group("Model workloads (--config)");
  g1->add_option("--config", a->configs, "Model config(s): configs/models/*.json (docs/CONFIGS.md)")
      ->check(CLI::ExistingFile);
  g1->add_option("--max-seqlen", a->max_seqlen,
                 "Skip workloads with seqlen above N (quick subsets)")
      ->check(non_negative());
  g1->add_option("--batch", a->batch, "Replace the config's batch sizes (one or more)")
      ->check(positive());
  g1->add_option("--mode", a->modes, "Run only these modes")->check(CLI::IsMember({"fwd", "bwd"}));
  g1->add_option("--iters", a->iters,
                 "Timed iterations per workload (default: 1 on cpu, 10 on GPUs)")
      ->check(positive());
  g1->add_option("--warmup", a->warmup, "Warm-up iterations (default: 0 on cpu, 3 on GPUs)")
      ->check(non_negative());
  g1->add_flag("--list", a->list, "Print the workloads that would run, and exit");

  auto* g2 = sub->add_option_group(
      "NumPy inputs (float32, C order, shape (batch, seqlen, nheads, headdim))");
  g2->add_option("--q", a->q, "Query .npy")->type_name("Q.npy");
  g2->add_option("--k", a->k, "Key .npy (nheads may be fewer than q's: GQA/MQA)")
      ->type_name("K.npy");
  g2->add_option("--v", a->v, "Value .npy (shape of k)")->type_name("V.npy");
  g2->add_option("--out", a->out, "Output .npy (float32, shape of q)")->type_name("OUT.npy");
  g2->add_option("--lse", a->lse,
                 "Optional softmax log-sum-exp output .npy (float32, (batch, nheads, seqlen_q))")
      ->type_name("LSE.npy");
  g2->add_flag("--causal", a->causal, "Causal mask, aligned to the bottom-right corner");
  g2->add_option("--window", a->window, "Sliding window: LEFT RIGHT (-1 = unbounded side)")
      ->expected(2)
      ->type_name("INT");
  g2->add_option("--softcap", a->softcap, "Softcap X: s <- X*tanh(s/X) (0 = off)")
      ->check(non_negative());
  g2->add_option("--scale", a->scale, "Softmax scale (default 1/sqrt(headdim))")
      ->check(non_negative());
  g2->add_option("--alibi", a->alibi, "ALiBi slopes .npy: float32, (nheads) or (batch, nheads)")
      ->type_name("SLOPES.npy");
  g2->add_option("--dout", a->dout, "Backward: gradient of out .npy (shape of q)")
      ->type_name("DOUT.npy");
  g2->add_option("--dq", a->dq, "Backward: dq output .npy")->type_name("DQ.npy");
  g2->add_option("--dk", a->dk, "Backward: dk output .npy")->type_name("DK.npy");
  g2->add_option("--dv", a->dv, "Backward: dv output .npy")->type_name("DV.npy");
  g2->add_flag("--deterministic", a->deterministic, "Backward: bit-reproducible dq/dk/dv");

  auto* g3 = sub->add_option_group(
      "Variable-length batches (mha_varlen_fwd/bwd): q/k/v/dout then have shape (total, nheads, "
      "headdim), lse (nheads, total_q)");
  g3->add_option("--cu-seqlens-q", a->cu_seqlens_q,
                 "int32 (batch + 1): sequence b owns query tokens [cu[b], cu[b+1])")
      ->type_name("CU_Q.npy");
  g3->add_option("--cu-seqlens-k", a->cu_seqlens_k, "int32 (batch + 1): the same for the keys")
      ->type_name("CU_K.npy");
  g3->add_option("--max-seqlen-q", a->max_seqlen_q,
                 "Longest query sequence (default: computed from --cu-seqlens-q)")
      ->check(non_negative());
  g3->add_option("--max-seqlen-k", a->max_seqlen_k,
                 "Longest key sequence (default: computed from --cu-seqlens-k)")
      ->check(non_negative());
  g3->add_option("--seqused-k", a->seqused_k,
                 "int32 (batch): sequence b uses only its first N keys (forward only)")
      ->type_name("USED.npy");

  auto* g4 = sub->add_option_group("KV cache (mha_fwd_kvcache, forward only; replaces --k/--v)");
  g4->add_option("--k-cache", a->k_cache,
                 "Key cache .npy: (batch_cache, seqlen_cache, nheads_k, headdim), or paged "
                 "(num_blocks, page_block_size, nheads_k, headdim) with --block-table")
      ->type_name("KC.npy");
  g4->add_option("--v-cache", a->v_cache, "Value cache .npy (shape of --k-cache)")
      ->type_name("VC.npy");
  g4->add_option("--cache-seqlens", a->cache_seqlens,
                 "int32 (batch): keys already in the cache per sequence (default: the capacity)")
      ->type_name("SEQLENS.npy");
  g4->add_option("--block-table", a->block_table,
                 "int32 (batch, max_blocks_per_seq): paged cache, any page size")
      ->type_name("TABLE.npy");
  g4->add_option("--k-new", a->k_new,
                 "New keys (batch, s_new, nheads_k, headdim), appended at cache_seqlens[b]")
      ->type_name("KN.npy");
  g4->add_option("--v-new", a->v_new, "New values (shape of --k-new)")->type_name("VN.npy");
  g4->add_option("--rotary-cos", a->rotary_cos,
                 "Rotary cos (seqlen_ro, rotary_dim / 2), float32; rotates q and k_new")
      ->type_name("COS.npy");
  g4->add_option("--rotary-sin", a->rotary_sin, "Rotary sin (shape of --rotary-cos)")
      ->type_name("SIN.npy");
  g4->add_flag("--rotary-interleaved", a->rotary_interleaved,
               "Rotate pairs (2j, 2j+1) instead of (j, j + rotary_dim/2)");
  g4->add_option("--num-splits", a->num_splits,
                 "Split the keys into N pieces combined by LSE (0 = choose, 1 = none, <= 128; "
                 "also with --cu-seqlens-q/-k)")
      ->check(CLI::Range(0, 128));
  g4->add_option("--cache-batch-idx", a->cache_batch_idx,
                 "int32 (batch): cache row of each batch entry (not with --block-table)")
      ->type_name("IDX.npy");
  g4->add_option("--cache-leftpad", a->cache_leftpad,
                 "int32 (batch): first valid cache position per sequence (not with --block-table)")
      ->type_name("LEFTPAD.npy");
  g4->add_option("--k-cache-out", a->k_cache_out,
                 "Write the key cache after the append here (float32, shape of --k-cache)")
      ->type_name("KC_OUT.npy");
  g4->add_option("--v-cache-out", a->v_cache_out, "Write the value cache after the append here")
      ->type_name("VC_OUT.npy");

  auto* g5 = sub->add_option_group("Dropout (forward and backward; not with --k-cache)");
  auto* o_drop = g5->add_option("--dropout", a->dropout,
                                "Dropout probability P in [0, 1) (lse is computed before dropout)");
  auto* o_seed =
      g5->add_option("--seed", a->seed, "Dropout Philox key (RunOptions::dropout_seed; default 0)")
          ->check(unsigned_integer());
  auto* o_off = g5->add_option("--dropout-offset", a->dropout_offset,
                               "Dropout Philox counter offset (RunOptions::dropout_offset; "
                               "default 0)")
                   ->check(unsigned_integer());
  g5->add_option("--s-dmask", a->s_dmask,
                 "return_softmax: write S_dmask here, (batch, nheads, round128(seqlen_q), "
                 "round128(seqlen_k)): P = exp(z - lse), negative where dropped, 0 where masked")
      ->type_name("S_DMASK.npy");

  sub->add_option("--dtype", a->dtype,
                  "Storage type the kernel computes in: fp32|fp16|bf16 (inputs are rounded to it; "
                  "with --config: run only this dtype)")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  sub->add_option("--backend", a->backend,
                  "cpu|cuda|hip|auto (auto: first GPU backend with a device, else cpu)")
      ->check(CLI::IsMember({"cpu", "cuda", "hip", "auto"}));
  sub->add_option("--threads", a->threads, "CPU backend threads (0 = all cores)")
      ->check(non_negative());
  sub->footer(
      "Examples:\n"
      "  # quick CPU subset of the llama 7B workloads, forward only\n"
      "  flashplus run --config configs/models/llama7b.json --backend cpu --max-seqlen 1024 \\\n"
      "      --batch 1 --mode fwd\n"
      "  # every workload of two models on the GPU\n"
      "  flashplus run --config configs/models/llama3-8b.json --config "
      "configs/models/mistral-7b.json\n"
      "  # NumPy in, NumPy out (forward, causal, in bf16)\n"
      "  flashplus run --q q.npy --k k.npy --v v.npy --out o.npy --lse lse.npy --causal --dtype "
      "bf16\n"
      "  # forward + backward with a sliding window\n"
      "  flashplus run --q q.npy --k k.npy --v v.npy --out o.npy --window 128 0 \\\n"
      "      --dout do.npy --dq dq.npy --dk dk.npy --dv dv.npy\n"
      "  # variable-length batch (q/k/v packed (total, nheads, headdim); cu_seqlens int32),\n"
      "  # forward + backward with dropout\n"
      "  flashplus run --q q.npy --k k.npy --v v.npy --cu-seqlens-q cuq.npy --cu-seqlens-k cuk.npy "
      "\\\n"
      "      --out o.npy --lse lse.npy --causal --dropout 0.1 --seed 42 \\\n"
      "      --dout do.npy --dq dq.npy --dk dk.npy --dv dv.npy\n"
      "  # decoding step on a paged KV cache: append k_new/v_new (rotary), write the caches back\n"
      "  flashplus run --q q.npy --k-cache kc.npy --v-cache vc.npy --block-table table.npy \\\n"
      "      --cache-seqlens seqlens.npy --k-new kn.npy --v-new vn.npy --rotary-cos cos.npy \\\n"
      "      --rotary-sin sin.npy --causal --num-splits 4 --out o.npy \\\n"
      "      --k-cache-out kc.npy --v-cache-out vc.npy\n"
      "\n"
      "Model workloads print one row per workload: shape, mean ms, TFLOP/s. FLOPs count unmasked\n"
      "work: forward 4*b*h*d*sq*sk, halved for causal, exact visible pairs for sliding windows;\n"
      "backward 2.5x forward (cli/flops.h). On the CPU use --max-seqlen/--batch/--mode for "
      "subsets.\n"
      "Decode workloads (schema 2, docs/CONFIGS.md) run mha_fwd_kvcache and add the GB/s of the\n"
      "KV-cache read; varlen workloads run mha_varlen_fwd/bwd, FLOPs summed over the sequences.\n"
      "\n"
      "NumPy mode: inputs must be float32 .npy in C order (index arrays: --cu-seqlens-*,\n"
      "--seqused-k, --cache-seqlens, --block-table, --cache-batch-idx, --cache-leftpad: int32);\n"
      "outputs are float32 .npy. --cu-seqlens-q/-k switch to mha_varlen_fwd/bwd (rows no sequence\n"
      "covers come out as out = 0, lse = -inf, gradients 0); --k-cache switches to\n"
      "mha_fwd_kvcache. --dropout P --seed S --dropout-offset O map to p_dropout and\n"
      "RunOptions::dropout_seed/offset, forward and backward alike. Outputs are\n"
      "written to temporary files and renamed into place only after every step succeeded, so a\n"
      "failed run leaves no partial output. A missing file, corrupt header, wrong dtype or shape\n"
      "prints one line `flashplus: error: ...` and exits 2; backend failures exit 3.\n"
      "\n"
      "Exit codes: 0 ok, 2 usage or input error, 3 runtime or backend error.\n");
  sub->callback([a, &action, o_drop, o_seed, o_off]() {
    a->dropout_given = o_drop->count() > 0;
    a->seed_given = o_seed->count() > 0;
    a->offset_given = o_off->count() > 0;
    if (!a->s_dmask.empty() && !a->dropout_given)
      throw usage_error("--s-dmask needs --dropout (return_softmax only with p_dropout > 0)");
    const bool npy = !a->q.empty() || !a->k.empty() || !a->v.empty() || !a->out.empty() ||
                     !a->k_cache.empty() || !a->cu_seqlens_q.empty() || !a->cu_seqlens_k.empty() ||
                     a->dropout_given;
    if (!a->configs.empty() && npy)
      throw usage_error("--config and the NumPy flags (--q/--k/--v/--out) cannot be combined");
    if (!a->window.empty() && a->window.size() != 2) throw usage_error("--window takes LEFT RIGHT");
    if (!a->configs.empty()) {
      action = [a]() { return run_configs(*a); };
    } else {
      action = [a]() { return run_npy(*a); };
    }
  });
}

}  // namespace flashplus::cli
