// `flashplus autotune`: measure the backend's candidate kernel configurations for each kernel key
// of some model workloads and write the winners into a tuned table (docs/TUNING.md).
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>

#include "bench.h"
#include "commands.h"
#include "common.h"
#include "config.h"
#include "flashplus/runtime.h"
#include "flashplus/tuning.h"
#include "file_io.h"
#include "verify.h"

namespace flashplus::cli {
namespace {
namespace fs = std::filesystem;

struct AutotuneArgs {
  std::vector<std::string> configs;
  std::string out;
  std::string backend = "auto";
  double budget_s = 0;  // 0 = unbounded
  int max_seqlen = 0;
  std::vector<int> batch;
  std::vector<std::string> modes;
  std::string dtype;
  BenchSettings s;
};

volatile std::sig_atomic_t g_interrupted = 0;
extern "C" void on_sigint(int) {
  g_interrupted = 1;
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C ends the process at once
}

std::string instance_name(Backend be, const TuneKey& k, const KernelConfig& c) {
  return fmt::format("{}_{}_{}_d{}_{}_{}", backend_name(be), k.mode, dtype_name(k.dtype),
                     k.head_dim_bucket, mask_kind_name(k.mask), c.to_string());
}

// A small problem with the key's dtype, head dim and mask: ragged tiles on both sides.
Case check_case(const BenchCase& bc, const std::string& pass) {
  const ModelConfig& m = *bc.model;
  Case c;
  c.name = "autotune/check";
  c.batch = 1;
  c.seqlen_q = c.seqlen_k = std::min(bc.seqlen, 147);
  c.nheads_k = m.nheads_k < m.nheads ? 1 : 2;
  c.nheads = m.nheads_k < m.nheads ? 2 : 2;
  c.head_dim = m.head_dim;
  c.dtype = bc.dtype;
  c.causal = m.causal;
  // Windows wider than the check problem would make the key's mask kind vanish: shrink them.
  auto shrink = [&](int w) { return w < 0 ? w : std::min(w, std::max(1, c.seqlen_k / 3)); };
  c.window_left = shrink(m.window_left);
  c.window_right = shrink(m.window_right);
  c.softcap = m.softcap;
  c.alibi = m.alibi ? AlibiMode::per_head : AlibiMode::none;
  c.scale = m.softmax_scale;
  c.bwd = pass == "bwd";
  return c;
}

int run_autotune(const AutotuneArgs& a) {
  const Backend be = resolve_backend(a.backend);
  const DeviceDesc dev = backend_device(be);
  const std::string fp = device_fingerprint(dev);
  // Before tuning, not after minutes of it: the table's directory must take a new file.
  check_output_writable(a.out);

  // The existing table is kept and merged into; a table we cannot read is never overwritten.
  TunedTable table;
  std::error_code ec;
  if (fs::exists(a.out, ec)) {
    const Status st = TunedTable::load(a.out, &table);
    if (!st.ok())
      throw usage_error(st.message() + " (refusing to overwrite it; move it away first)");
    if (table.fingerprint != fp)
      throw usage_error(fmt::format("{}: its fingerprint '{}' is not this device's '{}'", a.out,
                                    table.fingerprint, fp));
  }
  table.device = dev.name;
  table.fingerprint = fp;
  table.git_revision = git_revision();
  TunedTable mine;  // only the keys this run tuned

  WorkloadFilter f;
  f.max_seqlen = a.max_seqlen;
  f.batch_override = a.batch;
  f.modes = a.modes;
  std::optional<DType> dtype_override;
  if (!a.dtype.empty()) {
    DType t;
    if (!parse_dtype(a.dtype, &t)) throw usage_error(fmt::format("--dtype: unknown '{}'", a.dtype));
    dtype_override = t;  // as `run --dtype`: run this dtype, whatever the config lists
  }
  std::vector<std::unique_ptr<ModelConfig>> models;
  std::vector<Workload> work;
  for (const auto& path : a.configs)
    for (ModelConfig& m : load_model_configs(path)) {
      models.push_back(std::make_unique<ModelConfig>(std::move(m)));
      if (dtype_override) models.back()->dtypes = {*dtype_override};
      // The tuned table keys mha_fwd/mha_bwd shapes: decode and varlen workloads are not tuned.
      for (const Workload& w : expand_workloads(*models.back(), f))
        if (w.kind == "prefill") work.push_back(w);
    }
  const std::vector<BenchCase> cases = bench_cases(work, {});
  if (cases.empty()) throw usage_error("no workloads left after the filters");

  // One tuning workload per kernel key: its largest case (most FLOPs).
  std::map<std::string, std::pair<TuneKey, BenchCase>> keys;
  for (const BenchCase& c : cases) {
    const TuneKey k = case_key(c, be, c.mode);
    auto it = keys.find(k.to_string());
    if (it == keys.end())
      keys.emplace(k.to_string(), std::make_pair(k, c));
    else if (case_flops(c) > case_flops(it->second.second))
      it->second.second = c;
  }
  size_t total_candidates = 0;
  std::map<std::string, std::vector<KernelConfig>> cands;
  for (const auto& [name, kc] : keys) {
    cands[name] = runtime::tuning_candidates(be, kc.first);
    total_candidates += cands[name].size();
  }
  if (total_candidates == 0)
    throw runtime_error(fmt::format(
        "the {} backend offers no candidate configurations to tune (BackendOps::candidates)",
        backend_name(be)));

  fmt::print(stderr, "autotune on {} ({}): {} kernel key(s), {} candidate(s){}\n", dev.name, fp,
             keys.size(), total_candidates,
             a.budget_s > 0 ? fmt::format(", budget {:g} s", a.budget_s) : "");
  g_interrupted = 0;
  auto old_handler = std::signal(SIGINT, on_sigint);
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  size_t done_candidates = 0, keys_done = 0;
  std::vector<std::string> summary;
  bool stopped = false;
  std::string stop_reason;
  for (const auto& [name, kc] : keys) {
    const TuneKey& key = kc.first;
    BenchCase tc = kc.second;
    const std::vector<KernelConfig>& list = cands[name];
    if (list.empty()) {
      summary.push_back(fmt::format("{:<28} no candidates offered by the backend", name));
      continue;
    }
    struct Timed {
      KernelConfig cfg;
      double ms;
    };
    std::vector<Timed> timed;
    std::vector<std::string> rejected;
    for (const KernelConfig& cfg : list) {
      if (g_interrupted) {
        stopped = true;
        stop_reason = "interrupted";
        break;
      }
      const double left = a.budget_s > 0 ? a.budget_s - elapsed() : 1e30;
      if (left <= 0) {
        stopped = true;
        stop_reason = "budget spent";
        break;
      }
      // Spread what is left of the budget over the candidates still to run.
      BenchSettings s = a.s;
      if (a.budget_s > 0)
        s.max_time_s = std::min(s.max_time_s,
                                left / static_cast<double>(total_candidates - done_candidates));
      s.min_time_s = std::min(s.min_time_s, s.max_time_s);
      std::string eta;
      if (done_candidates > 0) {
        double rest = elapsed() / done_candidates * (total_candidates - done_candidates);
        if (a.budget_s > 0) rest = std::min(rest, left);
        eta = fmt::format(", ETA {:.0f} s", rest);
      }
      fmt::print(stderr, "[{}/{}] {} {} ({}){}\n", done_candidates + 1, total_candidates, name,
                 cfg.to_string(), case_shape(tc), eta);
      ++done_candidates;
      VerifyOptions vo;
      vo.backend = be;
      vo.seed = 7;
      vo.num_threads = a.s.threads;
      vo.config_override = &cfg;
      const CaseResult cr = run_case(check_case(tc, key.mode), vo);
      if (cr.outcome != Outcome::pass) {
        std::string why = outcome_name(cr.outcome);
        if (!cr.problems.empty()) why += ": " + cr.problems.front();
        if (!cr.unsupported.empty()) why += ": " + cr.unsupported;
        rejected.push_back(cfg.to_string() + " (" + why + ")");
        fmt::print(stderr, "  rejected: {}\n", why);
        continue;
      }
      try {
        const BenchResult r = bench_case(tc, be, s, &cfg);
        timed.push_back({cfg, r.stats.median_ms});
        fmt::print(stderr, "  {:.4f} ms ({} samples, noise {:.1f}%)\n", r.stats.median_ms,
                   r.stats.samples, r.stats.noise * 100);
      } catch (const Error& e) {
        rejected.push_back(cfg.to_string() + " (" + e.what() + ")");
        fmt::print(stderr, "  rejected: {}\n", e.what());
      }
    }
    if (stopped && timed.size() < list.size() - rejected.size()) {
      // A key whose candidates were not all measured is not written: its winner is unknown.
      summary.push_back(fmt::format("{:<28} not finished ({})", name, stop_reason));
      break;
    }
    if (timed.empty()) {
      summary.push_back(fmt::format("{:<28} every candidate rejected: {}", name,
                                    rejected.empty() ? "" : rejected.front()));
      continue;
    }
    std::sort(timed.begin(), timed.end(), [](const Timed& x, const Timed& y) { return x.ms < y.ms; });
    TunedEntry e;
    e.config = timed[0].cfg;
    e.kernel = instance_name(be, key, timed[0].cfg);
    e.time_ms = timed[0].ms;
    if (timed.size() > 1) {
      e.runner_up = instance_name(be, key, timed[1].cfg);
      e.runner_up_ms = timed[1].ms;
    }
    e.workload = case_shape(tc);
    table.set(key, e);
    table.created = utc_now_iso();
    mine.set(key, e);
    // Another autotune may have written the table since we read it: merge our keys over what is
    // on disk now, so its keys are kept (the window left is the moment between this re-read
    // and the rename; docs/CONFIGS.md).
    if (fs::exists(a.out, ec)) {
      TunedTable now;
      if (TunedTable::load(a.out, &now).ok() && now.fingerprint == fp) {
        now.merge(mine);
        now.device = table.device;
        now.git_revision = table.git_revision;
        now.created = table.created;
        table = now;
      }
    }
    // After every key, so an interrupted run keeps it; through file_io.h as every CLI output
    // (atomic rename, symlinks followed, a device written through).
    write_file_atomic(a.out, table.dump());
    ++keys_done;
    summary.push_back(fmt::format("{:<28} {:<14} {:>10.4f} ms   runner-up {:<14} {}", name,
                                  e.config.to_string(), e.time_ms,
                                  timed.size() > 1 ? timed[1].cfg.to_string() : "-",
                                  timed.size() > 1 ? fmt::format("{:.4f} ms", e.runner_up_ms)
                                                   : std::string("-")));
    if (stopped) break;
  }
  std::signal(SIGINT, old_handler);
  fmt::print("autotune {} on {} ({}), {:.1f} s; {} of {} key(s) written to {}{}\n",
             backend_name(be), dev.name, fp, elapsed(), keys_done, keys.size(), a.out,
             stopped ? " (" + stop_reason + ")" : "");
  for (const std::string& line : summary) fmt::print("  {}\n", line);
  if (keys_done > 0)
    fmt::print("use it: FLASHPLUS_TUNED_TABLE={} (or install it as configs/tuned/{}.json)\n",
               a.out, fp);
  return g_interrupted ? 130 : kExitOk;
}

}  // namespace

void register_autotune(CLI::App& app, Action& action) {
  auto a = std::make_shared<AutotuneArgs>();
  a->s.min_time_s = 0.2;
  a->s.max_time_s = 2.0;
  CLI::App* sub = app.add_subcommand(
      "autotune", "Measure the backend's kernel configurations per kernel key; write a tuned table");
  sub->add_option("--config", a->configs, "Model config(s) whose workloads define the keys")
      ->required()
      ->check(CLI::ExistingFile);
  sub->add_option("--out", a->out, "Tuned table to write or merge into: configs/tuned/<fingerprint>.json")
      ->required()
      ->type_name("TABLE.json");
  sub->add_option("--backend", a->backend, "cpu|cuda|hip|auto")
      ->check(CLI::IsMember({"cpu", "cuda", "hip", "auto"}));
  sub->add_option("--budget", a->budget_s, "Seconds for the whole search (0 = unbounded)")
      ->check(non_negative());
  sub->add_option("--max-seqlen", a->max_seqlen, "Skip workloads with seqlen above N")
      ->check(non_negative());
  sub->add_option("--batch", a->batch, "Replace the config's batch sizes")->check(positive());
  sub->add_option("--mode", a->modes, "Tune only these modes")->check(CLI::IsMember({"fwd", "bwd"}));
  sub->add_option("--dtype", a->dtype, "Tune this dtype instead of the config's (as run --dtype)")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  sub->add_option("--threads", a->s.threads, "CPU backend threads (0 = all cores)")
      ->check(non_negative());
  sub->add_option("--min-time", a->s.min_time_s, "Per candidate, as bench (default 0.2)")
      ->check(non_negative());
  sub->add_option("--max-time", a->s.max_time_s, "Per candidate, as bench (default 2)")
      ->check(non_negative());
  sub->footer(
      "Examples:\n"
      "  flashplus autotune --config configs/models/gpt2.json --backend cpu --max-seqlen 1024 \\\n"
      "      --batch 1 --out configs/tuned/cpu-x86_64.json --budget 120\n"
      "\n"
      "Each kernel key (arch/dtype/head-dim bucket/mask/mode) of the workloads is tuned on its\n"
      "largest workload: every candidate configuration the backend offers is first checked\n"
      "against the fp64 reference on a small problem of the key (failures are rejected), then\n"
      "timed like `flashplus bench`; the fastest is written with its time and the runner-up's.\n"
      "The table is saved (atomically, merged with the keys already in it) after every key, so\n"
      "Ctrl-C or --budget keeps every finished key. See docs/TUNING.md.\n");
  sub->callback([a, &action]() { action = [a]() { return run_autotune(*a); }; });
}

}  // namespace flashplus::cli
