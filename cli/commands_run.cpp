// `flashplus run`: model workloads from configs (timing table), or one attention call on .npy
// inputs (the NumPy contract: flag names are part of the interface, see the --help text).
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <memory>
#include <optional>
#include <set>

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
    for (const Workload& w : work) fmt::print("{}\n", shape_cols(w));
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

  auto flops_of = [](const Workload& w) {
    FlopShape fs;
    fs.batch = w.batch;
    fs.seqlen_q = fs.seqlen_k = w.seqlen;
    fs.nheads = w.model->nheads;
    fs.head_dim = w.model->head_dim;
    fs.causal = w.model->causal;
    fs.window_left = w.model->window_left;
    fs.window_right = w.model->window_right;
    return attention_flops(fs, w.mode == "fwd" ? FlopMode::fwd : FlopMode::bwd);
  };
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
    if (work.size() > 1) {
      std::string eta;
      if (done_seconds > 0)
        eta = fmt::format(" (about {:.1f} s)",
                          flops_of(w) * (warmup + iters) / (done_flops / done_seconds));
      fmt::print(stderr, "[{}/{}] {} {} {} b={} s={}{} ...\n", wi + 1, work.size(), m.name, w.mode,
                 dtype_name(w.dtype), B, S, eta);
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
    auto fwd = [&] {
      throw_if_error(mha_fwd(qv, kv, vv, ov, lv, alibi, 0.f, scale, m.causal, m.window_left,
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
                               view4(dvb, w.dtype, B, S, HK, D, dk), alibi, 0.f, scale, m.causal,
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

NpyArray read_4d(const std::string& path, const char* what) {
  NpyArray a = read_npy(path);
  if (a.shape.size() != 4)
    throw usage_error(
        fmt::format("{}: {} must have 4 dimensions (batch, seqlen, nheads, headdim), "
                    "got shape {}",
                    path, what, a.shape_str()));
  return a;
}

int run_npy(const RunArgs& a) {
  if (a.q.empty() || a.k.empty() || a.v.empty() || a.out.empty())
    throw usage_error(
        "run needs either --config FILE, or --q Q.npy --k K.npy --v V.npy --out OUT.npy");
  const bool bwd = !a.dout.empty() || !a.dq.empty() || !a.dk.empty() || !a.dv.empty();
  if (bwd && (a.dout.empty() || a.dq.empty() || a.dk.empty() || a.dv.empty()))
    throw usage_error("the backward needs all of --dout, --dq, --dk and --dv");
  // Outputs: distinct, in existing directories -- checked before any work is done.
  std::vector<std::string> outs = {a.out};
  if (!a.lse.empty()) outs.push_back(a.lse);
  if (bwd) outs.insert(outs.end(), {a.dq, a.dk, a.dv});
  std::set<std::string> seen;
  for (const auto& o : outs) {
    if (!seen.insert(o).second)
      throw usage_error(fmt::format("{}: given as two different outputs", o));
    check_output_dir(o);
  }
  DType t = DType::f32;
  if (!a.dtype.empty() && !parse_dtype(a.dtype, &t))
    throw usage_error(
        fmt::format("--dtype: unknown dtype '{}' (expected fp32, fp16 or bf16)", a.dtype));

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
  std::optional<NpyArray> slopes;
  if (!a.alibi.empty()) {
    slopes = read_npy(a.alibi);
    const bool ok = (slopes->shape.size() == 1 && slopes->shape[0] == H) ||
                    (slopes->shape.size() == 2 && slopes->shape[0] == B && slopes->shape[1] == H);
    if (!ok)
      throw usage_error(fmt::format("{}: ALiBi slopes must have shape ({},) or ({}, {}), got {}",
                                    a.alibi, H, B, H, slopes->shape_str()));
  }
  std::optional<NpyArray> dout;
  if (bwd) {
    dout = read_npy(a.dout);
    if (dout->shape != q.shape)
      throw usage_error(fmt::format("{}: dout must have the shape of q {}, got {}", a.dout,
                                    q.shape_str(), dout->shape_str()));
  }
  int wl = -1, wr = -1;
  if (!a.window.empty()) {
    wl = a.window[0];
    wr = a.window[1];
  }

  const Backend be = resolve_backend(a.backend);
  const DeviceKind dk = runtime::device_kind(be);
  RunOptions ro;
  ro.backend = be;
  ro.num_threads = a.threads;
  DeviceBuffer qd = upload_as(be, t, q.data), kd = upload_as(be, t, k.data),
               vd = upload_as(be, t, v.data);
  DeviceBuffer od(be, q.data.size() * dtype_size(t)), ld(be, static_cast<size_t>(B * H * SQ) * 4);
  std::optional<TensorView> alibi;
  DeviceBuffer sd;
  if (slopes) {
    sd = upload_as(be, DType::f32, slopes->data);
    alibi = slopes->shape.size() == 1 ? TensorView::contiguous(sd.get(), DType::f32, {H}, dk)
                                      : TensorView::contiguous(sd.get(), DType::f32, {B, H}, dk);
  }
  const TensorView qv = view4(qd, t, B, SQ, H, D, dk), kv = view4(kd, t, B, SK, HK, D, dk),
                   vv = view4(vd, t, B, SK, HK, D, dk), ov = view4(od, t, B, SQ, H, D, dk);
  const TensorView lv = TensorView::contiguous(ld.get(), DType::f32, {B, H, SQ}, dk);
  const auto scale = static_cast<float>(a.scale), cap = static_cast<float>(a.softcap);
  runtime::Timer timer(be);
  timer.start();
  throw_if_error(mha_fwd(qv, kv, vv, ov, lv, alibi, 0.f, scale, a.causal, wl, wr, cap, false, ro));
  double ms = timer.stop_ms();

  OutputSet outputs;  // nothing is written unless everything below succeeds
  std::vector<std::pair<std::string, std::pair<std::vector<float>, std::vector<int64_t>>>> results;
  results.push_back({a.out, {download_as_float(od, t, q.data.size()), q.shape}});
  if (!a.lse.empty())
    results.push_back(
        {a.lse, {download_as_float(ld, DType::f32, static_cast<size_t>(B * H * SQ)), {B, H, SQ}}});
  if (bwd) {
    DeviceBuffer dod = upload_as(be, t, dout->data);
    DeviceBuffer dqd(be, qd.size()), dkd(be, kd.size()), dvd(be, vd.size());
    timer.start();
    throw_if_error(mha_bwd(view4(dod, t, B, SQ, H, D, dk), qv, kv, vv, ov, lv,
                           view4(dqd, t, B, SQ, H, D, dk), view4(dkd, t, B, SK, HK, D, dk),
                           view4(dvd, t, B, SK, HK, D, dk), alibi, 0.f, scale, a.causal, wl, wr,
                           cap, a.deterministic, std::nullopt, ro));
    ms += timer.stop_ms();
    results.push_back({a.dq, {download_as_float(dqd, t, q.data.size()), q.shape}});
    results.push_back({a.dk, {download_as_float(dkd, t, k.data.size()), k.shape}});
    results.push_back({a.dv, {download_as_float(dvd, t, v.data.size()), v.shape}});
  }
  for (const auto& r : results) outputs.stage(r.first, r.second.first.data(), r.second.second);
  outputs.commit();
  std::string written;
  for (const auto& r : results) written += (written.empty() ? "" : ", ") + r.first;
  fmt::print("{} q{} k{} {} on {}: {:.3f} ms; wrote {}\n", bwd ? "fwd+bwd" : "fwd", q.shape_str(),
             k.shape_str(), dtype_name(t), backend_name(be), ms, written);
  return kExitOk;
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
      "\n"
      "Model workloads print one row per workload: shape, mean ms, TFLOP/s. FLOPs count unmasked\n"
      "work: forward 4*b*h*d*sq*sk, halved for causal, exact visible pairs for sliding windows;\n"
      "backward 2.5x forward (cli/flops.h). On the CPU use --max-seqlen/--batch/--mode for "
      "subsets.\n"
      "\n"
      "NumPy mode: inputs must be float32 .npy in C order; outputs are float32 .npy. Outputs are\n"
      "written to temporary files and renamed into place only after every step succeeded, so a\n"
      "failed run leaves no partial output. A missing file, corrupt header, wrong dtype or shape\n"
      "prints one line `flashplus: error: ...` and exits 2; backend failures exit 3.\n"
      "\n"
      "Exit codes: 0 ok, 2 usage or input error, 3 runtime or backend error.\n");
  sub->callback([a, &action]() {
    const bool npy = !a->q.empty() || !a->k.empty() || !a->v.empty() || !a->out.empty();
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
