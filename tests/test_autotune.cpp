// Tuned configurations end to end on the CPU backend: RunOptions::config_override and the tuned
// table really change the tile the kernel runs with (observed through
// runtime::last_kernel_config), every candidate computes the same attention, and `flashplus
// autotune` writes and merges a table, keeping other keys. (Loader fallbacks on corrupt tables are
// tested in test_tuning.cpp.)
#include <catch2/catch.hpp>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "bench_test_util.h"
#include "flashplus/api.h"
#include "flashplus/runtime.h"
#include "flashplus/tuning.h"
#include "verify.h"

using namespace flashplus;
using namespace flashplus::benchtest;
using nlohmann::json;

namespace {

// A small fp32 problem: b1, sq = sk = 150 (ragged for every tile), h2, hk1, d40.
struct Problem {
  static constexpr int S = 150, H = 2, HK = 1, D = 40;
  std::vector<float> q, k, v, out, lse, dout, dq, dk, dv;
  Problem() {
    auto fill = [](std::vector<float>& x, size_t n, float seed) {
      x.resize(n);
      for (size_t i = 0; i < n; ++i) x[i] = std::sin(seed + 0.37f * static_cast<float>(i)) + 0.01f;
    };
    fill(q, S * H * D, 1);
    fill(k, S * HK * D, 2);
    fill(v, S * HK * D, 3);
    fill(dout, S * H * D, 4);
    out.assign(q.size(), 0);
    dq.assign(q.size(), 0);
    dk.assign(k.size(), 0);
    dv.assign(v.size(), 0);
    lse.assign(H * S, 0);
  }
  TensorView t4(std::vector<float>& x, int heads) {
    return TensorView::contiguous(x.data(), DType::f32, {1, S, heads, D}, DeviceKind::cpu);
  }
  Status fwd(const RunOptions& ro, bool causal = true) {
    return mha_fwd(t4(q, H), t4(k, HK), t4(v, HK), t4(out, H),
                   TensorView::contiguous(lse.data(), DType::f32, {1, H, S}, DeviceKind::cpu),
                   std::nullopt, 0.f, 0.f, causal, -1, -1, 0.f, false, ro);
  }
  Status bwd(const RunOptions& ro, bool causal = true) {
    return mha_bwd(t4(dout, H), t4(q, H), t4(k, HK), t4(v, HK), t4(out, H),
                   TensorView::contiguous(lse.data(), DType::f32, {1, H, S}, DeviceKind::cpu),
                   t4(dq, H), t4(dk, HK), t4(dv, HK), std::nullopt, 0.f, 0.f, causal, -1, -1, 0.f,
                   false, std::nullopt, ro);
  }
};

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, static_cast<double>(std::abs(a[i] - b[i])));
  return m;
}

std::string table_json(const std::string& fp, const std::string& key, int bm, int bn) {
  return R"({"schema_version": 2, "fingerprint": ")" + fp + R"(", "entries": {")" + key +
         R"(": {"config": {"block_m": )" + std::to_string(bm) + R"(, "block_n": )" +
         std::to_string(bn) + "}}}}";
}

// Points the library at `path` (nullptr: unset) and forgets the loaded tables.
void use_table(const char* path) {
  if (path)
    ::setenv("FLASHPLUS_TUNED_TABLE", path, 1);
  else
    ::unsetenv("FLASHPLUS_TUNED_TABLE");
  reset_active_tables_for_testing();
}

}  // namespace

TEST_CASE("cpu: config_override picks the tile; every candidate gives the same attention",
          "[autotune]") {
  use_table(nullptr);
  Problem p;
  RunOptions ro;
  ro.backend = Backend::cpu;
  REQUIRE(p.fwd(ro).ok());
  REQUIRE(p.bwd(ro).ok());
  KernelConfig used;
  REQUIRE(runtime::last_kernel_config(Backend::cpu, &used));
  const KernelConfig def = used;  // the heuristic default
  const auto out0 = p.out, dq0 = p.dq, dk0 = p.dk, dv0 = p.dv;

  TuneKey key;
  key.arch = "cpu";
  key.dtype = DType::f32;
  key.head_dim_bucket = 64;
  key.mask = MaskKind::causal;
  const auto cands = runtime::tuning_candidates(Backend::cpu, key);
  REQUIRE(cands.size() >= 4);
  for (const KernelConfig& c : cands) {
    INFO(c.to_string());
    ro.config_override = &c;
    REQUIRE(p.fwd(ro).ok());
    REQUIRE(runtime::last_kernel_config(Backend::cpu, &used));
    CHECK(used.block_m == c.block_m);
    CHECK(used.block_n == c.block_n);
    CHECK(max_abs_diff(p.out, out0) < 1e-5);
    REQUIRE(p.bwd(ro).ok());
    REQUIRE(runtime::last_kernel_config(Backend::cpu, &used));
    CHECK(used.block_n == c.block_n);
    CHECK(max_abs_diff(p.dq, dq0) < 1e-4);
    CHECK(max_abs_diff(p.dk, dk0) < 1e-4);
    CHECK(max_abs_diff(p.dv, dv0) < 1e-4);
  }
  // A tile with no compiled instance: no_instance, nothing guessed.
  const KernelConfig bogus{48, 80};
  ro.config_override = &bogus;
  CHECK(p.fwd(ro).code() == StatusCode::no_instance);
  // 0 fields mean the default.
  const KernelConfig zero{};
  ro.config_override = &zero;
  REQUIRE(p.fwd(ro).ok());
  REQUIRE(runtime::last_kernel_config(Backend::cpu, &used));
  CHECK(used == def);
}

TEST_CASE("cpu: a tuned table entry changes the configuration the kernel runs with",
          "[autotune]") {
  Tmp t("tuned");
  const std::string fp = backend_fingerprint(Backend::cpu);
  Problem p;
  RunOptions ro;
  ro.backend = Backend::cpu;
  KernelConfig used;

  use_table(t.write("a.json", table_json(fp, "cpu/fp32/d64/causal/fwd/r12", 32, 128)).c_str());
  REQUIRE(p.fwd(ro).ok());
  REQUIRE(runtime::last_kernel_config(Backend::cpu, &used));
  CHECK(used == KernelConfig{32, 128});
  // Another key (not causal) is not in the table: the default.
  REQUIRE(p.fwd(ro, /*causal=*/false).ok());
  REQUIRE(runtime::last_kernel_config(Backend::cpu, &used));
  CHECK(used != KernelConfig{32, 128});
  // The override beats the table.
  const KernelConfig forced{64, 32};
  ro.config_override = &forced;
  REQUIRE(p.fwd(ro).ok());
  REQUIRE(runtime::last_kernel_config(Backend::cpu, &used));
  CHECK(used == forced);
  ro.config_override = nullptr;

  // An entry the backend has no instance for: warning, then the heuristics' choice (what runs
  // without a table; never a failure).
  use_table(nullptr);
  REQUIRE(p.fwd(ro).ok());
  KernelConfig heuristic;
  REQUIRE(runtime::last_kernel_config(Backend::cpu, &heuristic));
  use_table(t.write("b.json", table_json(fp, "cpu/fp32/d64/causal/fwd/r12", 96, 48)).c_str());
  REQUIRE(p.fwd(ro).ok());
  REQUIRE(runtime::last_kernel_config(Backend::cpu, &used));
  CHECK(used == heuristic);
  // The same for an entry whose tile differs from every instance in one field only.
  use_table(t.write("c.json", table_json(fp, "cpu/fp32/d64/causal/fwd/r12", 32, 48)).c_str());
  REQUIRE(p.fwd(ro).ok());
  REQUIRE(runtime::last_kernel_config(Backend::cpu, &used));
  CHECK(used == heuristic);
  use_table(nullptr);
}

#ifdef FLASHPLUS_CLI_PATH
TEST_CASE("autotune writes a table, merges into an existing one and keeps other keys",
          "[autotune][cli]") {
  Tmp t("autotune");
  const std::string fp = backend_fingerprint(Backend::cpu);
  const std::string cfg = t.write("tiny.json", tiny_model());
  const std::string out = t.file("table.json");
  // An existing table with a key this run does not touch.
  t.write("table.json", table_json(fp, "cpu/bf16/d128/none/fwd/r12", 64, 64));
  const std::string base =
      "autotune --config '" + cfg + "' --backend cpu --min-time 0 --max-time 0.02 ";
  const std::string args = base + "--out '" + out + "' ";
  CliResult r = run_flashplus(args, "", t.file("err"));
  INFO(r.out << t.read("err"));
  REQUIRE(r.code == 0);
  CHECK_THAT(t.read("err"), Catch::Contains("ETA"));
  TunedTable tt;
  REQUIRE(TunedTable::load(out, &tt).ok());
  CHECK(tt.fingerprint == fp);
  CHECK(tt.entries().count("cpu/bf16/d128/none/fwd/r12") == 1);  // kept
  TuneKey k;
  REQUIRE(TuneKey::parse("cpu/fp32/d32/causal/fwd/r12", &k));
  const TunedEntry* e = tt.find(k);
  REQUIRE(e);
  CHECK(e->time_ms > 0);
  CHECK_FALSE(e->runner_up.empty());
  CHECK(e->runner_up_ms >= e->time_ms);
  CHECK(e->workload == "b1 sq64 sk64 h2 hk1 d32");
  const auto cands = runtime::tuning_candidates(Backend::cpu, k);
  CHECK(std::find(cands.begin(), cands.end(), e->config) != cands.end());
  REQUIRE(TuneKey::parse("cpu/fp32/d32/causal/bwd/r12", &k));
  CHECK(tt.find(k));

  // A second run with --mode fwd only rewrites that key and keeps the rest.
  r = run_flashplus(args + "--mode fwd", "", t.file("err"));
  REQUIRE(r.code == 0);
  TunedTable tt2;
  REQUIRE(TunedTable::load(out, &tt2).ok());
  CHECK(tt2.entries().size() == tt.entries().size());

  // A budget of ~0 stops before measuring anything and writes nothing new.
  const std::string out2 = t.file("empty.json");
  r = run_flashplus("autotune --config '" + cfg + "' --backend cpu --out '" + out2 +
                        "' --budget 0.000001",
                    "", t.file("err"));
  CHECK(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("budget spent"));

  // A corrupt or foreign table at --out is never overwritten.
  t.write("bad.json", "{ not json");
  r = run_flashplus(base + "--out '" + t.file("bad.json") + "'", "", t.file("err"));
  CHECK(r.code == 2);
  CHECK_THAT(t.read("err"), Catch::Contains("refusing to overwrite"));
  CHECK(t.read("bad.json") == "{ not json");
  t.write("foreign.json", table_json("sm_90-132sm", "sm_90/bf16/d128/none/fwd/r20", 128, 64));
  r = run_flashplus(base + "--out '" + t.file("foreign.json") + "'", "", t.file("err"));
  CHECK(r.code == 2);
  CHECK_THAT(t.read("err"), Catch::Contains("fingerprint"));
}
#endif

#ifdef FLASHPLUS_CLI_PATH
TEST_CASE("autotune: Ctrl-C keeps the keys already finished", "[autotune][cli]") {
  Tmp t("autotune_int");
  const std::string cfg = t.write("tiny.json", tiny_model());
  const std::string out = t.file("table.json");
  // Two keys (fwd, bwd) of 9 candidates, each timed for 0.15 s: the first key is written after
  // ~1.5 s; SIGINT as soon as it is there lands in the second key.
  const std::string script =
      "'" + std::string(FLASHPLUS_CLI_PATH) + "' autotune --config '" + cfg +
      "' --backend cpu --min-time 0.15 --max-time 0.15 --out '" + out + "' >'" +
      t.file("stdout") + "' 2>/dev/null & pid=$!; "
      "for i in $(seq 1 1000); do [ -f '" + out + "' ] && break; sleep 0.01; done; "
      "kill -INT $pid; wait $pid; echo $? > '" + t.file("rc") + "'";
  const std::string sh = t.write("interrupt.sh", script + "\n");
  REQUIRE(std::system(("bash '" + sh + "'").c_str()) == 0);
  const int rc = std::stoi(t.read("rc"));
  INFO(t.read("stdout"));
  TunedTable tt;
  REQUIRE(TunedTable::load(out, &tt).ok());  // never half-written
  CHECK(tt.entries().size() >= 1);
  if (rc == 130) {
    CHECK(tt.entries().size() == 1);
    CHECK_THAT(t.read("stdout"), Catch::Contains("interrupted"));
  } else {
    WARN("autotune finished before the interrupt arrived (rc " << rc << ")");
  }
}
#endif

#ifdef FLASHPLUS_CLI_PATH
TEST_CASE("autotune: keys another run wrote meanwhile are kept (issue 17)", "[autotune][cli]") {
  Tmp t("autotune_merge");
  const std::string fp = backend_fingerprint(Backend::cpu);
  const std::string cfg = t.write("tiny.json", tiny_model());
  const std::string out = t.file("table.json");
  // The other run's table, put in place while this one is tuning its first key (9 candidates
  // of >= 0.1 s each): this run read no table at its start, and must not drop that key.
  t.write("other.json", table_json(fp, "cpu/bf16/d128/none/fwd/r12", 64, 64));
  const std::string script =
      "'" + std::string(FLASHPLUS_CLI_PATH) + "' autotune --config '" + cfg +
      "' --backend cpu --mode fwd --min-time 0.1 --max-time 0.1 --out '" + out + "' >/dev/null "
      "2>'" + t.file("err") + "' & pid=$!; sleep 0.3; cp '" + t.file("other.json") + "' '" + out +
      "'; wait $pid; echo $? > '" + t.file("rc") + "'";
  const std::string sh = t.write("merge.sh", script + "\n");
  REQUIRE(std::system(("bash '" + sh + "'").c_str()) == 0);
  INFO(t.read("err"));
  REQUIRE(std::stoi(t.read("rc")) == 0);
  TunedTable tt;
  REQUIRE(TunedTable::load(out, &tt).ok());
  CHECK(tt.entries().count("cpu/bf16/d128/none/fwd/r12") == 1);  // the other run's key
  CHECK(tt.entries().count("cpu/fp32/d32/causal/fwd/r12") == 1);  // this run's
}
#endif

TEST_CASE("verify: an override for a backward case reaches the backward, not its forward",
          "[autotune]") {
  // On a GPU a backward tile need not exist as a forward tile; the check that autotune runs
  // must run the set-up forward with the library's own choice. A tile no pass has shows it: the
  // forward succeeds and only the backward answers no_instance.
  cli::Case c;
  c.name = "cases/override_reaches_bwd";
  c.seqlen_q = c.seqlen_k = 33;
  c.head_dim = 16;
  c.bwd = true;
  cli::VerifyOptions vo;
  vo.backend = Backend::cpu;
  vo.seed = 3;
  const KernelConfig bogus{48, 80};
  vo.config_override = &bogus;
  const cli::CaseResult r = cli::run_case(c, vo);
  INFO(r.unsupported);
  CHECK(r.unsupported.rfind("mha_bwd", 0) == 0);
  c.bwd = false;  // a forward-only case: the override goes to the forward
  const cli::CaseResult f = cli::run_case(c, vo);
  CHECK(f.unsupported.rfind("mha_fwd", 0) == 0);
}
