// `flashplus run` on .npy inputs for the newer entry points: variable-length batches
// (--cu-seqlens-q/-k), the KV cache (--k-cache ...) and dropout (--dropout/--seed), each compared
// against the fp64 reference (flashplus_ref), plus the flag-combination and int32-file errors.
// Runs the built binary (FLASHPLUS_CLI_PATH) through popen, as test_cli.cpp does.
#include <sys/wait.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "flashplus_ref/reference.h"
#include "cli_test_util.h"
#include "npy.h"
#include "verify.h"

TEST_CASE("npy: int32 arrays round-trip; float and int readers reject each other", "[cli][npy]") {
  using namespace flashplus::cli;
  const std::vector<int32_t> v = {0, 3, -1, 2147483647};
  const NpyIntArray a = parse_npy_int32(encode_npy_int32(v.data(), {2, 2}), "mem");
  CHECK(a.shape == std::vector<int64_t>{2, 2});
  CHECK(a.data == v);
  CHECK(a.shape_str() == "(2, 2)");
  CHECK_THROWS_WITH(
      parse_npy(encode_npy_int32(v.data(), {4}), "i.npy"),
      Catch::Contains("i.npy: dtype '<i4' (int32) is not supported: expected float32"));
  const float f[2] = {1, 2};
  CHECK_THROWS_WITH(
      parse_npy_int32(encode_npy(f, {2}), "f.npy"),
      Catch::Contains("f.npy: dtype '<f4' (float32) is not supported: expected int32"));
}

#ifdef FLASHPLUS_CLI_PATH

using namespace flashplus;
using namespace flashplus::cli;
namespace fs = std::filesystem;

namespace {

using clitest::Result;
using clitest::run_cli;
using clitest::TempDir;

void check_one_line_error(const Result& r, int code, const std::string& needle) {
  INFO(r.output);
  CHECK(r.code == code);
  CHECK(r.output.rfind("flashplus: error: ", 0) == 0);
  CHECK(std::count(r.output.begin(), r.output.end(), '\n') == 1);
  CHECK_THAT(r.output, Catch::Contains(needle));
}

std::vector<double> to_d(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// Max |a - b| over the entries selected by `use` (all when empty); infinities must match.
double max_diff(const std::vector<double>& a, const std::vector<float>& b,
                const std::vector<bool>& use = {}) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!use.empty() && !use[i]) continue;
    if (std::isinf(a[i]) || std::isinf(b[i])) {
      if (a[i] != static_cast<double>(b[i])) return 1e30;
      continue;
    }
    const double d = std::abs(a[i] - b[i]);
    if (!(d <= m)) m = d;  // NaN propagates as a failure
  }
  return m;
}

std::vector<float> rnd(const std::string& tag, size_t n) {
  return random_normal(11, "cli_kv", tag, n);
}

}  // namespace

TEST_CASE("cli: varlen fwd+bwd with dropout matches the reference", "[cli][varlen]") {
  TempDir d;
  // Three sequences: query lengths 3, 0, 5; key lengths 4, 2, 6; h 4, hk 2, d 16.
  const std::vector<int32_t> cuq = {0, 3, 3, 8}, cuk = {0, 4, 6, 12};
  const int TQ = 8, TK = 12, H = 4, HK = 2, D = 16;
  const auto q = rnd("q", TQ * H * D), k = rnd("k", TK * HK * D), v = rnd("v", TK * HK * D),
             dout = rnd("do", TQ * H * D);
  d.write_npy("q.npy", q, {TQ, H, D});
  d.write_npy("k.npy", k, {TK, HK, D});
  d.write_npy("v.npy", v, {TK, HK, D});
  d.write_npy("do.npy", dout, {TQ, H, D});
  d.write_npy_i32("cuq.npy", cuq, {4});
  d.write_npy_i32("cuk.npy", cuk, {4});
  const Result r = run_cli(
      "run --q q.npy --k k.npy --v v.npy --cu-seqlens-q cuq.npy --cu-seqlens-k cuk.npy "
      "--out o.npy --lse l.npy --causal --dropout 0.25 --seed 7 --dropout-offset 3 "
      "--dout do.npy --dq dq.npy --dk dk.npy --dv dv.npy",
      d.dir());
  INFO(r.output);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.output, Catch::Contains("varlen fwd+bwd"));
  ref::VarlenProblem p;
  p.cu_seqlens_q = {cuq.begin(), cuq.end()};
  p.cu_seqlens_k = {cuk.begin(), cuk.end()};
  p.total_q = TQ;
  p.total_k = TK;
  p.max_seqlen_q = 5;
  p.max_seqlen_k = 6;
  p.nheads = H;
  p.nheads_k = HK;
  p.head_dim = D;
  p.causal = true;
  p.p_dropout = 0.25f;  // the CLI passes a float
  p.dropout_seed = 7;
  p.dropout_offset = 3;
  const auto f = ref::varlen_forward(p, to_d(q), to_d(k), to_d(v));
  const NpyArray o = read_npy(d.file("o.npy")), l = read_npy(d.file("l.npy"));
  CHECK(o.shape == std::vector<int64_t>{TQ, H, D});
  CHECK(l.shape == std::vector<int64_t>{H, TQ});
  CHECK(max_diff(f.out, o.data) < 1e-4);
  CHECK(max_diff(f.lse, l.data) < 1e-4);
  const auto g = ref::varlen_backward(p, to_d(q), to_d(k), to_d(v), to_d(dout));
  CHECK(max_diff(g.dq, read_npy(d.file("dq.npy")).data) < 1e-4);
  CHECK(max_diff(g.dk, read_npy(d.file("dk.npy")).data) < 1e-4);
  CHECK(max_diff(g.dv, read_npy(d.file("dv.npy")).data) < 1e-4);
  // Dropout really happened: without it the output differs.
  p.p_dropout = 0;
  CHECK(max_diff(ref::varlen_forward(p, to_d(q), to_d(k), to_d(v)).out, o.data) > 1e-2);

  // Forward with seqused_k, explicit max_seqlen and a split key sequence.
  d.write_npy_i32("used.npy", {2, 1, 5}, {3});
  const Result u = run_cli(
      "run --q q.npy --k k.npy --v v.npy --cu-seqlens-q cuq.npy --cu-seqlens-k cuk.npy "
      "--seqused-k used.npy --max-seqlen-q 7 --max-seqlen-k 9 --num-splits 2 --window 2 0 "
      "--out ou.npy --lse lu.npy",
      d.dir());
  INFO(u.output);
  REQUIRE(u.code == 0);
  p.seqused_k = {2, 1, 5};
  p.max_seqlen_q = 7;
  p.max_seqlen_k = 9;
  p.causal = false;
  p.window_left = 2;
  p.window_right = 0;
  const auto fu = ref::varlen_forward(p, to_d(q), to_d(k), to_d(v));
  CHECK(max_diff(fu.out, read_npy(d.file("ou.npy")).data) < 1e-4);
  CHECK(max_diff(fu.lse, read_npy(d.file("lu.npy")).data) < 1e-4);
}

TEST_CASE("cli: dense dropout fwd+bwd matches the reference", "[cli][dropout]") {
  TempDir d;
  const int B = 2, SQ = 5, SK = 7, H = 2, D = 16;
  const auto q = rnd("dq", B * SQ * H * D), k = rnd("dk", B * SK * H * D),
             v = rnd("dv", B * SK * H * D), dout = rnd("ddo", B * SQ * H * D);
  d.write_npy("q.npy", q, {B, SQ, H, D});
  d.write_npy("k.npy", k, {B, SK, H, D});
  d.write_npy("v.npy", v, {B, SK, H, D});
  d.write_npy("do.npy", dout, {B, SQ, H, D});
  const Result r = run_cli(
      "run --q q.npy --k k.npy --v v.npy --out o.npy --lse l.npy --dropout 0.3 --seed 123 "
      "--dout do.npy --dq dq.npy --dk dk.npy --dv dv.npy --s-dmask m.npy",
      d.dir());
  INFO(r.output);
  REQUIRE(r.code == 0);
  ref::Problem p;
  p.batch = B;
  p.seqlen_q = SQ;
  p.seqlen_k = SK;
  p.nheads = p.nheads_k = H;
  p.head_dim = D;
  p.p_dropout = 0.3f;
  p.dropout_seed = 123;
  p.want_probs = true;
  const auto f = ref::forward(p, to_d(q), to_d(k), to_d(v));
  CHECK(max_diff(f.out, read_npy(d.file("o.npy")).data) < 1e-4);
  CHECK(max_diff(f.lse, read_npy(d.file("l.npy")).data) < 1e-4);
  // S_dmask: (B, H, 128, 128), the reference's signed probabilities in the top-left corner.
  const auto m = read_npy(d.file("m.npy"));
  REQUIRE(m.shape == std::vector<int64_t>{B, H, 128, 128});
  std::vector<double> want(m.data.size(), 0.0);
  int dropped = 0;
  for (int bh = 0; bh < B * H; ++bh)
    for (int i = 0; i < SQ; ++i)
      for (int j = 0; j < SK; ++j) {
        want[(size_t(bh) * 128 + i) * 128 + j] = f.probs[(size_t(bh) * SQ + i) * SK + j];
        dropped += f.probs[(size_t(bh) * SQ + i) * SK + j] < 0;
      }
  CHECK(dropped > 0);
  CHECK(max_diff(want, m.data) < 1e-5);
  CHECK(run_cli("run --q q.npy --k k.npy --v v.npy --out o.npy --s-dmask m.npy", d.dir()).code == 2);
  p.want_probs = false;
  const auto g = ref::backward(p, to_d(q), to_d(k), to_d(v), to_d(dout));
  CHECK(max_diff(g.dq, read_npy(d.file("dq.npy")).data) < 1e-4);
  CHECK(max_diff(g.dk, read_npy(d.file("dk.npy")).data) < 1e-4);
  CHECK(max_diff(g.dv, read_npy(d.file("dv.npy")).data) < 1e-4);
}

TEST_CASE("cli: kv cache (paged, k_new, rotary, splits) matches the reference", "[cli][kvcache]") {
  TempDir d;
  const int B = 2, SQ = 2, H = 4, HK = 2, D = 16, PAGE = 4, MAXB = 3, NB = 7, NEW = 2, RD = 8;
  const int CAP = PAGE * MAXB;
  // Shuffled pages, -1 past the pages a sequence uses (never read).
  const std::vector<int32_t> table = {5, 2, -1, 0, 6, 3};
  const std::vector<int32_t> seqlens = {5, 8};  // ends 7 and 10: 2 and 3 pages
  const auto q = rnd("kq", B * SQ * H * D), kc = rnd("kc", NB * PAGE * HK * D),
             vc = rnd("vc", NB * PAGE * HK * D), kn = rnd("kn", B * NEW * HK * D),
             vn = rnd("vn", B * NEW * HK * D);
  std::vector<float> cos(CAP * RD / 2), sin(CAP * RD / 2);
  for (int pos = 0; pos < CAP; ++pos)
    for (int j = 0; j < RD / 2; ++j) {
      const double th = pos * std::pow(10000.0, -2.0 * j / RD);
      cos[pos * RD / 2 + j] = static_cast<float>(std::cos(th));
      sin[pos * RD / 2 + j] = static_cast<float>(std::sin(th));
    }
  d.write_npy("q.npy", q, {B, SQ, H, D});
  d.write_npy("kc.npy", kc, {NB, PAGE, HK, D});
  d.write_npy("vc.npy", vc, {NB, PAGE, HK, D});
  d.write_npy("kn.npy", kn, {B, NEW, HK, D});
  d.write_npy("vn.npy", vn, {B, NEW, HK, D});
  d.write_npy("cos.npy", cos, {CAP, RD / 2});
  d.write_npy("sin.npy", sin, {CAP, RD / 2});
  d.write_npy_i32("table.npy", table, {B, MAXB});
  d.write_npy_i32("seqlens.npy", seqlens, {B});
  for (const bool interleaved : {false, true}) {
    DYNAMIC_SECTION("interleaved " << interleaved) {
      const Result r = run_cli(
          std::string("run --q q.npy --k-cache kc.npy --v-cache vc.npy --block-table table.npy "
                      "--cache-seqlens seqlens.npy --k-new kn.npy --v-new vn.npy "
                      "--rotary-cos cos.npy --rotary-sin sin.npy --causal --num-splits 3 "
                      "--out o.npy --lse l.npy --k-cache-out kco.npy --v-cache-out vco.npy") +
              (interleaved ? " --rotary-interleaved" : ""),
          d.dir());
      INFO(r.output);
      REQUIRE(r.code == 0);
      CHECK_THAT(r.output, Catch::Contains("kvcache fwd") && Catch::Contains("paged"));
      ref::KvcacheProblem p;
      p.batch = B;
      p.seqlen_q = SQ;
      p.nheads = H;
      p.nheads_k = HK;
      p.head_dim = D;
      p.num_blocks = NB;
      p.page_block_size = PAGE;
      p.max_blocks_per_seq = MAXB;
      p.block_table = {table.begin(), table.end()};
      p.cache_seqlens = {seqlens.begin(), seqlens.end()};
      p.seqlen_new = NEW;
      p.rotary_cos = to_d(cos);
      p.rotary_sin = to_d(sin);
      p.rotary_dim = RD;
      p.rotary_interleaved = interleaved;
      p.causal = true;
      const auto ref = ref::kvcache_forward(p, to_d(q), to_d(kc), to_d(vc), to_d(kn), to_d(vn));
      const NpyArray o = read_npy(d.file("o.npy")), l = read_npy(d.file("l.npy"));
      CHECK(o.shape == std::vector<int64_t>{B, SQ, H, D});
      CHECK(l.shape == std::vector<int64_t>{B, H, SQ});
      CHECK(max_diff(ref.fwd.out, o.data) < 1e-4);
      CHECK(max_diff(ref.fwd.lse, l.data) < 1e-4);
      const NpyArray kco = read_npy(d.file("kco.npy")), vco = read_npy(d.file("vco.npy"));
      CHECK(kco.shape == std::vector<int64_t>{NB, PAGE, HK, D});
      CHECK(max_diff(ref.k_cache, kco.data) < 1e-5);
      CHECK(max_diff(ref.v_cache, vco.data) == 0);
      CHECK(max_diff(to_d(kc), kco.data) > 1e-3);  // the append happened
    }
  }
}

TEST_CASE("cli: kv cache, contiguous with cache_batch_idx and leftpad", "[cli][kvcache]") {
  TempDir d;
  const int B = 2, SQ = 1, H = 2, HK = 1, D = 16, BC = 3, CAP = 9;
  const auto q = rnd("cq", B * SQ * H * D), kc = rnd("ckc", BC * CAP * HK * D),
             vc = rnd("cvc", BC * CAP * HK * D);
  d.write_npy("q.npy", q, {B, SQ, H, D});
  d.write_npy("kc.npy", kc, {BC, CAP, HK, D});
  d.write_npy("vc.npy", vc, {BC, CAP, HK, D});
  d.write_npy_i32("seqlens.npy", {6, 9}, {B});
  d.write_npy_i32("idx.npy", {2, 0}, {B});
  d.write_npy_i32("lp.npy", {1, 3}, {B});
  const Result r = run_cli(
      "run --q q.npy --k-cache kc.npy --v-cache vc.npy --cache-seqlens seqlens.npy "
      "--cache-batch-idx idx.npy --cache-leftpad lp.npy --out o.npy --lse l.npy --num-splits 1",
      d.dir());
  INFO(r.output);
  REQUIRE(r.code == 0);
  ref::KvcacheProblem p;
  p.batch = B;
  p.seqlen_q = SQ;
  p.nheads = H;
  p.nheads_k = HK;
  p.head_dim = D;
  p.batch_cache = BC;
  p.seqlen_cache = CAP;
  p.cache_seqlens = {6, 9};
  p.cache_batch_idx = {2, 0};
  p.cache_leftpad = {1, 3};
  const auto ref = ref::kvcache_forward(p, to_d(q), to_d(kc), to_d(vc), {}, {});
  CHECK(max_diff(ref.fwd.out, read_npy(d.file("o.npy")).data) < 1e-4);
  CHECK(max_diff(ref.fwd.lse, read_npy(d.file("l.npy")).data) < 1e-4);
}

TEST_CASE("cli: varlen/kvcache/dropout flag errors are one line, exit 2, no output",
          "[cli][kvcache][varlen]") {
  TempDir d;
  d.write_npy("q.npy", rnd("eq", 8 * 2 * 16), {8, 2, 16});
  d.write_npy("k.npy", rnd("ek", 8 * 2 * 16), {8, 2, 16});
  d.write_npy("q4.npy", rnd("eq4", 2 * 1 * 2 * 16), {2, 1, 2, 16});
  d.write_npy("kc.npy", rnd("ekc", 2 * 4 * 2 * 16), {2, 4, 2, 16});
  d.write_npy_i32("cu.npy", {0, 3, 8}, {3});
  d.write_npy_i32("cubad.npy", {1, 3, 8}, {3});
  d.write_npy_i32("cudec.npy", {0, 5, 3}, {3});
  d.write_npy_i32("culong.npy", {0, 3, 9}, {3});
  d.write_npy("cuf.npy", {0, 3, 8}, {3});
  d.write_npy_i32("sl.npy", {2, 3}, {2});
  d.write_npy_i32("slbig.npy", {2, 5}, {2});
  d.write_npy_i32("tab.npy", {0, 7}, {2, 1});
  {  // int64 cu_seqlens: rejected with the file's name
    std::string i64 = encode_npy_int32(std::vector<int32_t>{0, 0, 3, 0, 8, 0}.data(), {6});
    i64.replace(i64.find("<i4"), 3, "<i8");
    i64.replace(i64.find("(6,)"), 4, "(3,)");
    d.write("cu64.npy", i64);
  }
  const auto before = d.listing();
  auto bad = [&](const std::string& args, const std::string& needle) {
    check_one_line_error(run_cli("run " + args, d.dir()), 2, needle);
    CHECK(d.listing() == before);
  };
  const std::string vl = "--q q.npy --k k.npy --v k.npy --out o.npy ";
  const std::string kv = "--q q4.npy --k-cache kc.npy --v-cache kc.npy --out o.npy ";
  bad(vl + "--cu-seqlens-q cu.npy", "--cu-seqlens-q and --cu-seqlens-k must be given together");
  bad(vl + "--cu-seqlens-k cu.npy", "--cu-seqlens-q and --cu-seqlens-k must be given together");
  bad(vl + "--cu-seqlens-q cuf.npy --cu-seqlens-k cu.npy", "cuf.npy: dtype '<f4' (float32)");
  bad(vl + "--cu-seqlens-q cu64.npy --cu-seqlens-k cu.npy", "cu64.npy: dtype '<i8' (int64)");
  bad(vl + "--cu-seqlens-q cubad.npy --cu-seqlens-k cu.npy", "must start at 0");
  bad(vl + "--cu-seqlens-q cudec.npy --cu-seqlens-k cu.npy", "non-decreasing");
  bad(vl + "--cu-seqlens-q culong.npy --cu-seqlens-k cu.npy", "past the 8 query tokens");
  bad(vl + "--cu-seqlens-q cu.npy --cu-seqlens-k cu.npy --max-seqlen-q 2", "below the longest");
  bad(vl + "--max-seqlen-q 4", "need --cu-seqlens-q");
  bad(vl + "--seqused-k sl.npy", "--seqused-k needs --cu-seqlens-q");
  bad(vl + "--cu-seqlens-q cu.npy --cu-seqlens-k cu.npy --seqused-k sl.npy --dout q.npy "
           "--dq a.npy --dk b.npy --dv c.npy",
      "forward only");
  bad(vl + "--num-splits 2", "--num-splits needs --k-cache");
  bad(vl + "--block-table tab.npy", "--block-table needs --k-cache");
  bad(vl + "--k-cache-out x.npy", "--k-cache-out needs --k-cache");
  bad(vl + "--seed 3", "--seed and --dropout-offset need --dropout");
  bad(vl + "--dropout 1", "--dropout must be in [0, 1)");
  bad(kv + "--dout q4.npy --dq a.npy --dk b.npy --dv c.npy", "--k-cache is forward only");
  bad("--q q4.npy --k-cache kc.npy --out o.npy", "--k-cache needs --v-cache");
  bad(kv + "--k k.npy", "--k/--v cannot be combined with --k-cache");
  bad(kv + "--cu-seqlens-q cu.npy --cu-seqlens-k cu.npy", "--k-cache cannot be combined");
  bad(kv + "--dropout 0.1", "--dropout cannot be combined with --k-cache");
  bad(kv + "--k-new q4.npy", "--k-new and --v-new must be given together");
  bad(kv + "--k-new q4.npy --v-new q4.npy", "--k-new needs --cache-seqlens");
  bad(kv + "--rotary-cos k.npy", "--rotary-cos and --rotary-sin must be given together");
  bad(kv + "--rotary-cos k.npy --rotary-sin k.npy", "need --k-new");
  bad(kv + "--block-table tab.npy --cache-leftpad sl.npy", "--block-table cannot be combined");
  bad(kv + "--cache-seqlens slbig.npy", "does not fit the cache capacity 4");
  bad(kv + "--block-table tab.npy", "block_table[1, 0] = 7 is outside [0, 2)");
  bad(kv + "--cache-seqlens cuf.npy",
      "cuf.npy: dtype '<f4' (float32) is not supported: expected int32");
  bad(kv + "--cache-seqlens cu.npy", "--cache-seqlens must be int32 of shape (2,)");
  bad(kv + "--k-cache-out o.npy", "given as two different outputs");
}

#endif  // FLASHPLUS_CLI_PATH
