// `flashplus bench`: the stop rule, FLOP/byte conventions, the output schema (JSON keys, CSV
// header), peaks caching, and the config schema additions it relies on (variants, batch_tokens).
#include <catch2/catch.hpp>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "bench.h"
#include "bench_test_util.h"
#include "commands.h"
#include "config.h"
#include "flashplus/runtime.h"

using namespace flashplus;
using namespace flashplus::cli;
using namespace flashplus::benchtest;
using nlohmann::json;

TEST_CASE("bench: summary statistics and the stop rule", "[bench]") {
  const BenchStats s = summarize({3, 1, 2, 10});
  CHECK(s.samples == 4);
  CHECK(s.median_ms == Approx(2.5));
  CHECK(s.min_ms == 1);
  CHECK(s.max_ms == 10);
  CHECK(s.mean_ms == Approx(4));
  CHECK(s.noise > 0.5);

  BenchSettings st;
  st.min_time_s = 0.01;
  st.max_time_s = 1;
  st.max_noise = 0.01;
  st.min_samples = 3;
  bool conv = false;
  // Too few samples: go on.
  CHECK(keep_sampling({5, 5}, 0.01, st, &conv));
  // Quiet and long enough: stop, converged.
  CHECK_FALSE(keep_sampling({5, 5, 5}, 0.02, st, &conv));
  CHECK(conv);
  // Noisy: go on until max_time, then stop unconverged.
  CHECK(keep_sampling({5, 1, 9}, 0.5, st, &conv));
  CHECK_FALSE(keep_sampling({5, 1, 9}, 1.5, st, &conv));
  CHECK_FALSE(conv);
  // Not enough timed time yet (min_time): go on even when quiet.
  st.min_time_s = 1;
  CHECK(keep_sampling({5, 5, 5}, 0.02, st, &conv));
}

TEST_CASE("bench: --timing is checked against the backend", "[bench]") {
  BenchSettings st;
  CHECK(st.timing == "call");  // today's method stays the default
  CHECK_NOTHROW(check_timing(st, Backend::cpu));
  st.timing = "stream";  // the CPU has no stream to enqueue behind
  CHECK_THROWS_AS(check_timing(st, Backend::cpu), Error);
  st.timing = "flush";  // ... nor a device cache to clear
  CHECK_THROWS_AS(check_timing(st, Backend::cpu), Error);
  CHECK_THROWS_AS(before_sample(st, Backend::cpu), Error);  // runtime::flush_l2 refuses too
  st.timing = "sideways";
  CHECK_THROWS_AS(check_timing(st, Backend::cpu), Error);
  st.timing = "call";
  st.delay_us = -1;
  CHECK_THROWS_AS(check_timing(st, Backend::cpu), Error);
  // The runtime answers unsupported (not a crash) for the CPU's delay.
  CHECK(runtime::delay(Backend::cpu, 10).code() == StatusCode::unsupported);
}

TEST_CASE("bench: FLOPs follow flops.h and bytes count each tensor once", "[bench]") {
  ModelConfig m;
  m.nheads = 4;
  m.nheads_k = 2;
  m.head_dim = 64;
  m.causal = true;
  BenchCase c{&m, DType::bf16, 2, 128, "fwd"};
  const double fwd = 4.0 * 2 * 4 * 64 * (128.0 * 128 / 2);
  CHECK(case_flops(c) == Approx(fwd));
  c.mode = "bwd";
  CHECK(case_flops(c) == Approx(2.5 * fwd));
  c.mode = "fwd+bwd";
  CHECK(case_flops(c) == Approx(3.5 * fwd));
  const double q = 2.0 * 128 * 4 * 64 * 2, kv = 2.0 * 128 * 2 * 64 * 2, lse = 2.0 * 4 * 128 * 4;
  c.mode = "fwd";
  CHECK(case_bytes(c) == Approx(2 * q + 2 * kv + lse));
  c.mode = "bwd";
  CHECK(case_bytes(c) == Approx(4 * q + 4 * kv + lse));
  const TuneKey k = case_key(c, Backend::cpu, "bwd");
  CHECK(k.to_string() == "cpu/bf16/d64/causal/bwd/r12");
  m.window_left = 16;
  CHECK(case_key(c, Backend::cpu, "fwd").mask == MaskKind::window);
}

TEST_CASE("model configs: variants and batch_tokens (fa-bench.json)", "[bench][config]") {
  const auto ms = load_model_configs(std::string(FLASHPLUS_SOURCE_DIR) + "/configs/models/fa-bench.json");
  REQUIRE(ms.size() == 4);
  int seen = 0;
  for (const ModelConfig& m : ms) {
    CHECK(m.nheads * m.head_dim == 2048);
    const auto work = expand_workloads(m, {});
    for (const Workload& w : work) {
      CHECK(w.batch * w.seqlen == 16384);
      ++seen;
    }
    CHECK(m.name.rfind("fa-bench/", 0) == 0);
  }
  CHECK(seen == 4 * 3 * 2);  // 4 variants x 3 seqlens x 2 modes
  // --batch still overrides.
  WorkloadFilter f;
  f.batch_override = {3};
  for (const Workload& w : expand_workloads(ms[0], f)) CHECK(w.batch == 3);

  Tmp t("cfg");
  const std::string both = t.write(
      "both.json",
      R"({"schema_version": 1, "name": "x", "nheads": 2, "head_dim": 32, "dtype": "fp32",
          "batch_sizes": [1], "batch_tokens": 64, "seqlens": [8], "modes": ["fwd"]})");
  CHECK_THROWS_WITH(load_model_configs(both), Catch::Contains("exactly one of"));
  const std::string bad_variant = t.write(
      "bv.json",
      R"({"schema_version": 1, "name": "x", "nheads": 2, "head_dim": 32, "dtype": "fp32",
          "batch_sizes": [1], "seqlens": [8], "modes": ["fwd"],
          "variants": [{"name": "a", "head_dims": 64}]})");
  CHECK_THROWS_WITH(load_model_configs(bad_variant), Catch::Contains("variants[0].head_dims"));
  // The single-config reader gives the base config (its own keys, no variant applied) and still
  // checks the variants.
  const ModelConfig base =
      load_model_config(std::string(FLASHPLUS_SOURCE_DIR) + "/configs/models/fa-bench.json");
  CHECK(base.name == "fa-bench");
  CHECK(base.batch_tokens == 16384);
  CHECK_THROWS_WITH(load_model_config(bad_variant), Catch::Contains("variants[0].head_dims"));
}

#ifdef FLASHPLUS_CLI_PATH
TEST_CASE("bench: JSON and CSV outputs, peaks not measured then cached", "[bench][cli]") {
  Tmp t("bench");
  const std::string cfg = t.write("tiny.json", tiny_model());
  const std::string cache = t.file("cache");
  const std::string common = "--config '" + cfg +
                             "' --backend cpu --min-time 0 --max-time 0.05 --warmup 1 ";
  CliResult r = run_flashplus("bench " + common + "--mode fwd --mode bwd --mode fwd+bwd --json '" + t.file("b.json") + "' --csv '" +
                                  t.file("b.csv") + "'",
                              cache, t.file("err1"));
  INFO(r.out << t.read("err1"));
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("TFLOP/s"));
  // Progress goes to stderr, the table to stdout.
  CHECK_THAT(t.read("err1"), Catch::Contains("[1/3]"));
  CHECK_THAT(r.out, !Catch::Contains("[1/3]"));

  const json j = json::parse(t.read("b.json"));
  CHECK(j["schema_version"] == 1);
  for (const char* k : {"date", "git_revision", "compiler", "flashplus_version", "settings",
                        "flop_convention", "byte_convention"})
    CHECK(j["meta"].contains(k));
  for (const char* k : {"backend", "name", "arch", "fingerprint", "tuned_table", "peaks"})
    CHECK(j["device"].contains(k));
  CHECK(j["device"]["fingerprint"] == backend_fingerprint(Backend::cpu));
  CHECK(j["device"]["peaks"]["measured"] == false);
  REQUIRE(j["cases"].size() == 3);
  for (const json& c : j["cases"]) {
    for (const char* k : {"model", "mode", "dtype", "batch", "seqlen_q", "seqlen_k", "nheads",
                          "nheads_k", "head_dim", "causal", "mask", "kernel_config", "tune_keys",
                          "samples", "buffer_sets", "median_ms", "min_ms", "max_ms", "noise",
                          "converged", "flops", "bytes", "tflops", "gbs", "frac_peak_matmul",
                          "frac_peak_copy"})
      CHECK(c.contains(k));
    CHECK(c["samples"].get<int>() >= 1);
    CHECK(c["buffer_sets"].get<int>() >= 2);
    CHECK(c["min_ms"].get<double>() <= c["median_ms"].get<double>());
    CHECK(c["median_ms"].get<double>() <= c["max_ms"].get<double>());
    CHECK(c["tflops"].get<double>() > 0);
    CHECK(c["frac_peak_matmul"].is_null());
  }
  CHECK(j["cases"][0]["mode"] == "fwd");
  CHECK(j["cases"][0]["kernel_config"].contains("fwd"));
  CHECK(j["cases"][1]["kernel_config"].contains("bwd"));
  CHECK_FALSE(j["cases"][1]["kernel_config"].contains("fwd"));
  CHECK(j["cases"][2]["kernel_config"].contains("fwd"));
  CHECK(j["cases"][2]["kernel_config"].contains("bwd"));
  CHECK(j["cases"][0]["tune_keys"]["fwd"] == "cpu/fp32/d32/causal/fwd/r12");

  const std::string csv = t.read("b.csv");
  CHECK(csv.rfind(std::string(bench_csv_header()) + "\n", 0) == 0);
  CHECK(std::count(csv.begin(), csv.end(), '\n') == 4);
  const std::string header = bench_csv_header();
  const size_t ncols = std::count(header.begin(), header.end(), ',');
  std::istringstream lines(csv);
  for (std::string line; std::getline(lines, line);)
    CHECK(static_cast<size_t>(std::count(line.begin(), line.end(), ',')) == ncols);

  // --peaks measures and caches; the next bench reads the cache and reports fractions.
  r = run_flashplus("bench --peaks --backend cpu", cache, t.file("err2"));
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("TFLOP/s"));
  const json pk = json::parse(t.read("cache/flashplus/peaks.json"));
  const json& e = pk["devices"][backend_fingerprint(Backend::cpu)];
  CHECK(e["matmul_tflops"].get<double>() > 0);
  CHECK(e["copy_gbs"].get<double>() > 0);
  r = run_flashplus("bench " + common + "--mode fwd --json '" + t.file("c.json") + "'", cache,
                    t.file("err3"));
  REQUIRE(r.code == 0);
  const json j2 = json::parse(t.read("c.json"));
  CHECK(j2["device"]["peaks"]["measured"] == true);
  CHECK(j2["cases"][0]["frac_peak_matmul"].get<double>() > 0);

  // No stray temporary files next to the outputs (atomic writes).
  for (const auto& ent : fs::directory_iterator(t.path))
    CHECK(ent.path().filename().string().find(".tmp") == std::string::npos);

  // --timing: call is what ran above (recorded); stream is refused on the CPU.
  CHECK(j["meta"]["settings"]["timing"] == "call");
  CHECK(j["meta"]["settings"]["timing_delay_us"] == 0.0);  // only a stream run delays
  CHECK(j["meta"]["settings"]["timing_flush_bytes"] == 0);  // only a flush run clears the L2
  r = run_flashplus("bench " + common + "--mode fwd --timing stream", cache, t.file("err4"));
  CHECK(r.code == 2);
  CHECK_THAT(t.read("err4"), Catch::Contains("GPU backend"));

  // Usage errors: exit 2.
  CHECK(run_flashplus("bench --backend cpu", cache).code == 2);
  CHECK(run_flashplus("bench --config '" + cfg + "' --mode sideways", cache).code == 2);
}
#endif

#ifdef FLASHPLUS_CLI_PATH
TEST_CASE("compare_peers.py joins a bench result with peers.json", "[bench][cli]") {
  if (std::system("python3 -c 'import json' >/dev/null 2>&1") != 0) {
    WARN("python3 not found: scripts/compare_peers.py not tested");
    return;
  }
  Tmp t("peers");
  const std::string cfg = t.write("tiny.json", tiny_model("tiny", false));
  CliResult r = run_flashplus("bench --config '" + cfg +
                                  "' --backend cpu --dtype bf16 --min-time 0 --max-time 0.02 "
                                  "--json '" + t.file("b.json") + "'",
                              t.file("cache"));
  REQUIRE(r.code == 0);
  const json b = json::parse(t.read("b.json"));
  // Synthetic peers: FA2 at half our speed, on the same device; cuDNN missing.
  json rows = json::array();
  for (const json& c : b["cases"])
    rows.push_back({{"backend", "sdpa_flash(FA2)"}, {"mode", c["mode"]}, {"d", c["head_dim"]},
                    {"s", c["seqlen_q"]}, {"b", c["batch"]}, {"h", c["nheads"]},
                    {"causal", c["causal"]}, {"ms", 1.0},
                    {"tflops", c["tflops"].get<double>() / 2}});
  json peers = {{"peak_mm", 1.0}, {"peak_bw", 1.0}, {"gpu", b["device"]["name"]},
                {"torch", "test"}, {"triton", "test"}, {"rows", rows}};
  t.write("peers.json", peers.dump());
  fs::create_directories(t.path / "out");
  const std::string script = std::string("python3 '") + FLASHPLUS_SOURCE_DIR +
                             "/scripts/compare_peers.py' '" + t.file("b.json") + "' ";
  const std::string outdir = " --out '" + t.file("out") + "'";
  int rc = std::system((script + "'" + t.file("peers.json") + "'" + outdir +
                        " --no-plot >/dev/null 2>&1").c_str());
  REQUIRE(WEXITSTATUS(rc) == 0);
  const std::string md = t.read("out/peers-" + backend_fingerprint(Backend::cpu) + ".md");
  CHECK_THAT(md, Catch::Contains("| ours | FA2 | cuDNN | Flex | ours/FA2 | ours/cuDNN |"));
  CHECK_THAT(md, Catch::Contains("| 2.00 | – |"));

  // Another device: refused.
  peers["gpu"] = "some other GPU";
  t.write("other.json", peers.dump());
  rc = std::system((script + "'" + t.file("other.json") + "'" + outdir + " --no-plot 2>'" +
                    t.file("err") + "' >/dev/null").c_str());
  CHECK(WEXITSTATUS(rc) == 2);
  CHECK_THAT(t.read("err"), Catch::Contains("different devices"));
  // No matplotlib: a clear message, exit 2.
  t.write("shim/matplotlib.py", "raise ImportError('hidden for the test')\n");
  rc = std::system(("PYTHONPATH='" + t.file("shim") + "' " + script + "'" + t.file("peers.json") +
                    "'" + outdir + " 2>'" + t.file("err") + "' >/dev/null").c_str());
  CHECK(WEXITSTATUS(rc) == 2);
  CHECK_THAT(t.read("err"), Catch::Contains("pip install matplotlib"));
}
#endif
