// The `flashplus` executable: exit codes, one-line errors, no partial outputs, and results that
// match the reference. Runs the built binary (FLASHPLUS_CLI_PATH) through popen.
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "flashplus/numerics.h"
#include "flashplus_ref/reference.h"
#include "cli_test_util.h"
#include "npy.h"
#include "verify.h"

#ifdef FLASHPLUS_CLI_PATH

using namespace flashplus;
using namespace flashplus::cli;
namespace fs = std::filesystem;

namespace {

const std::string kSource = FLASHPLUS_SOURCE_DIR;

using clitest::Result;
using clitest::run_cli;
using clitest::TempDir;

// One line on stderr: "flashplus: error: ..." and nothing else.
void check_one_line_error(const Result& r, int code, const std::string& needle) {
  INFO(r.output);
  CHECK(r.code == code);
  CHECK(r.output.rfind("flashplus: error: ", 0) == 0);
  CHECK(std::count(r.output.begin(), r.output.end(), '\n') == 1);
  CHECK_THAT(r.output, Catch::Contains(needle));
}

// Inputs for b=2, sq=5, sk=7, h=4, hk=2, d=16.
struct Inputs {
  std::vector<float> q = random_normal(3, "t", "q", 2 * 5 * 4 * 16),
                     k = random_normal(3, "t", "k", 2 * 7 * 2 * 16),
                     v = random_normal(3, "t", "v", 2 * 7 * 2 * 16),
                     dout = random_normal(3, "t", "do", 2 * 5 * 4 * 16);
  void save(const TempDir& d) const {
    d.write_npy("q.npy", q, {2, 5, 4, 16});
    d.write_npy("k.npy", k, {2, 7, 2, 16});
    d.write_npy("v.npy", v, {2, 7, 2, 16});
    d.write_npy("do.npy", dout, {2, 5, 4, 16});
  }
  ref::Problem problem() const {
    ref::Problem p;
    p.batch = 2;
    p.seqlen_q = 5;
    p.seqlen_k = 7;
    p.nheads = 4;
    p.nheads_k = 2;
    p.head_dim = 16;
    return p;
  }
};

double max_diff(const std::vector<double>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}
std::vector<double> to_d(const std::vector<float>& v) { return {v.begin(), v.end()}; }

const std::string kIO = "--q q.npy --k k.npy --v v.npy ";

}  // namespace

TEST_CASE("cli: help, version and info", "[cli]") {
  const Result h = run_cli("--help");
  CHECK(h.code == 0);
  CHECK_THAT(h.output,
             Catch::Contains("Exit codes") && Catch::Contains("run") && Catch::Contains("verify"));
  for (const char* sub : {"run", "verify", "info"}) {
    const Result r = run_cli(std::string(sub) + " --help");
    INFO(sub);
    CHECK(r.code == 0);
    CHECK_THAT(r.output, Catch::Contains("Examples:"));
  }
  CHECK_THAT(run_cli("run --help").output,
             Catch::Contains("--window") && Catch::Contains("--dout") &&
                 Catch::Contains("--max-seqlen") && Catch::Contains("--deterministic"));
  {
    const std::string rh = run_cli("run --help").output;
    for (const char* flag : {"--cu-seqlens-q",  "--cu-seqlens-k",
                             "--max-seqlen-q",  "--max-seqlen-k",
                             "--seqused-k",     "--k-cache",
                             "--v-cache",       "--cache-seqlens",
                             "--block-table",   "--k-new",
                             "--v-new",         "--rotary-cos",
                             "--rotary-sin",    "--rotary-interleaved",
                             "--num-splits",    "--cache-batch-idx",
                             "--cache-leftpad", "--k-cache-out",
                             "--v-cache-out",   "--dropout",
                             "--seed",          "--dropout-offset"}) {
      INFO(flag);
      CHECK_THAT(rh, Catch::Contains(flag));
    }
  }
  const Result i = run_cli("info");
  CHECK(i.code == 0);
  CHECK_THAT(i.output,
             Catch::Contains("backends compiled: cpu") && Catch::Contains("flashplus 0."));
  CHECK(run_cli("--version").code == 0);
}

TEST_CASE("cli: usage errors exit 2 with one line", "[cli]") {
  check_one_line_error(run_cli("run --bogus"), 2, "--bogus");
  check_one_line_error(run_cli("frobnicate"), 2, "");
  check_one_line_error(run_cli("run --q a.npy --window 1"), 2, "--window");
  check_one_line_error(run_cli("run --q a.npy --softcap -1"), 2, "--softcap");
  check_one_line_error(run_cli("run --q a.npy --k a.npy --v a.npy --out o.npy --dtype fp8"), 2,
                       "--dtype");
  check_one_line_error(run_cli("run"), 2, "--config");
  check_one_line_error(run_cli("verify --suite /nonexistent.json"), 2, "nonexistent");
}

TEST_CASE("cli: run on .npy inputs matches the reference (fwd, lse, bwd)", "[cli]") {
  TempDir d;
  Inputs in;
  in.save(d);
  const Result r = run_cli(
      "run " + kIO +
          "--out o.npy --lse l.npy --causal --dout do.npy --dq dq.npy --dk dk.npy --dv dv.npy",
      d.path.string());
  INFO(r.output);
  REQUIRE(r.code == 0);
  CHECK(d.listing() == std::vector<std::string>{"dk.npy", "do.npy", "dq.npy", "dv.npy", "k.npy",
                                                "l.npy", "o.npy", "q.npy", "v.npy"});
  ref::Problem p = in.problem();
  p.causal = true;
  const auto f = ref::forward(p, to_d(in.q), to_d(in.k), to_d(in.v));
  const NpyArray o = read_npy(d.file("o.npy")), l = read_npy(d.file("l.npy"));
  CHECK(o.shape == std::vector<int64_t>{2, 5, 4, 16});
  CHECK(l.shape == std::vector<int64_t>{2, 4, 5});
  CHECK(max_diff(f.out, o.data) < 1e-4);
  CHECK(max_diff(f.lse, l.data) < 1e-4);
  const auto g = ref::backward(p, to_d(in.q), to_d(in.k), to_d(in.v), to_d(in.dout));
  CHECK(max_diff(g.dq, read_npy(d.file("dq.npy")).data) < 1e-4);
  CHECK(max_diff(g.dk, read_npy(d.file("dk.npy")).data) < 1e-4);
  CHECK(read_npy(d.file("dv.npy")).shape == std::vector<int64_t>{2, 7, 2, 16});
  CHECK(max_diff(g.dv, read_npy(d.file("dv.npy")).data) < 1e-4);

  // bf16 storage: inputs are rounded, the result is close to the reference on rounded inputs.
  const Result b =
      run_cli("run " + kIO + "--out ob.npy --dtype bf16 --window 2 1 --softcap 3 --scale 0.3",
              d.path.string());
  REQUIRE(b.code == 0);
  ref::Problem pb = in.problem();
  pb.window_left = 2;
  pb.window_right = 1;
  pb.softcap = 3;
  pb.softmax_scale = 0.3f;
  auto round_all = [](const std::vector<float>& v) {
    std::vector<double> r(v.size());
    for (size_t i = 0; i < v.size(); ++i) r[i] = round_to(DType::bf16, v[i]);
    return r;
  };
  const auto fb = ref::forward(pb, round_all(in.q), round_all(in.k), round_all(in.v));
  CHECK(max_diff(fb.out, read_npy(d.file("ob.npy")).data) < 3e-2);

  // ALiBi slopes of shape (b, h).
  d.write_npy("al.npy", {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f}, {2, 4});
  CHECK(run_cli("run " + kIO + "--out oa.npy --alibi al.npy", d.path.string()).code == 0);
  ref::Problem pa = in.problem();
  pa.alibi = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8};
  for (auto& s : pa.alibi) s = static_cast<float>(s);
  const auto fa = ref::forward(pa, to_d(in.q), to_d(in.k), to_d(in.v));
  CHECK(max_diff(fa.out, read_npy(d.file("oa.npy")).data) < 1e-4);
}

TEST_CASE("cli: bad inputs give one line, exit 2, and leave no output behind", "[cli]") {
  TempDir d;
  Inputs in;
  in.save(d);
  // A header announcing 48 bytes and ending after 25 (the literal without its NUL: ASan found
  // the old length of 37 reading past it).
  static const char kCorrupt[] = "\x93NUMPY\x01\x00\x30\x00{'descr': '<f4', 'fortran";
  d.write("corrupt.npy", std::string(kCorrupt, sizeof kCorrupt - 1));
  {  // float16 .npy (descr '<f2'): rejected, not reinterpreted
    std::string f16 = encode_npy(in.q.data(), {2, 5, 4, 16});
    f16.replace(f16.find("<f4"), 3, "<f2");
    f16.resize(f16.size() - in.q.size() * 2);
    d.write("q16.npy", f16);
  }
  d.write_npy("q3.npy", in.q, {10, 4, 16});
  d.write_npy("k3.npy", std::vector<float>(2 * 7 * 3 * 16, 1.f), {2, 7, 3, 16});
  const auto before = d.listing();
  auto bad = [&](const std::string& args, const std::string& needle) {
    check_one_line_error(run_cli("run " + args, d.path.string()), 2, needle);
    CHECK(d.listing() == before);  // no output, no temp file
  };
  bad("--q missing.npy --k k.npy --v v.npy --out o.npy", "missing.npy: no such file");
  bad("--q corrupt.npy --k k.npy --v v.npy --out o.npy", "corrupt.npy: truncated .npy header");
  bad("--q q16.npy --k k.npy --v v.npy --out o.npy", "float16");
  bad("--q q3.npy --k k.npy --v v.npy --out o.npy", "4 dimensions");
  bad("--q q.npy --k k.npy --v q.npy --out o.npy", "must match");
  // The API rejects the heads (4 % 3): the library's message, exit 2.
  bad("--q q.npy --k k3.npy --v k3.npy --out o.npy", "invalid_args");
  // dout of the wrong shape: the forward alone would succeed, yet nothing is written.
  bad(kIO + "--out o.npy --dout k.npy --dq a.npy --dk b.npy --dv c.npy",
      "dout must have the shape of q");
  bad(kIO + "--out o.npy --dout do.npy --dq a.npy", "--dk");
  bad(kIO + "--out nodir/o.npy", "does not exist");
  bad(kIO + "--out o.npy --alibi q.npy", "ALiBi slopes");
  bad(kIO + "--out o.npy --lse o.npy", "given as two different outputs");
}

TEST_CASE("cli: run --config prints a table; config errors name file and key", "[cli]") {
  const Result r = run_cli("run --config '" + kSource +
                           "/configs/models/llama7b.json' --backend cpu --max-seqlen 512 --batch 1 "
                           "--mode fwd --dtype bf16");
  INFO(r.output);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.output,
             Catch::Contains("TFLOP/s") && Catch::Contains("llama7b") && Catch::Contains("causal"));
  // Decode (KV cache, paged) and varlen workloads: llama3-8b's are listed; small ones run.
  const Result ll = run_cli("run --config '" + kSource + "/configs/models/llama3-8b.json' --list");
  CHECK(ll.code == 0);
  CHECK_THAT(ll.output, Catch::Contains("llama3-8b/decode") && Catch::Contains("131072") &&
                            Catch::Contains("decode page256 splits0") &&
                            Catch::Contains("llama3-8b/varlen"));
  {
    TempDir w;
    w.write("m.json", R"({"schema_version": 2, "name": "small", "source": "test", "nheads": 8,
        "nheads_k": 2, "head_dim": 64, "mask": {"causal": true}, "dtype": "fp16",
        "batch_sizes": [1], "seqlens": [64], "modes": ["fwd"],
        "workloads": [
          {"name": "decode", "workload": "decode",
           "decode": {"shapes": [[2, 300]], "page_sizes": [0, 16], "num_splits": [0, 3]}},
          {"name": "varlen", "workload": "varlen", "modes": ["fwd", "bwd"],
           "varlen": {"batches": [[100, 37, 5]]}}]})");
    const Result dv = run_cli("run --config m.json --backend cpu", w.path.string());
    INFO(dv.output);
    REQUIRE(dv.code == 0);
    CHECK_THAT(dv.output, Catch::Contains("small/decode") &&
                              Catch::Contains("decode page16 splits3") &&
                              Catch::Contains("KV read") && Catch::Contains("small/varlen") &&
                              Catch::Contains("varlen 3 seqs 142 tok"));
    const Result bj =
        run_cli("bench --config m.json --backend cpu --max-time 0.05 --min-time 0.01 --json b.json",
                w.path.string());
    INFO(bj.output);
    REQUIRE(bj.code == 0);
    const auto rep = nlohmann::json::parse(std::ifstream(w.file("b.json")));
    int decode = 0, varlen = 0;
    for (const auto& c : rep["cases"]) {
      CHECK(c["status"] == "ok");
      if (c["workload"]["kind"] == "decode") {
        ++decode;
        CHECK(c["seqlen_k"] == 301);
        CHECK(c["bytes"].get<double>() == Approx(2.0 * 2 * 301 * 2 * 64 * 2));
      }
      if (c["workload"]["kind"] == "varlen") ++varlen;
    }
    CHECK(decode == 4);
    CHECK(varlen == 2);
  }
  const Result l = run_cli("run --config '" + kSource + "/configs/models/mistral-7b.json' --list");
  CHECK(l.code == 0);
  CHECK_THAT(l.output, Catch::Contains("window(4096,0)"));

  TempDir d;
  d.write("bad.json",
          R"({"schema_version": 1, "name": "x", "nheads": 4, "head_dim": 64, "dtype": "bf16",
                          "batch_sizes": [1], "seqlens": [16], "modes": ["fwd"], "causal": true})");
  check_one_line_error(run_cli("run --config bad.json", d.path.string()), 2,
                       "bad.json: key 'causal': unknown key");
  check_one_line_error(
      run_cli("run --config '" + kSource + "/configs/models/gpt2.json' --max-seqlen 1"), 2,
      "no workloads");
}

TEST_CASE("cli: verify runs a suite, writes a JSON report, lists and filters", "[cli]") {
  TempDir d;
  const std::string smoke = "'" + kSource + "/configs/suites/smoke.json'";
  const Result r =
      run_cli("verify --suite " + smoke + " --backend cpu --json " + d.file("rep.json"));
  INFO(r.output);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.output, Catch::Contains("PASS") && Catch::Contains("seed=20261125") &&
                           Catch::Contains(" dq ") && Catch::Contains(" lse ") &&
                           Catch::Contains("tol="));
  const auto rep = nlohmann::json::parse(std::ifstream(d.file("rep.json")));
  CHECK(rep["summary"]["passed"] == 9);
  CHECK(rep["summary"]["failed"] == 0);
  CHECK(rep["meta"]["backend"] == "cpu");
  CHECK(rep["cases"].size() == 9);

  const Result l = run_cli("verify --suite " + smoke + " --list");
  CHECK(l.code == 0);
  CHECK_THAT(l.output, Catch::Contains("9 case(s) to run"));
  // The default suite (ci.json) is found without --suite.
  const Result def = run_cli("verify --list", d.path.string());
  CHECK(def.code == 0);
  CHECK_THAT(def.output, Catch::Contains("ci.json"));

  check_one_line_error(run_cli("verify --suite " + smoke + " --filter no_such_case"), 2,
                       "no case matches");
  // --seed and --filter replay one case.
  const Result one = run_cli("verify --suite " + smoke + " --seed 5 --filter _kv_in_cache");
  CHECK(one.code == 0);
  CHECK_THAT(one.output, Catch::Contains("seed=5") && Catch::Contains("1 passed"));

  // A known failure that passes is reported as XPASS and does not fail the run.
  d.write("kf.json",
          R"({"schema_version": 1, "name": "kf", "cases": [{"seqlen_q": 8, "head_dim": 16}],
                         "known_failures": [{"backend": "*", "match": "sq8", "reason": "issue 99"}]})");
  const Result x = run_cli("verify --suite kf.json --backend cpu", d.path.string());
  CHECK(x.code == 0);
  CHECK_THAT(x.output, Catch::Contains("XPASS") && Catch::Contains("issue 99"));

  d.write("badsuite.json", R"({"schema_version": 1, "name": "b", "cases": [{"head_dim": 512}]})");
  check_one_line_error(run_cli("verify --suite badsuite.json", d.path.string()), 2,
                       "badsuite.json: key 'cases[0].head_dim'");
}

#endif  // FLASHPLUS_CLI_PATH
