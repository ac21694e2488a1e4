// Regression tests for the CLI bugs found by probing it as a hostile new user (issue 17, "Found by
// testing the CLI as a hostile new user would"); the file-writing and -reading helpers themselves
// are covered in test_file_io.cpp. Runs the built binary through popen.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli_test_util.h"
#include "npy.h"
#include "verify.h"

#ifdef FLASHPLUS_CLI_PATH

using namespace flashplus;
using namespace flashplus::cli;
namespace fs = std::filesystem;
using clitest::Result;
using clitest::run_cli;
using clitest::TempDir;

namespace {

void check_error(const Result& r, int code, const std::string& needle) {
  INFO(r.output);
  CHECK(r.code == code);
  CHECK(r.output.find("flashplus: error: ") != std::string::npos);
  CHECK_THAT(r.output, Catch::Contains(needle));
}

bool is_char_device(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISCHR(st.st_mode);
}

// q (1, 5, 2, 16), k and v (1, 7, 2, 16).
void save_qkv(const TempDir& d) {
  d.write_npy("q.npy", random_normal(5, "h", "q", 5 * 2 * 16), {1, 5, 2, 16});
  d.write_npy("k.npy", random_normal(5, "h", "k", 7 * 2 * 16), {1, 7, 2, 16});
  d.write_npy("v.npy", random_normal(5, "h", "v", 7 * 2 * 16), {1, 7, 2, 16});
}
const std::string kQkv = "run --backend cpu --q q.npy --k k.npy --v v.npy ";

const char* kModel =
    R"({"schema_version": 2, "name": "t", "nheads": 2, "head_dim": 16,
        "mask": {"causal": true}, "dtype": ["fp32"], "batch_sizes": [1], "seqlens": [SEQ],
        "modes": ["fwd"]})";
std::string model(const std::string& seq) {
  std::string s = kModel;
  return s.replace(s.find("SEQ"), 3, seq);
}

}  // namespace

TEST_CASE("cli hostile 1: a paged cache of page size 0 is refused, not SIGFPE", "[cli][hostile]") {
  TempDir d;
  d.write_npy("q.npy", random_normal(1, "h", "q", 1 * 1 * 2 * 16), {1, 1, 2, 16});
  d.write_npy("kc.npy", {}, {2, 0, 2, 16});
  d.write_npy_i32("bt.npy", {0, 1}, {1, 2});
  const Result r = run_cli(
      "run --backend cpu --q q.npy --k-cache kc.npy --v-cache kc.npy --block-table bt.npy "
      "--out o.npy",
      d.dir());
  check_error(r, 2, "page_block_size >= 1");
  CHECK_FALSE(fs::exists(d.file("o.npy")));
}

TEST_CASE("cli hostile 2: deeply nested configs and suites are refused, not SIGSEGV",
          "[cli][hostile]") {
  TempDir d;
  const std::string deep = std::string(75000, '[') + std::string(75000, ']');
  d.write("m.json", R"({"schema_version": 2, "name": "t", "nheads": )" + deep + "}");
  check_error(run_cli("run --config m.json --list", d.dir()), 2, "m.json: nested deeper than");
  d.write("s.json", R"({"schema_version": 1, "name": )" + deep + "}");
  check_error(run_cli("verify --backend cpu --suite s.json", d.dir()), 2,
              "s.json: nested deeper than");
  // A wrongly typed value within the bound: the message shows a short preview of it.
  d.write("w.json", R"({"schema_version": 2, "name": "t", "nheads": [[[[[[1]]]]]], "head_dim": 16})");
  const Result r = run_cli("run --config w.json --list", d.dir());
  check_error(r, 2, "w.json: key 'nheads'");
  CHECK(r.output.size() < 300);
}

TEST_CASE("cli hostile 3: an overflowing number names the file", "[cli][hostile]") {
  TempDir d;
  d.write("m.json", model("1e400"));
  check_error(run_cli("run --config m.json --list", d.dir()), 2,
              "m.json: invalid JSON: number overflow");
}

TEST_CASE("cli hostile 4: device outputs are written through, symlinks followed",
          "[cli][hostile]") {
  TempDir d;
  save_qkv(d);
  if (is_char_device("/dev/null")) {
    const Result r = run_cli(kQkv + "--out /dev/null --lse /dev/null", d.dir());
    INFO(r.output);
    CHECK(r.code == 0);
    CHECK(is_char_device("/dev/null"));
  }
  if (is_char_device("/dev/full")) {
    check_error(run_cli(kQkv + "--out o.npy --lse /dev/full", d.dir()), 3, "No space left");
    CHECK(is_char_device("/dev/full"));
    CHECK_FALSE(fs::exists(d.file("o.npy")));  // written through first: nothing renamed
  }
  // --out /dev/stdout: the .npy image goes to stdout, the summary line to stdout after it.
  {
    const Result r = run_cli(kQkv + "--out /dev/stdout", d.dir());
    CHECK(r.code == 0);
    CHECK(r.output.rfind("\x93NUMPY", 0) == 0);
  }
  fs::create_directories(d.file("real"));
  fs::create_symlink("real/o.npy", d.file("o_link.npy"));
  const Result r = run_cli(kQkv + "--out o_link.npy", d.dir());
  INFO(r.output);
  CHECK(r.code == 0);
  CHECK(fs::is_symlink(d.file("o_link.npy")));
  CHECK(read_npy(d.file("real/o.npy")).shape == std::vector<int64_t>{1, 5, 2, 16});
}

TEST_CASE("cli hostile 6: aliased outputs are refused by identity, --s-dmask included",
          "[cli][hostile]") {
  TempDir d;
  save_qkv(d);
  check_error(run_cli(kQkv + "--out o.npy --lse ./o.npy", d.dir()), 2, "same file");
  check_error(run_cli(kQkv + "--out o.npy --dropout 0.1 --s-dmask o.npy", d.dir()), 2,
              "--s-dmask");
  d.write("x.npy", "");
  fs::create_hard_link(d.file("x.npy"), d.file("y.npy"));
  check_error(run_cli(kQkv + "--out x.npy --lse y.npy", d.dir()), 2, "same file");
  CHECK(fs::file_size(d.file("x.npy")) == 0);  // nothing written
}

TEST_CASE("cli hostile 7: inputs that never end are refused, naming the file", "[cli][hostile]") {
  if (!fs::exists("/dev/zero")) return;
  TempDir d;
  save_qkv(d);
  check_error(run_cli("run --backend cpu --q /dev/zero --k k.npy --v v.npy --out o.npy", d.dir()),
              2, "/dev/zero: not a .npy file");
  check_error(run_cli("run --config /dev/zero --list", d.dir()), 2, "/dev/zero: more than");
  check_error(run_cli("verify --backend cpu --suite /dev/zero", d.dir()), 2,
              "/dev/zero: more than");
  // The tuned table is read by every command that runs a kernel: it must not stall them.
  const Result r = run_cli("env FLASHPLUS_TUNED_TABLE=/dev/zero timeout 60 '" +
                               std::string(FLASHPLUS_CLI_PATH) + "' " + kQkv + "--out o.npy",
                           d.dir());
  INFO(r.output);
  CHECK(r.code != 124);  // not the timeout
  CHECK_THAT(r.output, Catch::Contains("/dev/zero"));
}

TEST_CASE("cli hostile 9: NaN and inf time limits are refused", "[cli][hostile]") {
  TempDir d;
  d.write("m.json", model("64"));
  for (const std::string& args :
       {std::string("bench --backend cpu --config m.json --max-time nan"),
        std::string("bench --backend cpu --config m.json --max-time inf --max-noise 0"),
        std::string("bench --backend cpu --config m.json --min-time nan"),
        std::string("bench --backend cpu --config m.json --max-noise nan"),
        std::string("autotune --backend cpu --config m.json --out t.json --max-time nan"),
        std::string("autotune --backend cpu --config m.json --out t.json --budget nan"),
        std::string("autotune --backend cpu --config m.json --out t.json --budget inf")}) {
    INFO(args);
    const Result r = run_cli(args, d.dir());
    INFO(r.output);
    CHECK(r.code == 2);
    CHECK_THAT(r.output, Catch::Contains("finite"));
  }
  CHECK_FALSE(fs::exists(d.file("t.json")));
}

TEST_CASE("cli hostile 10: run --config passes a prefill workload's dropout, as bench does",
          "[cli][hostile]") {
  // The library refuses dropout with softcap: with the dropout passed, run and bench refuse the
  // same file the same way (run used to pass 0 and time a plain softcap call).
  TempDir d;
  std::string m = model("64");
  m.replace(m.find("\"modes\""), 0, "\"softcap\": 30, \"dropout\": 0.1, ");
  d.write("m.json", m);
  const Result run = run_cli("run --backend cpu --config m.json", d.dir());
  const Result bench = run_cli("bench --backend cpu --config m.json --max-time 0.05", d.dir());
  check_error(run, 2, "dropout");
  check_error(bench, 2, "dropout");
}

TEST_CASE("cli hostile 12: a failed --csv keeps no --json either and names the reason",
          "[cli][hostile]") {
  TempDir d;
  d.write("m.json", model("64"));
  // --csv names a FIFO nobody reads... would block; use a full device instead.
  if (!is_char_device("/dev/full")) return;
  const Result r = run_cli(
      "bench --backend cpu --config m.json --max-time 0.05 --json b.json --csv /dev/full",
      d.dir());
  check_error(r, 3, "No space left");
  CHECK_THAT(r.output, !Catch::Contains("Success"));
  CHECK_FALSE(fs::exists(d.file("b.json")));
  CHECK(d.listing() == std::vector<std::string>{"m.json"});
  // --json and --csv naming one file: refused before running.
  check_error(run_cli("bench --backend cpu --config m.json --json r.txt --csv ./r.txt", d.dir()),
              2, "same file");
}

TEST_CASE("cli hostile: duplicate keys, NUL bytes and wrapped seeds are refused",
          "[cli][hostile]") {
  TempDir d;
  save_qkv(d);
  d.write("dup.json", R"({"schema_version": 2, "name": "t", "nheads": 2, "nheads": 4})");
  check_error(run_cli("run --config dup.json --list", d.dir()), 2,
              "dup.json: key 'nheads' appears twice");
  d.write("nul.json", model("64") + std::string(1, '\0') + "{\"junk\": 1}");
  check_error(run_cli("run --config nul.json --list", d.dir()), 2, "NUL byte");
  for (const char* seed : {"-1", "1e23", "1.5", "18446744073709551616"}) {
    INFO(seed);
    const Result r =
        run_cli(kQkv + "--out o.npy --dropout 0.1 --seed " + std::string(seed), d.dir());
    INFO(r.output);
    CHECK(r.code == 2);
    CHECK_FALSE(fs::exists(d.file("o.npy")));
  }
  CHECK(run_cli(kQkv + "--out o.npy --dropout 0.1 --seed 18446744073709551615", d.dir()).code ==
        0);
}

TEST_CASE("cli hostile: a full stdout is an error, not exit 0", "[cli][hostile]") {
  if (!is_char_device("/dev/full")) return;
  // stderr to the pipe we read, stdout to the full device.
  Result r;
  FILE* p = popen(("'" + std::string(FLASHPLUS_CLI_PATH) + "' info 2>&1 >/dev/full").c_str(), "r");
  REQUIRE(p);
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  const int st = pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  INFO(r.output);
  CHECK(r.code == 3);
  CHECK_THAT(r.output, Catch::Contains("cannot write to stdout"));
}

TEST_CASE("cli hostile: autotune checks --out is writable before tuning", "[cli][hostile]") {
  TempDir d;
  d.write("m.json", model("64"));
  check_error(run_cli("autotune --backend cpu --config m.json --out missing/t.json", d.dir()), 2,
              "does not exist");
  if (::geteuid() == 0) return;  // root writes anywhere
  fs::create_directories(d.file("ro"));
  fs::permissions(d.file("ro"), fs::perms::owner_read | fs::perms::owner_exec);
  const Result r = run_cli("autotune --backend cpu --config m.json --out ro/t.json", d.dir());
  fs::permissions(d.file("ro"), fs::perms::owner_all);
  check_error(r, 2, "cannot create files");
  CHECK_THAT(r.output, !Catch::Contains("autotune on"));  // refused before tuning started
}

TEST_CASE("cli hostile: a tiny suite that expands to 10^8 cases is refused", "[cli][hostile]") {
  TempDir d;
  std::string ten = "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]";
  d.write("s.json", R"({"schema_version": 1, "name": "big", "matrices": [{"name": "m", "axes": {)"
                        R"("batch": )" + ten + R"(, "nheads": )" + ten + R"(, "head_dim": )" + ten +
                        R"(, "seqlen_q": )" + ten + R"(, "seqlen_k": )" + ten +
                        R"(, "dropout": [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],)"
                        R"( "softcap": )" + ten + R"(, "scale": )" + ten + "}}]}");
  check_error(run_cli("verify --backend cpu --suite s.json --list", d.dir()), 2,
              "expands to 100000000 cases");
}

#endif  // FLASHPLUS_CLI_PATH
