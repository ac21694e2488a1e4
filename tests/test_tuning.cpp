// Tuned tables: parse, validate, merge, atomic write, and the fallback on bad tables.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "flashplus/tuning.h"

using namespace flashplus;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir() {
  fs::path d = fs::temp_directory_path() / ("flashplus_tuning_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}

const char* kGood = R"({
  "schema_version": 2, "device": "Test GPU", "fingerprint": "sm_90-132sm",
  "git_revision": "abc", "created": "2026-11-25",
  "entries": {
    "sm_90/bf16/d128/causal/fwd/r20": {"kernel": "fwd_sm90_bf16_d128_m128n64w4",
      "config": {"block_m": 128, "block_n": 64, "num_warps": 4, "stages": 2},
      "time_ms": 1.5, "runner_up": "fwd_sm90_bf16_d128_m64n64w4", "runner_up_ms": 1.9}
  }
})";

TuneKey key128() {
  TuneKey k;
  k.arch = "sm_90";
  k.dtype = DType::bf16;
  k.head_dim_bucket = 128;
  k.mask = MaskKind::causal;
  k.mode = "fwd";
  return k;
}

}  // namespace

TEST_CASE("kernel keys round-trip and reject junk", "[tuning]") {
  TuneKey k = key128();
  CHECK(k.to_string() == "sm_90/bf16/d128/causal/fwd/r20");
  TuneKey back;
  REQUIRE(TuneKey::parse(k.to_string(), &back));
  CHECK(back.to_string() == k.to_string());
  for (const char* junk : {"", "sm_90", "sm_90/bf16/d128/causal", "sm_90/int8/d128/none/fwd",
                           "sm_90/bf16/d100/none/fwd", "sm_90/bf16/dx/none/fwd",
                           "sm_90/bf16/d128/diagonal/fwd", "sm_90/bf16/d128/none/both",
                           "sm_90/bf16/d128/none/fwd/r13", "sm_90/bf16/d128/none/fwd/r",
                           "/bf16/d128/none/fwd"})
    CHECK_FALSE(TuneKey::parse(junk, &back));
  CHECK(head_dim_bucket(1) == 32);
  CHECK(head_dim_bucket(64) == 64);
  CHECK(head_dim_bucket(65) == 96);
  CHECK(head_dim_bucket(256) == 256);
  CHECK(rows_bucket(1) == 12);
  CHECK(rows_bucket(4096) == 12);
  CHECK(rows_bucket(4097) == 14);
  CHECK(rows_bucket(16384) == 14);  // llama 7B, one 512-token sequence: 32 heads x 512
  CHECK(rows_bucket(1 << 18) == 18);
  CHECK(rows_bucket(1LL << 40) == 20);
}

TEST_CASE("a good table parses and finds its entries", "[tuning]") {
  TunedTable t;
  Status st = TunedTable::parse(kGood, "good.json", &t);
  INFO(st.to_string());
  REQUIRE(st.ok());
  CHECK(t.fingerprint == "sm_90-132sm");
  const TunedEntry* e = t.find(key128());
  REQUIRE(e != nullptr);
  CHECK(e->config.block_m == 128);
  CHECK(e->config.block_n == 64);
  CHECK(e->config.num_warps == 4);
  CHECK(e->config.stages == 2);
  CHECK(e->config.num_splits == 0);
  CHECK(e->runner_up_ms == Approx(1.9));
  TuneKey other = key128();
  other.mode = "bwd";
  CHECK(t.find(other) == nullptr);
}

TEST_CASE("bad tables are rejected with the file, the key and the reason", "[tuning]") {
  struct Bad {
    std::string text, fragment;
  };
  std::string g = kGood;
  auto replace = [&](const std::string& from, const std::string& to) {
    std::string s = g;
    s.replace(s.find(from), from.size(), to);
    return s;
  };
  std::vector<Bad> cases = {
      {"{not json", "bad.json: not valid JSON"},
      {"[]", "must be a JSON object"},
      {replace("\"schema_version\": 2", "\"schema_version\": 1"), "schema_version"},
      {replace("\"device\"", "\"devise\""), "devise: unknown key"},
      {replace("sm_90/bf16/d128/causal/fwd", "sm_90/bf16/d128/causal"), "not a kernel key"},
      {replace("\"block_m\": 128", "\"block_m\": -4"), "block_m: must be in 0..1024"},
      {replace("\"block_m\": 128", "\"block_m\": \"big\""), "block_m: must be an integer"},
      {replace("\"stages\": 2", "\"stagez\": 2"), "stagez: unknown key"},
      {replace("\"time_ms\": 1.5", "\"time_ms\": -1"), "time_ms"},
  };
  for (const auto& c : cases) {
    TunedTable t;
    Status st = TunedTable::parse(c.text, "bad.json", &t);
    INFO(c.text << "\n=> " << st.to_string());
    REQUIRE_FALSE(st.ok());
    CHECK(st.message().find(c.fragment) != std::string::npos);
    CHECK(st.message().find("bad.json") != std::string::npos);
  }
}

TEST_CASE("merge keeps other keys; save is atomic and round-trips", "[tuning]") {
  TunedTable a, b;
  REQUIRE(TunedTable::parse(kGood, "a", &a).ok());
  TuneKey kb = key128();
  kb.mode = "bwd";
  TunedEntry e;
  e.kernel = "bwd_x";
  e.config.block_m = 64;
  e.config.block_n = 128;
  b.fingerprint = a.fingerprint;
  b.set(kb, e);
  TunedEntry e2 = *a.find(key128());
  e2.config.block_n = 32;
  b.set(key128(), e2);
  a.merge(b);
  REQUIRE(a.find(kb) != nullptr);
  CHECK(a.find(kb)->config.block_n == 128);
  CHECK(a.find(key128())->config.block_n == 32);  // replaced by the newer measurement
  CHECK(a.entries().size() == 2);

  const fs::path dir = temp_dir();
  const fs::path path = dir / "sub" / "t.json";
  REQUIRE(a.save(path.string()).ok());
  for (const auto& f : fs::directory_iterator(path.parent_path()))
    CHECK(f.path().filename() == "t.json");  // no temp file left behind
  TunedTable back;
  REQUIRE(TunedTable::load(path.string(), &back).ok());
  CHECK(back.dump() == a.dump());
  fs::remove_all(dir);
}

TEST_CASE("the active table falls back to heuristics on a corrupt or foreign table",
          "[tuning]") {
  const fs::path dir = temp_dir();
  const fs::path path = dir / "table.json";
  KernelConfig heuristic;
  heuristic.block_m = 16;
  heuristic.block_n = 16;
  bool from_table = true;

  SECTION("good table is used") {
    std::ofstream(path) << kGood;
    ::setenv("FLASHPLUS_TUNED_TABLE", path.c_str(), 1);
    reset_active_tables_for_testing();
    KernelConfig c = choose_config("sm_90-132sm", key128(), heuristic, &from_table);
    CHECK(from_table);
    CHECK(c.block_m == 128);
    CHECK(active_table_source("sm_90-132sm") == path.string());
    TuneKey missing = key128();
    missing.head_dim_bucket = 64;
    c = choose_config("sm_90-132sm", missing, heuristic, &from_table);
    CHECK_FALSE(from_table);
    CHECK(c == heuristic);
  }
  SECTION("corrupt table") {
    std::ofstream(path) << "{\"schema_version\": 1, \"entries\": ";
    ::setenv("FLASHPLUS_TUNED_TABLE", path.c_str(), 1);
    reset_active_tables_for_testing();
    KernelConfig c = choose_config("sm_90-132sm", key128(), heuristic, &from_table);
    CHECK_FALSE(from_table);
    CHECK(c == heuristic);
    CHECK(active_table_source("sm_90-132sm").rfind("none:", 0) == 0);
  }
  SECTION("table of another device") {
    std::ofstream(path) << kGood;
    ::setenv("FLASHPLUS_TUNED_TABLE", path.c_str(), 1);
    reset_active_tables_for_testing();
    KernelConfig c = choose_config("sm_80-108sm", key128(), heuristic, &from_table);
    CHECK_FALSE(from_table);
    CHECK(c == heuristic);
    CHECK(active_table_source("sm_80-108sm").find("does not match") != std::string::npos);
  }
  SECTION("unreadable path") {
    ::setenv("FLASHPLUS_TUNED_TABLE", (dir / "missing.json").c_str(), 1);
    reset_active_tables_for_testing();
    KernelConfig c = choose_config("sm_90-132sm", key128(), heuristic, &from_table);
    CHECK_FALSE(from_table);
    CHECK(c == heuristic);
  }
  ::unsetenv("FLASHPLUS_TUNED_TABLE");
  reset_active_tables_for_testing();
  fs::remove_all(dir);
}

TEST_CASE("every committed tuned table loads and names its own fingerprint", "[tuning]") {
  const fs::path dir = fs::path(FLASHPLUS_SOURCE_DIR) / "configs" / "tuned";
  int n = 0;
  for (const auto& f : fs::directory_iterator(dir)) {
    if (f.path().extension() != ".json") continue;
    ++n;
    TunedTable t;
    const Status st = TunedTable::load(f.path().string(), &t);
    INFO(f.path() << ": " << st.to_string());
    REQUIRE(st.ok());
    CHECK(f.path().stem().string() == t.fingerprint);  // the library finds it by this name
    CHECK_FALSE(t.entries().empty());
  }
  CHECK(n >= 1);
}

TEST_CASE("fingerprints split into arch, SM count and memory", "[tuning]") {
  FingerprintParts p;
  REQUIRE(parse_fingerprint("sm_90-132sm-79g", &p));
  CHECK(p.arch == "sm_90");
  CHECK(p.multiprocessors == 132);
  CHECK(p.memory_gib == 79);
  REQUIRE(parse_fingerprint("gfx90a-104sm-64g", &p));
  CHECK(p.arch == "gfx90a");
  REQUIRE(parse_fingerprint("sm_90-132sm", &p));  // older tables: no memory
  CHECK(p.multiprocessors == 132);
  CHECK(p.memory_gib == -1);
  for (const char* bad : {"cpu-x86_64", "", "sm_90", "sm_90-sm-79g", "-132sm-79g", "sm_90-132-79g",
                          "sm_90-132sm-g", "a-b-132sm-79g"}) {
    INFO(bad);
    CHECK_FALSE(parse_fingerprint(bad, &p));
  }
}

TEST_CASE("nearest table: same arch only, same SM count first, then closest memory",
          "[tuning]") {
  bool nearest = true;
  // The exact fingerprint wins whatever else is there.
  CHECK(nearest_fingerprint("sm_90-132sm-79g", {"sm_90-132sm-140g", "sm_90-132sm-79g"}, &nearest) ==
        "sm_90-132sm-79g");
  CHECK_FALSE(nearest);
  // An H200 gets the H100 SXM table.
  CHECK(nearest_fingerprint("sm_90-132sm-140g", {"sm_80-108sm-79g", "sm_90-132sm-79g"}, &nearest) ==
        "sm_90-132sm-79g");
  CHECK(nearest);
  // Same SM count beats a closer memory size with another SM count (H100 PCIe: 114 SMs).
  CHECK(nearest_fingerprint("sm_90-132sm-140g", {"sm_90-114sm-140g", "sm_90-132sm-79g"}) ==
        "sm_90-132sm-79g");
  // Among the same SM count, the closest memory; a table without memory ranks after those with.
  CHECK(nearest_fingerprint("sm_90-132sm-96g",
                            {"sm_90-132sm", "sm_90-132sm-79g", "sm_90-132sm-140g"}) ==
        "sm_90-132sm-79g");
  CHECK(nearest_fingerprint("sm_90-132sm-96g", {"sm_90-132sm", "sm_90-114sm-94g"}) ==
        "sm_90-132sm");
  // No same SM count: closest memory, then closest SM count, then the name.
  CHECK(nearest_fingerprint("sm_90-114sm-80g",
                            {"sm_90-132sm-140g", "sm_90-132sm-79g", "sm_90-78sm-79g"}) ==
        "sm_90-132sm-79g");
  CHECK(nearest_fingerprint("sm_90-100sm-80g", {"sm_90-120sm-80g", "sm_90-80sm-80g"}) ==
        "sm_90-120sm-80g");
  // Another architecture never qualifies; CPU fingerprints match exactly or not at all.
  CHECK(nearest_fingerprint("sm_90-132sm-140g", {"sm_80-108sm-79g", "sm_100-148sm-178g"}, &nearest)
            .empty());
  CHECK_FALSE(nearest);
  CHECK(nearest_fingerprint("sm_9-132sm-79g", {"sm_90-132sm-79g"}).empty());
  CHECK(nearest_fingerprint("cpu-x86_64", {"cpu-aarch64", "sm_90-132sm-79g"}).empty());
  CHECK(nearest_fingerprint("cpu-x86_64", {"cpu-x86_64"}) == "cpu-x86_64");
  CHECK(nearest_fingerprint("sm_90-132sm-140g", {}).empty());
}

TEST_CASE("a device with no table of its own uses the nearest committed one", "[tuning]") {
  // The committed configs/tuned is found next to the test binary (../../configs/tuned).
  ::unsetenv("FLASHPLUS_TUNED_TABLE");
  reset_active_tables_for_testing();
  const TunedTable* exact = active_table("sm_90-132sm-79g");
  REQUIRE(exact != nullptr);
  CHECK(active_table_match("sm_90-132sm-79g") == "exact");
  const TunedTable* h200 = active_table("sm_90-132sm-140g");
  REQUIRE(h200 != nullptr);
  CHECK(h200->fingerprint == "sm_90-132sm-79g");
  CHECK(h200->entries().size() == exact->entries().size());
  for (const auto& [k, e] : exact->entries()) {
    INFO(k);
    TuneKey key;
    REQUIRE(TuneKey::parse(k, &key));
    REQUIRE(h200->find(key) != nullptr);
    CHECK(h200->find(key)->config == e.config);
  }
  CHECK(active_table_match("sm_90-132sm-140g").rfind("nearest: sm_90-132sm-79g", 0) == 0);
  CHECK(active_table_source("sm_90-132sm-140g").find("sm_90-132sm-79g.json") != std::string::npos);
  // Another architecture: no table, and the reason says so.
  CHECK(active_table("sm_80-108sm-79g") == nullptr);
  CHECK(active_table_match("sm_80-108sm-79g").empty());
  CHECK(active_table_source("sm_80-108sm-79g").rfind("none:", 0) == 0);
  reset_active_tables_for_testing();
}

TEST_CASE("an explicit table of the same arch serves as the nearest one", "[tuning]") {
  const fs::path dir = temp_dir();
  const fs::path path = dir / "table.json";
  std::ofstream(path) << kGood;  // fingerprint sm_90-132sm
  ::setenv("FLASHPLUS_TUNED_TABLE", path.c_str(), 1);
  reset_active_tables_for_testing();
  bool from_table = false;
  const KernelConfig c =
      choose_config("sm_90-114sm-80g", key128(), KernelConfig{16, 16}, &from_table);
  CHECK(from_table);
  CHECK(c.block_m == 128);
  CHECK(active_table_match("sm_90-114sm-80g").rfind("nearest: sm_90-132sm", 0) == 0);
  CHECK(active_table_match("sm_90-132sm") == "exact");
  ::unsetenv("FLASHPLUS_TUNED_TABLE");
  reset_active_tables_for_testing();
  fs::remove_all(dir);
}

TEST_CASE("a table entry naming a kernel the backend did not compile gives the heuristics' choice",
          "[tuning]") {
  const fs::path dir = temp_dir();
  const fs::path path = dir / "table.json";
  std::ofstream(path) << kGood;  // sm_90/bf16/d128/causal/fwd/r20 -> m128n64w4s2
  ::setenv("FLASHPLUS_TUNED_TABLE", path.c_str(), 1);
  reset_active_tables_for_testing();
  const KernelConfig heuristic{64, 32, 4, 2, 0};
  int asked = 0;
  KernelConfig seen;
  const auto none_compiled = [&](const KernelConfig& e) {
    ++asked;
    seen = e;
    return false;
  };
  bool from_table = true;
  KernelConfig c = choose_config("sm_90-132sm", key128(), heuristic, none_compiled, &from_table);
  CHECK_FALSE(from_table);
  CHECK(c == heuristic);
  CHECK(asked == 1);
  CHECK(seen.block_m == 128);  // the backend was asked about the table's entry
  CHECK(seen.block_n == 64);
  // Asked again (the warning is printed once; the answer stays the heuristic).
  c = choose_config("sm_90-132sm", key128(), heuristic, none_compiled, &from_table);
  CHECK(c == heuristic);
  CHECK(asked == 2);
  // A compiled entry is used.
  c = choose_config("sm_90-132sm", key128(), heuristic,
                    [](const KernelConfig& e) { return e.block_m == 128 && e.block_n == 64; },
                    &from_table);
  CHECK(from_table);
  CHECK(c.block_m == 128);
  CHECK(c.num_warps == 4);
  // A key the table lacks: the heuristic, and nothing to ask about.
  TuneKey other = key128();
  other.mask = MaskKind::none;
  asked = 0;
  c = choose_config("sm_90-132sm", other, heuristic, none_compiled, &from_table);
  CHECK_FALSE(from_table);
  CHECK(c == heuristic);
  CHECK(asked == 0);
  ::unsetenv("FLASHPLUS_TUNED_TABLE");
  reset_active_tables_for_testing();
  fs::remove_all(dir);
}
