// cli: model configs, verify suites, the FLOP convention, guard bands and input generation.
#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include <fmt/format.h>

#include "bench.h"
#include "common.h"
#include "config.h"
#include "flops.h"
#include "suite.h"
#include "verify.h"

using namespace flashplus;
using namespace flashplus::cli;
namespace fs = std::filesystem;

namespace {

const std::string kSource = FLASHPLUS_SOURCE_DIR;

struct TempJson {
  std::string path;
  explicit TempJson(const std::string& text) {
    std::random_device rd;
    path =
        (fs::temp_directory_path() / ("flashplus_cfg_" + std::to_string(rd()) + ".json")).string();
    std::ofstream(path) << text;
  }
  ~TempJson() { std::remove(path.c_str()); }
};

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    CHECK(e.exit_code() == kExitUsage);
    return e.what();
  }
  FAIL("no error was raised");
  return "";
}

// A valid model config with one line replaced/added, for error tests.
std::string model_json(const std::string& extra = "", const std::string& nheads_k = "8") {
  return R"({"schema_version": 1, "name": "m", "nheads": 32, "nheads_k": )" + nheads_k +
         R"(, "head_dim": 128, "mask": {"causal": true}, "dtype": "bf16", "batch_sizes": [1, 2],
            "seqlens": [512, 1024, 4096], "modes": ["fwd", "bwd"])" +
         extra + "}";
}

}  // namespace

TEST_CASE("configs: every model config loads, with the numbers of the real model", "[config]") {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(kSource + "/configs/models")) {
    if (e.path().extension() != ".json") continue;
    const ModelConfig m = load_model_config(e.path().string());
    names.insert(m.name);
    CHECK(m.name == e.path().stem().string());  // file name and config name agree
    CHECK_FALSE(m.source.empty());
  }
  for (const char* n : {"llama7b", "llama3-8b", "mistral-7b", "gemma2-9b", "gpt2", "bert-base"})
    CHECK(names.count(n));

  const auto dir = kSource + "/configs/models/";
  const ModelConfig llama3 = load_model_config(dir + "llama3-8b.json");
  CHECK(llama3.nheads == 32);
  CHECK(llama3.nheads_k == 8);
  CHECK(llama3.causal);
  const ModelConfig mistral = load_model_config(dir + "mistral-7b.json");
  CHECK(mistral.window_left == 4096);
  const ModelConfig gemma = load_model_config(dir + "gemma2-9b.json");
  CHECK(gemma.softcap == 50.0);
  CHECK(gemma.head_dim == 256);
  CHECK(load_model_config(dir + "gpt2.json").head_dim == 64);
  CHECK_FALSE(load_model_config(dir + "bert-base.json").causal);
  const ModelConfig llama = load_model_config(dir + "llama7b.json");
  CHECK(llama.nheads == llama.nheads_k);
  CHECK(std::find(llama.modes.begin(), llama.modes.end(), "bwd") != llama.modes.end());
}

TEST_CASE("configs: unknown keys and bad values name the file, the key and the reason",
          "[config]") {
  {
    TempJson t(model_json(R"(, "nhead": 4)"));
    const std::string m = error_of([&] { load_model_config(t.path); });
    CHECK_THAT(m, Catch::Contains(t.path) && Catch::Contains("key 'nhead'") &&
                      Catch::Contains("unknown key"));
  }
  {
    TempJson t(model_json(R"(, "softcap": -1)"));
    CHECK_THAT(error_of([&] { load_model_config(t.path); }), Catch::Contains(t.path) &&
                                                                 Catch::Contains("key 'softcap'") &&
                                                                 Catch::Contains("out of range"));
  }
  {
    TempJson t(model_json("", "7"));
    CHECK_THAT(error_of([&] { load_model_config(t.path); }),
               Catch::Contains("key 'nheads_k'") && Catch::Contains("does not divide nheads (32)"));
  }
  {
    TempJson t(model_json("", "\"8\""));
    CHECK_THAT(error_of([&] { load_model_config(t.path); }),
               Catch::Contains("key 'nheads_k'") && Catch::Contains("expected an integer"));
  }
  {
    TempJson t(
        R"({"schema_version": 1, "name": "m", "nheads": 4, "head_dim": 64, "mask": {"causal": true, "windw": [1, 0]},
                  "dtype": "bf16", "batch_sizes": [1], "seqlens": [16], "modes": ["fwd"]})");
    CHECK_THAT(error_of([&] { load_model_config(t.path); }), Catch::Contains("key 'mask.windw'"));
  }
  {
    TempJson t(R"({"schema_version": 1, "name": "m", "nheads": 4, "head_dim": 64, "dtype": "fp8",
                  "batch_sizes": [1], "seqlens": [16], "modes": ["fwd"]})");
    CHECK_THAT(error_of([&] { load_model_config(t.path); }),
               Catch::Contains("key 'dtype'") && Catch::Contains("unknown dtype \"fp8\""));
  }
  {
    TempJson t(R"({"schema_version": 1, "name": "m", "nheads": 4, "head_dim": 300, "dtype": "bf16",
                  "batch_sizes": [1], "seqlens": [16], "modes": ["fwd"]})");
    CHECK_THAT(error_of([&] { load_model_config(t.path); }),
               Catch::Contains("key 'head_dim'") && Catch::Contains("[1, 256]"));
  }
  {
    TempJson t(R"({"schema_version": 1, "name": "m", "nheads": 4, "head_dim": 64, "dtype": "bf16",
                  "batch_sizes": [1], "seqlens": [16, 0], "modes": ["fwd", "train"]})");
    CHECK_THAT(error_of([&] { load_model_config(t.path); }), Catch::Contains("key 'seqlens[1]'"));
  }
  {
    TempJson t(R"({"schema_version": 1, "name": "m", "nheads": 4, "head_dim": 64, "dtype": "bf16",
                  "batch_sizes": [1], "seqlens": [16], "modes": ["fwd", "train"]})");
    CHECK_THAT(error_of([&] { load_model_config(t.path); }),
               Catch::Contains("key 'modes[1]'") && Catch::Contains("\"train\""));
  }
  {
    TempJson t(R"({"schema_version": 1, "name": "m", "nheads": 4, "head_dim": 64, "dtype": "bf16",
                  "batch_sizes": [], "seqlens": [16], "modes": ["fwd"]})");
    CHECK_THAT(error_of([&] { load_model_config(t.path); }),
               Catch::Contains("key 'batch_sizes'") && Catch::Contains("empty"));
  }
  {
    TempJson t(model_json(R"(, "workload": "decode")"));
    CHECK_THAT(error_of([&] { load_model_config(t.path); }),
               Catch::Contains("key 'workload'") && Catch::Contains("need schema_version 2"));
  }
  {
    TempJson t(R"({"schema_version": 3, "name": "m"})");
    CHECK_THAT(error_of([&] { load_model_config(t.path); }),
               Catch::Contains("key 'schema_version'"));
  }
  {
    TempJson t(R"({"name": "m"})");
    CHECK_THAT(error_of([&] { load_model_config(t.path); }),
               Catch::Contains("key 'schema_version'") && Catch::Contains("missing"));
  }
  {
    TempJson t("{\"schema_version\": 1,\n \"name\": \"m\",,\n}");
    CHECK_THAT(error_of([&] { load_model_config(t.path); }),
               Catch::Contains(t.path + ":2:") && Catch::Contains("invalid JSON"));
  }
  CHECK_THAT(error_of([&] { load_model_config("/nonexistent/x.json"); }),
             Catch::Contains("no such file"));
}

TEST_CASE("configs: workloads expand and filter", "[config]") {
  TempJson t(model_json());
  const ModelConfig m = load_model_config(t.path);
  CHECK(expand_workloads(m, {}).size() == 2 * 1 * 2 * 3);  // modes x dtypes x batches x seqlens
  WorkloadFilter f;
  f.max_seqlen = 1024;
  f.batch_override = {8};
  f.modes = {"fwd"};
  const auto w = expand_workloads(m, f);
  REQUIRE(w.size() == 2);
  CHECK(w[0].batch == 8);
  CHECK(w[1].seqlen == 1024);
  CHECK(w[0].mode == "fwd");
  CHECK(mask_label(m) == "causal");
}

TEST_CASE("configs: dropout is a bench option from 0 to 0.99", "[config]") {
  {
    TempJson t(model_json(R"(, "dropout": 0.1)"));
    const ModelConfig m = load_model_config(t.path);
    CHECK(m.dropout == 0.1);
    CHECK(mask_label(m) == "causal+dropout0.1");
  }
  {
    TempJson t(model_json(R"(, "dropout": 1)"));
    CHECK_THAT(error_of([&] { load_model_config(t.path); }),
               Catch::Contains("key 'dropout'") && Catch::Contains("out of range"));
  }
}

TEST_CASE("configs: schema 2 decode and varlen workloads", "[config]") {
  const auto all = load_model_configs(kSource + "/configs/models/llama3-8b.json");
  REQUIRE(all.size() == 3);
  CHECK(all[0].name == "llama3-8b");
  CHECK(all[0].workload == "prefill");
  const ModelConfig& dec = all[1];
  const ModelConfig& vl = all[2];
  CHECK(dec.name == "llama3-8b/decode");
  CHECK(dec.workload == "decode");
  CHECK(dec.nheads == 32);
  CHECK(dec.nheads_k == 8);
  CHECK(dec.head_dim == 128);
  CHECK(dec.decode_shapes == std::vector<std::pair<int, int>>{{1, 131072}, {8, 16384}, {64, 4096}});
  CHECK(dec.page_sizes == std::vector<int>{0, 16, 256});
  CHECK(dec.modes == std::vector<std::string>{"fwd"});
  const auto dw = expand_workloads(dec, {});
  REQUIRE(dw.size() == 3 * 3);
  CHECK(dw[0].kind == "decode");
  CHECK(dw[0].batch == 1);
  CHECK(dw[0].seqlen == 131072);
  CHECK(dw[0].page_size == 0);
  CHECK(dw[2].page_size == 256);
  WorkloadFilter f;
  f.max_seqlen = 16384;
  CHECK(expand_workloads(dec, f).size() == 2 * 3);
  f.modes = {"bwd"};
  CHECK(expand_workloads(dec, f).empty());
  CHECK(vl.workload == "varlen");
  const auto vw = expand_workloads(vl, {});
  REQUIRE(vw.size() == 2 * vl.varlen_batches.size());
  CHECK(vw[0].batch == static_cast<int>(vw[0].varlen.size()));
  CHECK(vw[0].seqlen == *std::max_element(vw[0].varlen.begin(), vw[0].varlen.end()));

  // FLOPs: varlen = the sum over its sequences by the one convention; decode counts
  // 1 x (cache_len + 1) pairs (one causal row masks nothing); decode bytes = the KV-cache read.
  const BenchCase vc = bench_case_of(vw[0], "fwd");
  double sum = 0;
  for (int s : vw[0].varlen) {
    FlopShape fs;
    fs.seqlen_q = fs.seqlen_k = s;
    fs.nheads = 32;
    fs.head_dim = 128;
    fs.causal = true;
    sum += attention_flops(fs, FlopMode::fwd);
  }
  CHECK(case_flops(vc) == Approx(sum));
  CHECK(case_flops(bench_case_of(vw[0], "bwd")) == Approx(2.5 * sum));
  const BenchCase dc = bench_case_of(dw[7], "fwd");  // b64, cache 4096, page 16
  CHECK(dc.batch == 64);
  CHECK(case_flops(dc) == Approx(4.0 * 64 * 32 * 128 * 4097));
  CHECK(case_bytes(dc) == Approx(2.0 * 64 * 4097 * 8 * 128 * 2));
  CHECK(case_shape(dc) == "b64 sq1 cache4096 page16 splits0 h32 hk8 d128");
  // bench --mode bwd leaves decode out.
  CHECK(bench_cases(dw, {"bwd"}).empty());
  CHECK(bench_cases(dw, {"fwd"}).size() == dw.size());

  auto err = [](const std::string& text) {
    TempJson t(text);
    const std::string m = error_of([&] { load_model_configs(t.path); });
    CHECK_THAT(m, Catch::Contains(t.path));
    return m;
  };
  const std::string v2 =
      R"({"schema_version": 2, "name": "m", "nheads": 4, "head_dim": 64, "dtype": "bf16", )";
  CHECK(load_model_configs([&] {
          static TempJson t(v2 + R"("workload": "decode", "decode": {"shapes": [[2, 100]]}})");
          return t.path;
        }())[0]
            .page_sizes == std::vector<int>{0});
  CHECK_THAT(
      err(v2 + R"("workload": "decode", "decode": {"shapes": [[2, 100]]}, "modes": ["bwd"]})"),
      Catch::Contains("key 'modes[0]'") && Catch::Contains("forward only"));
  CHECK_THAT(err(v2 + R"("workload": "decode", "decode": {"shapes": [[2]]}})"),
             Catch::Contains("key 'decode.shapes[0]'"));
  CHECK_THAT(err(v2 + R"("workload": "decode", "decode": {"shapes": [[2, 9]], "pages": [1]}})"),
             Catch::Contains("key 'decode.pages'"));
  CHECK_THAT(err(v2 + R"("workload": "decode", "seqlens": [4], "decode": {"shapes": [[2, 9]]}})"),
             Catch::Contains("key 'seqlens'") && Catch::Contains("not used"));
  CHECK_THAT(err(v2 + R"("workload": "varlen", "modes": ["fwd"]})"),
             Catch::Contains("key 'varlen'") && Catch::Contains("missing"));
  CHECK_THAT(
      err(v2 + R"("workload": "varlen", "modes": ["fwd"], "varlen": {"batches": [[3, 0]]}})"),
      Catch::Contains("key 'varlen.batches[0][1]'"));
  CHECK_THAT(
      err(v2 +
          R"("batch_sizes": [1], "seqlens": [8], "modes": ["fwd"], "decode": {"shapes": [[1, 2]]}})"),
      Catch::Contains("key 'decode'") && Catch::Contains("prefill"));
  CHECK_THAT(err(R"({"schema_version": 1, "name": "m", "nheads": 4, "head_dim": 64, "dtype": "bf16",
                     "batch_sizes": [1], "seqlens": [8], "modes": ["fwd"],
                     "workloads": [{"name": "d", "workload": "decode", "decode": {"shapes": [[1, 2]]}}]})"),
             Catch::Contains("key 'workloads'") && Catch::Contains("schema_version 2"));
  CHECK_THAT(err(v2 + R"("batch_sizes": [1], "seqlens": [8], "modes": ["fwd"],
                     "workloads": [{"name": "d", "workload": "decode", "decode": {"shapes": [[1, 2]]}, "nheads": 2}]})"),
             Catch::Contains("key 'workloads[0].nheads'"));
}

TEST_CASE("flops: the one convention", "[flops]") {
  FlopShape s;
  s.batch = 2;
  s.nheads = 3;
  s.head_dim = 64;
  s.seqlen_q = 100;
  s.seqlen_k = 200;
  const double dense = 4.0 * 2 * 3 * 64 * 100 * 200;
  CHECK(attention_flops(s, FlopMode::fwd) == dense);
  CHECK(attention_flops(s, FlopMode::bwd) == 2.5 * dense);
  s.causal = true;  // pure causal: halved
  CHECK(attention_flops(s, FlopMode::fwd) == dense / 2);
  // Window: exact count. sq = sk = 4, window (1, 0): rows see 1, 2, 2, 2 keys = 7 pairs.
  FlopShape w;
  w.seqlen_q = w.seqlen_k = 4;
  w.window_left = 1;
  w.window_right = 0;
  CHECK(attention_pairs(w) == 7);
  w.causal = true;  // causal + window(1, -1) is the same band
  w.window_right = -1;
  CHECK(attention_pairs(w) == 7);
  // Two-sided (1, 1) on 4x4: 2 + 3 + 3 + 2.
  FlopShape b2 = w;
  b2.causal = false;
  b2.window_right = 1;
  CHECK(attention_pairs(b2) == 10);
  // Bottom-right alignment: sq = 2, sk = 5, window (0, 0): row 0 sees key 3, row 1 key 4.
  FlopShape br;
  br.seqlen_q = 2;
  br.seqlen_k = 5;
  br.window_left = br.window_right = 0;
  CHECK(attention_pairs(br) == 2);
  // A window wider than the sequence counts like no mask.
  FlopShape wide;
  wide.seqlen_q = wide.seqlen_k = 10;
  wide.window_left = wide.window_right = 100;
  CHECK(attention_pairs(wide) == 100);
}

TEST_CASE("suites: the shipped suites load and ci covers every option", "[suite]") {
  for (const char* name : {"ci", "gpu", "smoke"}) {
    const Suite s = load_suite(kSource + "/configs/suites/" + name + ".json", Backend::cpu);
    CHECK(s.name == name);
    CHECK_FALSE(s.cases.empty());
    std::set<std::string> names;
    for (const Case& c : s.cases) CHECK(names.insert(c.name).second);  // names are unique
  }
  const Suite ci = load_suite(kSource + "/configs/suites/ci.json", Backend::cpu);
  std::vector<const Case*> run;
  for (const Case& c : ci.cases)
    if (c.excluded.empty()) run.push_back(&c);
  auto any = [&](auto pred) {
    return std::any_of(run.begin(), run.end(), [&](const Case* c) { return pred(*c); });
  };
  CHECK(any([](const Case& c) { return c.causal; }));
  CHECK(any([](const Case& c) { return c.window_left >= 0 && c.window_right >= 0 && !c.causal; }));
  CHECK(any([](const Case& c) { return c.softcap > 0 && c.bwd; }));
  CHECK(any([](const Case& c) { return c.alibi == AlibiMode::per_head && c.bwd; }));
  CHECK(any(
      [](const Case& c) { return c.alibi == AlibiMode::per_batch_head && c.batch > 1 && c.bwd; }));
  CHECK(
      any([](const Case& c) { return c.nheads_k > 1 && c.nheads_k < c.nheads && c.bwd; }));  // GQA
  CHECK(any([](const Case& c) { return c.nheads_k == 1 && c.nheads > 1 && c.bwd; }));        // MQA
  CHECK(any([](const Case& c) { return c.scale > 0; }));
  for (int s : {1, 17, 129, 1000}) CHECK(any([s](const Case& c) { return c.seqlen_q == s; }));
  for (int d : {40, 72, 96, 160, 256})
    CHECK(any([d](const Case& c) { return c.head_dim == d && c.bwd; }));
  CHECK(
      any([](const Case& c) { return c.seqlen_q > c.seqlen_k && c.causal; }));  // fully masked rows
  CHECK(any([](const Case& c) { return c.seqlen_q < c.seqlen_k; }));
  CHECK(any([](const Case& c) { return c.seqlen_k == 0 && c.bwd; }));
  for (DType t : {DType::f32, DType::f16, DType::bf16}) {
    CHECK(any([t](const Case& c) { return c.dtype == t && c.bwd; }));
    CHECK(any([t](const Case& c) { return c.dtype == t && !c.bwd; }));
  }
  for (Layout l : {Layout::qkvpacked, Layout::kv_in_cache})
    CHECK(any([l](const Case& c) { return c.layout == l && c.bwd; }));
  CHECK(any([](const Case& c) { return c.deterministic; }));
  // Variable-length batches, the KV cache and dropout (suite fields of docs/VERIFY.md).
  CHECK(any([](const Case& c) { return !c.varlen.empty() && c.bwd && c.dropout > 0; }));
  CHECK(any([](const Case& c) {
    return std::any_of(c.varlen.begin(), c.varlen.end(),
                       [](const std::pair<int, int>& s) { return s.first == 0 || s.second == 0; });
  }));
  CHECK(any([](const Case& c) { return !c.varlen.empty() && c.num_splits > 1; }));
  CHECK(any([](const Case& c) { return c.kvcache && c.page_size == 0 && c.new_keys > 0; }));
  CHECK(any([](const Case& c) { return c.kvcache && c.page_size > 0 && c.page_size % 256 != 0; }));
  CHECK(any([](const Case& c) { return c.kvcache && c.rotary > 0 && c.rotary_interleaved; }));
  CHECK(any([](const Case& c) { return c.kvcache && c.rotary > 0 && !c.rotary_interleaved; }));
  CHECK(any([](const Case& c) { return c.kvcache && c.num_splits > 1; }));
  CHECK(any([](const Case& c) { return c.dropout > 0 && c.varlen.empty() && c.bwd; }));
}

TEST_CASE("suites: varlen, kvcache and dropout cases", "[suite]") {
  TempJson t(R"({
    "schema_version": 1, "name": "t",
    "defaults": {"head_dim": 32, "dtype": "fp16"},
    "matrices": [{"name": "kv", "set": {"kvcache": true, "cache_len": 20, "seqlen_q": 1},
                  "axes": {"page_size": [0, 8], "new_keys": [0, 2], "mode": ["fwd", "bwd"]}}],
    "cases": [{"varlen": [3, [4, 9], [0, 2]], "causal": true, "dropout": 0.25, "mode": "bwd"},
              {"kvcache": true, "cache_len": 10, "new_keys": 2, "rotary": 16, "rotary_interleaved": true,
               "num_splits": 3}]
  })");
  const Suite s = load_suite(t.path, Backend::cpu);
  REQUIRE(s.cases.size() == 2 * 2 * 2 + 2);
  const Case& vl = s.cases[8];
  CHECK(vl.name == "cases/bwd_fp16_b3_sq4_sk9_h2_d32_causal_drop0.25_varlen3.4x9.0x2");
  CHECK(vl.batch == 3);
  CHECK(vl.varlen == std::vector<std::pair<int, int>>{{3, 3}, {4, 9}, {0, 2}});
  CHECK(s.cases[9].name == "cases/fwd_fp16_b1_sq16_sk12_h2_d32_kv10_new2_rot16i_split3");
  int excluded = 0;
  for (const Case& c : s.cases)
    if (!c.excluded.empty()) {
      ++excluded;
      CHECK(c.bwd);
      CHECK_THAT(c.excluded, Catch::Contains("forward only"));
    }
  CHECK(excluded == 4);
  auto err = [](const std::string& cases) {
    TempJson bad(R"({"schema_version": 1, "name": "t", "cases": [)" + cases + "]}");
    const std::string m = error_of([&] { load_suite(bad.path, Backend::cpu); });
    CHECK_THAT(m, Catch::Contains(bad.path));
    return m;
  };
  CHECK_THAT(err(R"({"kvcache": true, "rotary": 16})"), Catch::Contains("rotary needs new_keys"));
  CHECK_THAT(err(R"({"page_size": 16})"), Catch::Contains("need kvcache"));
  CHECK_THAT(err(R"({"kvcache": true, "dropout": 0.1})"), Catch::Contains("no dropout"));
  CHECK_THAT(err(R"({"varlen": [1, [2]]})"), Catch::Contains("key 'cases[0].varlen[1]'"));
  CHECK_THAT(err(R"({"dropout": 1.5})"), Catch::Contains("key 'cases[0].dropout'"));
  CHECK_THAT(err(R"({"num_splits": 2})"), Catch::Contains("num_splits needs varlen or kvcache"));
}

TEST_CASE("suites: matrices, exclusions, known failures", "[suite]") {
  TempJson t(R"({
    "schema_version": 1, "name": "t", "seed": 7,
    "defaults": {"head_dim": 32},
    "matrices": [{"name": "m", "set": {"dtype": "bf16"},
                  "axes": {"seqlens": [[4, 4], [8, 2]], "layout": ["contiguous", "qkvpacked"], "mode": ["fwd", "bwd"]},
                  "exclude": [{"when": {"mode": "bwd", "seqlen_q": {"min": 8}}, "reason": "too slow"}]}],
    "cases": [{"seqlen_q": 3, "heads": [4, 2], "causal": true}],
    "exclude": [{"when": {"seqlens": [[4, 4]], "layout": "qkvpacked", "mode": "fwd"}, "reason": "global rule"}],
    "known_failures": [{"backend": "cuda", "match": "cases/", "reason": "bug 12"}]
  })");
  const Suite s = load_suite(t.path, Backend::cpu);
  CHECK(s.seed == 7);
  REQUIRE(s.cases.size() == 2 * 2 * 2 + 1);
  auto find = [&](const std::string& name) -> const Case& {
    for (const Case& c : s.cases)
      if (c.name == name) return c;
    FAIL("no case " << name);
    return s.cases[0];
  };
  CHECK(find("m/fwd_bf16_b1_sq4_sk4_h2_d32").excluded.empty());
  CHECK(find("m/fwd_bf16_b1_sq4_sk4_h2_d32_qkvpacked").excluded == "global rule");
  CHECK(find("m/bwd_bf16_b1_sq4_sk4_h2_d32_qkvpacked").excluded.empty());
  CHECK(find("m/bwd_bf16_b1_sq8_sk2_h2_d32").excluded == "too slow");
  CHECK_THAT(find("m/fwd_bf16_b1_sq8_sk2_h2_d32_qkvpacked").excluded,
             Catch::Contains("seqlen_q == seqlen_k"));
  const Case& explicit_case = find("cases/fwd_fp32_b1_sq3_sk3_h4_hk2_d32_causal");
  CHECK(explicit_case.known_failure.empty());  // listed for cuda only
  const Suite on_cuda = load_suite(t.path, Backend::cuda);
  CHECK(on_cuda.cases.back().known_failure == "bug 12");
}

TEST_CASE("suites: errors name the file, the key path and the reason", "[suite]") {
  auto err = [](const std::string& text) {
    TempJson t(text);
    const std::string m = error_of([&] { load_suite(t.path, Backend::cpu); });
    CHECK_THAT(m, Catch::Contains(t.path));
    return m;
  };
  const std::string head = R"({"schema_version": 1, "name": "t", )";
  CHECK_THAT(err(head + R"("matrices": [{"name": "m", "axes": {"seqlen": [1]}}]})"),
             Catch::Contains("key 'matrices[0].axes.seqlen'") && Catch::Contains("unknown key"));
  CHECK_THAT(err(head + R"("matrices": [{"name": "m", "axes": {"window": [[1, 2], [3]]}}]})"),
             Catch::Contains("key 'matrices[0].axes.window[1]'"));
  CHECK_THAT(err(head + R"("matrices": [{"name": "m", "axes": {"dtype": []}}]})"),
             Catch::Contains("key 'matrices[0].axes.dtype'") && Catch::Contains("empty"));
  CHECK_THAT(err(head + R"("cases": [{"alibi": "yes"}]})"),
             Catch::Contains("key 'cases[0].alibi'") && Catch::Contains("\"yes\""));
  CHECK_THAT(err(head + R"("cases": [{"seqlens": [4, 8], "layout": "qkvpacked"}]})"),
             Catch::Contains("cases[0]") && Catch::Contains("qkvpacked"));
  CHECK_THAT(err(head + R"("cases": [{}], "exclude": [{"when": {"causal": true}}]})"),
             Catch::Contains("key 'exclude[0].reason'"));
  CHECK_THAT(
      err(head + R"("cases": [{}], "exclude": [{"when": {"casual": true}, "reason": "x"}]})"),
      Catch::Contains("key 'exclude[0].when.casual'"));
  CHECK_THAT(
      err(head +
          R"("cases": [{}], "known_failures": [{"backend": "tpu", "match": "x", "reason": "r"}]})"),
      Catch::Contains("key 'known_failures[0].backend'"));
  CHECK_THAT(err(head + R"("bogus": 1, "cases": [{}]})"), Catch::Contains("key 'bogus'"));
  CHECK_THAT(err(head + R"("cases": []})"), Catch::Contains("no cases"));
  // 10^9 cases from 400 bytes: refused before expanding, naming the matrix's axes.
  std::string ax;
  for (const char* k : {"batch", "nheads", "head_dim", "seqlen_q", "seqlen_k", "nheads_k",
                        "cache_len", "page_size", "num_splits"})
    ax += fmt::format("{}\"{}\": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]", ax.empty() ? "" : ", ", k);
  CHECK_THAT(err(head + R"("matrices": [{"name": "m", "axes": {)" + ax + "}}]}"),
             Catch::Contains("key 'matrices[0].axes'") && Catch::Contains("more than the 20000 a suite may have"));
}

TEST_CASE("verify: guard band check and input generation", "[verify]") {
  std::vector<uint8_t> buf(2 * kGuardBytes + 40, kGuardByte);
  std::fill(buf.begin() + kGuardBytes, buf.begin() + kGuardBytes + 40, 0);
  CHECK(check_guard_bands(buf.data(), 40, "out").empty());
  buf[kGuardBytes + 40] = 0;  // first byte past the end
  CHECK_THAT(check_guard_bands(buf.data(), 40, "out"),
             Catch::Contains("out: 1 guard byte(s)") && Catch::Contains("1 byte(s) past the end"));
  buf[kGuardBytes - 2] = 0;
  CHECK_THAT(check_guard_bands(buf.data(), 40, "dq"),
             Catch::Contains("2 guard byte(s)") && Catch::Contains("2 byte(s) before"));

  const auto a = random_normal(1, "case", "q", 1001), b = random_normal(1, "case", "q", 1001);
  CHECK(a == b);                                    // replayable
  CHECK(a != random_normal(2, "case", "q", 1001));  // the seed matters
  CHECK(a != random_normal(1, "case", "k", 1001));  // each tensor has its own stream
  CHECK(std::none_of(a.begin(), a.end(), [](float x) { return x == 0.f || !std::isfinite(x); }));
  double mean = 0, var = 0;
  for (float x : a) mean += x;
  mean /= a.size();
  for (float x : a) var += (x - mean) * (x - mean);
  var /= a.size();
  CHECK(std::abs(mean) < 0.15);
  CHECK(var == Approx(1.0).epsilon(0.15));
}
