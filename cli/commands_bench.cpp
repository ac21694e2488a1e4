// `flashplus bench`: time model workloads like nvbench (docs/BENCH.md), and measure the device's
// peaks once (`--peaks`, cached per device fingerprint).
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>

#include "bench.h"
#include "commands.h"
#include "common.h"
#include "config.h"
#include "flashplus/runtime.h"
#include "flashplus/tuning.h"
#include "file_io.h"

namespace flashplus::cli {
namespace {

// "decode page16 splits0" / "varlen 10 seqs 16960 tok" / "" (prefill).
std::string workload_label_of(const BenchCase& c) {
  Workload w;
  w.kind = c.kind;
  w.page_size = c.page_size;
  w.num_splits = c.num_splits;
  w.varlen = c.varlen;
  return workload_label(w);
}

// The workload kind and its sizes, for the JSON report. decode: GB/s counts the KV-cache read.
nlohmann::json workload_json(const BenchCase& c) {
  nlohmann::json j = {{"kind", c.kind}};
  if (c.kind == "decode") {
    j["cache_len"] = c.seqlen;
    j["page_size"] = c.page_size;
    j["num_splits"] = c.num_splits;
    j["bytes_counted"] = "kv_cache_read";
  }
  if (c.kind == "varlen") j["seqlens"] = c.varlen;
  return j;
}

using nlohmann::json;

struct BenchArgs {
  std::vector<std::string> configs;
  int max_seqlen = 0;
  std::vector<std::string> workloads;  // --workload: prefill|decode|varlen
  std::vector<int> batch;
  std::vector<std::string> modes;
  std::string dtype;
  std::string backend = "auto";
  std::string json_out, csv_out;
  bool peaks = false;
  BenchSettings s;
};

json config_json(const KernelConfig& c) {
  return {{"name", c.to_string()},     {"block_m", c.block_m}, {"block_n", c.block_n},
          {"num_warps", c.num_warps}, {"stages", c.stages},   {"num_splits", c.num_splits}};
}

std::string configs_label(const std::map<std::string, KernelConfig>& m) {
  if (m.empty()) return "unknown";
  std::string s;
  for (const auto& [pass, c] : m)
    s += fmt::format("{}{}:m{}n{}", s.empty() ? "" : " ", pass, c.block_m, c.block_n);
  return s;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string o = "\"";
  for (char ch : s) o += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return o + "\"";
}

}  // namespace

// The CSV header of `bench --csv` (tests check it).
const char* bench_csv_header() {
  return "model,mode,dtype,batch,seqlen_q,seqlen_k,nheads,nheads_k,head_dim,mask,kernel_config,"
         "samples,median_ms,min_ms,max_ms,noise,converged,tflops,gbs,frac_peak_matmul,"
         "frac_peak_copy,device,fingerprint,compiler,git_revision,date";
}

namespace {

int run_bench(const BenchArgs& a) {
  const Backend be = resolve_backend(a.backend);
  check_timing(a.s, be);
  const DeviceDesc dev = backend_device(be);
  const std::string fp = device_fingerprint(dev);
  check_distinct_outputs({{"--json", a.json_out}, {"--csv", a.csv_out}});
  if (!a.json_out.empty()) check_output_dir(a.json_out);
  if (!a.csv_out.empty()) check_output_dir(a.csv_out);

  Peaks peaks;
  if (a.peaks) {
    fmt::print(stderr, "measuring the peaks of {} ...\n", dev.name);
    peaks = measure_peaks(be);
    if (peaks.measured)
      fmt::print("peaks of {} ({}): matmul {:.4g} TFLOP/s, copy {:.4g} GB/s; cached in {}\n",
                 dev.name, fp, peaks.matmul_tflops, peaks.copy_gbs, peaks.source);
    else
      fmt::print("peaks of {} ({}): {}\n", dev.name, fp, peaks.source);
    std::fflush(stdout);
    if (a.configs.empty()) return kExitOk;
  } else {
    peaks = cached_peaks(be);
  }
  if (a.configs.empty()) throw usage_error("bench needs --config FILE (or --peaks)");

  WorkloadFilter f;
  f.max_seqlen = a.max_seqlen;
  f.batch_override = a.batch;
  f.kinds = a.workloads;
  std::optional<DType> dtype_override;
  if (!a.dtype.empty()) {
    DType t;
    if (!parse_dtype(a.dtype, &t)) throw usage_error(fmt::format("--dtype: unknown '{}'", a.dtype));
    dtype_override = t;  // as `run --dtype`: run this dtype, whatever the config lists
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
  const std::vector<BenchCase> cases = bench_cases(work, a.modes);
  if (cases.empty()) throw usage_error("no workloads left after --max-seqlen/--batch/--dtype filters");

  fmt::print("bench on {} [{}] ({}); peaks: {}\n", dev.name, backend_name(be), fp,
             peaks.measured ? fmt::format("matmul {:.4g} TFLOP/s, copy {:.4g} GB/s",
                                          peaks.matmul_tflops, peaks.copy_gbs)
                            : peaks.source);
  const std::string match = active_table_match(fp);
  fmt::print("tuned table: {}{}\n", active_table_source(fp),
             match.empty() ? "" : " [" + match + "]");
  fmt::print(
      "median of >= {} samples after {} warm-up call(s), stop at noise <= {:g}% after {:g} s or at "
      "{:g} s; TFLOP/s over visible (unmasked) pairs only, cli/flops.h\n",
      a.s.min_samples, a.s.warmup, a.s.max_noise * 100, a.s.min_time_s, a.s.max_time_s);
  if (a.s.timing == "stream")
    fmt::print("timing: stream (each call enqueued behind a {:g} us delay kernel before its start "
               "event: the device's own time)\n",
               a.s.delay_us);
  else if (a.s.timing == "flush")
    fmt::print("timing: flush (each call enqueued behind a {:g} MB memset before its start event: "
               "triton do_bench's protocol, as the peers are timed)\n",
               a.s.flush_bytes / 1e6);
  else
    fmt::print("timing: call (events around each call on an idle device: host work included)\n");
  size_t mw = 12;
  for (const BenchCase& c : cases) mw = std::max(mw, c.model->name.size());
  fmt::print("{:<{}} {:<7} {:<5} {:>5} {:>7} {:>7} {:>4} {:<14} {:<17} {:>10} {:>10} {:>6} {:>4} "
             "{:>9} {:>9} {:>6} {:>6}\n",
             "model", mw, "mode", "dtype", "batch", "seqlen", "heads", "d", "mask", "config", "median ms",
             "min ms", "noise", "n", "TFLOP/s", "GB/s", "%mm", "%bw");
  std::fflush(stdout);

  const std::string date = utc_now_iso();
  // The provenance columns every CSV line ends with.
  const std::string csv_meta = fmt::format("{},{},{},{},{}", csv_field(dev.name), csv_field(fp),
                                           csv_field(compiler_id()), csv_field(git_revision()), date);
  json jcases = json::array();
  std::string csv = std::string(bench_csv_header()) + "\n";
  for (size_t i = 0; i < cases.size(); ++i) {
    const BenchCase& c = cases[i];
    const ModelConfig& m = *c.model;
    if (cases.size() > 1)
      fmt::print(stderr, "[{}/{}] {} {} {} {} ...\n", i + 1, cases.size(), m.name, c.mode,
                 dtype_name(c.dtype), case_shape(c));
    BenchResult r;
    try {
      r = bench_case(c, be, a.s);
    } catch (const UnsupportedCase& e) {
      fmt::print("{:<{}} {:<7} {:<5} {:>5} {:>7} {:>7} {:>4} unsupported: {}\n", m.name, mw, c.mode,
                 dtype_name(c.dtype), c.batch, c.seqlen,
                 fmt::format("{}/{}", m.nheads, m.nheads_k), m.head_dim, e.what());
      jcases.push_back({{"model", m.name}, {"mode", c.mode}, {"dtype", dtype_name(c.dtype)},
                        {"batch", c.batch}, {"seqlen_q", c.seqlen}, {"seqlen_k", c.seqlen},
                        {"workload", workload_json(c)},
                        {"nheads", m.nheads}, {"nheads_k", m.nheads_k}, {"head_dim", m.head_dim},
                        {"causal", m.causal}, {"mask", mask_label(m)}, {"status", "unsupported"},
                        {"message", e.what()}});
      continue;
    }
    const BenchStats& st = r.stats;
    const double flops = case_flops(c), bytes = case_bytes(c);
    const double tflops = st.median_ms > 0 ? flops / (st.median_ms * 1e-3) / 1e12 : 0;
    const double gbs = st.median_ms > 0 ? bytes / (st.median_ms * 1e-3) / 1e9 : 0;
    const json fmm = peaks.measured ? json(tflops / peaks.matmul_tflops) : json(nullptr);
    const json fbw = peaks.measured ? json(gbs / peaks.copy_gbs) : json(nullptr);
    const std::string label = workload_label_of(c);
    const std::string mask = mask_label(m) + (label.empty() ? "" : " " + label);
    const std::string cfg = configs_label(r.configs);
    fmt::print("{:<{}} {:<7} {:<5} {:>5} {:>7} {:>7} {:>4} {:<14} {:<17} {:>10.4f} {:>10.4f} "
               "{:>5.1f}% {:>4} {:>9.4g} {:>9.4g} {:>6} {:>6}\n",
               m.name, mw, c.mode, dtype_name(c.dtype), c.batch, c.seqlen,
               fmt::format("{}/{}", m.nheads, m.nheads_k), m.head_dim, mask, cfg, st.median_ms,
               st.min_ms, st.noise * 100, st.samples, tflops, gbs,
               peaks.measured ? fmt::format("{:.1f}", 100 * tflops / peaks.matmul_tflops) : "-",
               peaks.measured ? fmt::format("{:.1f}", 100 * gbs / peaks.copy_gbs) : "-");
    std::fflush(stdout);
    json jcfg = json::object();
    for (const auto& [pass, kc] : r.configs) jcfg[pass] = config_json(kc);
    json keys = json::object();
    for (const char* pass : {"fwd", "bwd"})
      if ((std::string(pass) == "fwd" && c.mode != "bwd") ||
          (std::string(pass) == "bwd" && c.mode != "fwd"))
        keys[pass] = case_key(c, be, pass).to_string();
    jcases.push_back({{"model", m.name},
                      {"status", "ok"},
                      {"mode", c.mode},
                      {"dtype", dtype_name(c.dtype)},
                      {"batch", c.batch},
                      {"seqlen_q", c.kind == "decode" ? m.decode_seqlen_q : c.seqlen},
                      {"seqlen_k", c.kind == "decode" ? c.seqlen + m.decode_seqlen_q : c.seqlen},
                      {"workload", workload_json(c)},
                      {"nheads", m.nheads},
                      {"nheads_k", m.nheads_k},
                      {"head_dim", m.head_dim},
                      {"causal", m.causal},
                      {"window_left", m.window_left},
                      {"window_right", m.window_right},
                      {"softcap", m.softcap},
                      {"dropout", m.dropout},
                      {"alibi", m.alibi},
                      {"mask", mask},
                      {"tune_keys", keys},
                      {"kernel_config", jcfg},
                      {"samples", st.samples},
                      {"warmup", a.s.warmup},
                      {"buffer_sets", st.buffer_sets},
                      {"median_ms", st.median_ms},
                      {"min_ms", st.min_ms},
                      {"max_ms", st.max_ms},
                      {"mean_ms", st.mean_ms},
                      {"noise", st.noise},
                      {"converged", st.converged},
                      {"seconds", st.seconds},
                      {"flops", flops},
                      {"bytes", bytes},
                      {"tflops", tflops},
                      {"gbs", gbs},
                      {"frac_peak_matmul", fmm},
                      {"frac_peak_copy", fbw}});
    csv += fmt::format("{},{},{},{},{},{},{},{},{},{},{},{},{:.6g},{:.6g},{:.6g},{:.4g},{},{:.6g},{:.6g},{},{},{}\n",
                       csv_field(m.name), c.mode, dtype_name(c.dtype), c.batch, c.seqlen, c.seqlen,
                       m.nheads, m.nheads_k, m.head_dim, csv_field(mask), csv_field(cfg),
                       st.samples, st.median_ms, st.min_ms, st.max_ms, st.noise,
                       st.converged ? "true" : "false", tflops, gbs,
                       peaks.measured ? fmt::format("{:.4g}", tflops / peaks.matmul_tflops) : "",
                       peaks.measured ? fmt::format("{:.4g}", gbs / peaks.copy_gbs) : "", csv_meta);
  }

  FileSet outputs;
  if (!a.json_out.empty()) {
    json j = {
        {"schema_version", 1},
        {"tool", "flashplus bench"},
        {"meta",
         {{"date", date},
          {"flashplus_version", FLASHPLUS_VERSION},
          {"git_revision", git_revision()},
          {"compiler", compiler_id()},
          {"configs", a.configs},
          {"settings",
           {{"min_time_s", a.s.min_time_s},
            {"max_time_s", a.s.max_time_s},
            {"max_noise", a.s.max_noise},
            {"min_samples", a.s.min_samples},
            {"warmup", a.s.warmup},
            {"threads", a.s.threads},
            {"timing", a.s.timing},
            {"timing_delay_us", a.s.timing == "stream" ? a.s.delay_us : 0.0},
            {"timing_flush_bytes", a.s.timing == "flush" ? a.s.flush_bytes : size_t{0}},
            {"l2_bytes_assumed", runtime::default_l2_bytes(be)}}},
          {"flop_convention",
           "cli/flops.h: fwd 4*b*h*d*pairs (pairs: sq*sk, causal sq*sk/2, windows count visible "
           "pairs exactly), bwd 2.5x fwd, fwd+bwd 3.5x fwd"},
          {"byte_convention",
           "fwd: q,k,v read + out written + lse (fp32); bwd: q,k,v,out,dout,lse read + dq,dk,dv "
           "written; each tensor once"}}},
        {"device",
         {{"backend", backend_name(be)},
          {"name", dev.name},
          {"arch", dev.arch},
          {"units", dev.multiprocessors},
          {"memory_bytes", dev.memory_bytes},
          {"fingerprint", fp},
          {"tuned_table", active_table_source(fp)},
          {"tuned_table_match", active_table_match(fp)},
          {"peaks",
           {{"measured", peaks.measured},
            {"matmul_tflops", peaks.measured ? json(peaks.matmul_tflops) : json(nullptr)},
            {"copy_gbs", peaks.measured ? json(peaks.copy_gbs) : json(nullptr)},
            {"date", peaks.date},
            {"source", peaks.source}}}}},
        {"cases", jcases}};
    outputs.stage(a.json_out, j.dump(2) + "\n");
  }
  if (!a.csv_out.empty()) outputs.stage(a.csv_out, csv);
  // --json and --csv together or neither: a failed write leaves no half of the results.
  outputs.commit();
  for (const std::string* o : {&a.json_out, &a.csv_out})
    if (!o->empty()) fmt::print(stderr, "wrote {}\n", *o);
  return kExitOk;
}

}  // namespace

void register_bench(CLI::App& app, Action& action) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* sub = app.add_subcommand(
      "bench", "Benchmark model workloads (median of repeated runs, TFLOP/s, GB/s, % of peak)");
  sub->add_option("--config", a->configs, "Model config(s): configs/models/*.json")
      ->check(CLI::ExistingFile);
  sub->add_option("--workload", a->workloads,
                  "prefill|decode|varlen, one or more: run only these workloads of the configs")
      ->check(CLI::IsMember({"prefill", "decode", "varlen"}));
  sub->add_option("--max-seqlen", a->max_seqlen, "Skip workloads with seqlen above N")
      ->check(non_negative());
  sub->add_option("--batch", a->batch, "Replace the config's batch sizes")->check(positive());
  sub->add_option("--mode", a->modes,
                  "fwd|bwd|fwd+bwd, one or more (default: the config's modes)")
      ->check(CLI::IsMember({"fwd", "bwd", "fwd+bwd"}));
  sub->add_option("--dtype", a->dtype, "Run this dtype instead of the config's (as run --dtype): fp32|fp16|bf16")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  sub->add_option("--backend", a->backend, "cpu|cuda|hip|auto")
      ->check(CLI::IsMember({"cpu", "cuda", "hip", "auto"}));
  sub->add_option("--threads", a->s.threads, "CPU backend threads (0 = all cores)")
      ->check(non_negative());
  sub->add_option("--min-time", a->s.min_time_s,
                  "Seconds of timed samples before the noise rule may stop a case (default 0.5)")
      ->check(non_negative());
  sub->add_option("--max-time", a->s.max_time_s,
                  "Seconds per case after which sampling stops whatever the noise (default 5)")
      ->check(non_negative());
  sub->add_option("--max-noise", a->s.max_noise,
                  "Stop once the relative standard deviation is at most this (default 0.01)")
      ->check(non_negative());
  sub->add_option("--min-samples", a->s.min_samples, "Samples before stopping (default 3)")
      ->check(positive());
  sub->add_option("--warmup", a->s.warmup, "Untimed calls before sampling (default 1)")
      ->check(non_negative());
  sub->add_option("--timing", a->s.timing,
                  "call|stream|flush: how a sample is timed (default call: events around the "
                  "call on an idle device; stream: the call enqueued behind a delay kernel, the "
                  "device's own time; flush: behind a 256 MB memset that clears the L2, exactly "
                  "as triton's do_bench times the peers; stream and flush on GPU backends only)")
      ->check(CLI::IsMember({"call", "stream", "flush"}));
  sub->add_option("--timing-delay", a->s.delay_us,
                  "Microseconds of the delay kernel before each sample with --timing stream "
                  "(default 300; must exceed the host's time to enqueue one call)")
      ->check(non_negative());
  sub->add_option("--json", a->json_out, "Write the results as JSON (docs/BENCH.md)")
      ->type_name("OUT.json");
  sub->add_option("--csv", a->csv_out, "Write the results as CSV")->type_name("OUT.csv");
  sub->add_flag("--peaks", a->peaks,
                "Measure the device's matmul and copy peaks now and cache them (per device "
                "fingerprint, in $XDG_CACHE_HOME/flashplus or ~/.cache/flashplus)");
  sub->footer(
      "Examples:\n"
      "  flashplus bench --peaks --backend cpu\n"
      "  flashplus bench --config configs/models/llama7b.json --backend cpu --max-seqlen 1024 \\\n"
      "      --batch 1 --mode fwd --json bench.json --csv bench.csv\n"
      "  flashplus bench --config configs/models/fa-bench.json --mode fwd --mode bwd --json b.json\n"
      "\n"
      "Each case: warm-up, then samples (one call each, timed with device events on GPUs and the\n"
      "wall clock on the CPU) over rotating input sets larger than the cache, until the relative\n"
      "noise is <= --max-noise (after --min-time and --min-samples) or --max-time is spent. The\n"
      "table (stdout) shows the median; progress goes to stderr. TFLOP/s counts visible pairs\n"
      "only (cli/flops.h); %mm and %bw are fractions of the peaks cached by --peaks. See\n"
      "docs/BENCH.md.\n");
  sub->callback([a, &action]() {
    if (a->configs.empty() && !a->peaks) throw usage_error("bench needs --config FILE or --peaks");
    action = [a]() { return run_bench(*a); };
  });
}

}  // namespace flashplus::cli
