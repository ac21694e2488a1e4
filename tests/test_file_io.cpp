// cli/file_io.h: how every CLI output is written (temporary + rename, devices and FIFOs written
// through, symlinks followed, all-or-none sets, temporaries removed on failure and on signals) and
// how inputs are read (bounded). Issue 17, bugs 4, 5, 6, 7, 11, 12.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "cli_test_util.h"
#include "common.h"
#include "file_io.h"
#include "flashplus/tuning.h"
#include "npy.h"

using namespace flashplus;
using namespace flashplus::cli;
namespace fs = std::filesystem;
using clitest::TempDir;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool is_char_device(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISCHR(st.st_mode);
}

// Hidden names in the folder (temporaries, backups, probes).
size_t hidden(const TempDir& d) {
  size_t n = 0;
  for (const auto& name : d.listing()) n += name[0] == '.';
  return n;
}

}  // namespace

TEST_CASE("file_io: devices are written through, never replaced (bug 4)", "[file_io]") {
  if (!is_char_device("/dev/null")) return;
  write_file_atomic("/dev/null", "some bytes");
  CHECK(is_char_device("/dev/null"));
  if (is_char_device("/dev/full")) {
    // A full device fails the write with its reason, and stays a device.
    CHECK_THROWS_WITH(write_file_atomic("/dev/full", std::string(4096, 'x')),
                      Catch::Contains("/dev/full") && Catch::Contains("No space left"));
    CHECK(is_char_device("/dev/full"));
  }
}

TEST_CASE("file_io: a FIFO is written through", "[file_io]") {
  TempDir d;
  const std::string fifo = d.file("pipe");
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  std::string got;
  std::thread reader([&] { got = slurp(fifo); });
  write_file_atomic(fifo, "through the pipe");
  reader.join();
  CHECK(got == "through the pipe");
  struct stat st {};
  REQUIRE(::stat(fifo.c_str(), &st) == 0);
  CHECK(S_ISFIFO(st.st_mode));
  CHECK(hidden(d) == 0);
}

TEST_CASE("file_io: a symlink is written through to its target (bug 4)", "[file_io]") {
  TempDir d;
  fs::create_directories(d.file("sub"));
  d.write("sub/real.json", "old");
  fs::create_symlink("sub/real.json", d.file("link.json"));
  write_file_atomic(d.file("link.json"), "new");
  CHECK(fs::is_symlink(d.file("link.json")));
  CHECK(slurp(d.file("sub/real.json")) == "new");
  // A dangling link: its target is created, the link stays.
  fs::create_symlink("sub/later.json", d.file("dangling.json"));
  write_file_atomic(d.file("dangling.json"), "made");
  CHECK(fs::is_symlink(d.file("dangling.json")));
  CHECK(slurp(d.file("sub/later.json")) == "made");
  CHECK(hidden(d) == 0);
}

TEST_CASE("file_io: a replaced file keeps its permission bits", "[file_io]") {
  TempDir d;
  d.write("t.csv", "old");
  fs::permissions(d.file("t.csv"), fs::perms::owner_read | fs::perms::owner_write |
                                       fs::perms::group_read);
  write_file_atomic(d.file("t.csv"), "new");
  CHECK(slurp(d.file("t.csv")) == "new");
  CHECK((fs::status(d.file("t.csv")).permissions() & fs::perms::all) ==
        (fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read));
}

TEST_CASE("file_io: a set whose second rename fails changes nothing (bug 5)", "[file_io]") {
  TempDir d;
  d.write("a.npy", "previous a");
  {
    FileSet f;
    f.stage(d.file("a.npy"), "new a");
    f.stage(d.file("b.npy"), "new b");
    f.stage(d.file("c.npy"), "new c");
    // b's destination becomes a non-empty directory after staging: its rename must fail.
    fs::create_directories(d.file("b.npy/inside"));
    CHECK_THROWS_WITH(f.commit(), Catch::Contains("b.npy") &&
                                      Catch::Contains("no output was changed"));
  }
  CHECK(slurp(d.file("a.npy")) == "previous a");  // rolled back
  CHECK(fs::is_directory(d.file("b.npy")));
  CHECK_FALSE(fs::exists(d.file("c.npy")));
  CHECK(hidden(d) == 0);  // no temporaries, no backups

  // A new first file is removed again by the rollback.
  {
    FileSet f;
    f.stage(d.file("x.npy"), "x");
    f.stage(d.file("y.npy"), "y");
    fs::create_directories(d.file("y.npy/inside"));
    CHECK_THROWS(f.commit());
  }
  CHECK_FALSE(fs::exists(d.file("x.npy")));
  CHECK(hidden(d) == 0);

  // And the ordinary case: all renamed, backups gone.
  {
    FileSet f;
    f.stage(d.file("a.npy"), "A");
    f.stage(d.file("z.npy"), "Z");
    f.commit();
  }
  CHECK(slurp(d.file("a.npy")) == "A");
  CHECK(slurp(d.file("z.npy")) == "Z");
  CHECK(hidden(d) == 0);
}

TEST_CASE("file_io: outputs are compared by file identity, not by string (bug 6)", "[file_io]") {
  TempDir d;
  const std::string o = d.file("o.npy");
  const std::string dotted = d.dir() + "/./o.npy";
  CHECK(file_identity(o) == file_identity(dotted));  // neither exists yet: canonical paths
  CHECK(file_identity(o) != file_identity(d.file("p.npy")));
  CHECK_THROWS_WITH(check_distinct_outputs({{"--out", o}, {"--lse", dotted}}),
                    Catch::Contains("--out") && Catch::Contains("--lse") &&
                        Catch::Contains("same file"));
  d.write("o.npy", "x");
  fs::create_hard_link(o, d.file("hard.npy"));
  fs::create_symlink("o.npy", d.file("soft.npy"));
  CHECK_THROWS(check_distinct_outputs({{"--out", o}, {"--dq", d.file("hard.npy")}}));
  CHECK_THROWS(check_distinct_outputs({{"--out", o}, {"--s-dmask", d.file("soft.npy")}}));
  CHECK_NOTHROW(check_distinct_outputs({{"--out", o}, {"--lse", d.file("p.npy")}, {"--dq", ""}}));
  if (is_char_device("/dev/null"))  // nothing is replaced there: may be repeated
    CHECK_NOTHROW(check_distinct_outputs({{"--out", "/dev/null"}, {"--lse", "/dev/null"}}));
  // A FileSet refuses the same file twice too.
  FileSet f;
  f.stage(o, "1");
  CHECK_THROWS_WITH(f.stage(d.file("hard.npy"), "2"), Catch::Contains("same file"));
}

TEST_CASE("file_io: SIGINT/SIGTERM while staged leave no temporary (bug 11)", "[file_io]") {
  for (int sig : {SIGINT, SIGTERM}) {
    TempDir d;
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      // As in the CLI: the default disposition (the test runner installs its own handlers).
      std::signal(SIGINT, SIG_DFL);
      std::signal(SIGTERM, SIG_DFL);
      FileSet f;
      f.stage(d.file("out.npy"), std::string(1 << 20, 'x'));
      f.stage(d.file("lse.npy"), "y");
      ::raise(sig);
      ::_exit(0);  // not reached: the signal ends the process
    }
    int st = 0;
    REQUIRE(::waitpid(pid, &st, 0) == pid);
    INFO("signal " << sig);
    CHECK(WIFSIGNALED(st));
    if (WIFSIGNALED(st)) CHECK(WTERMSIG(st) == sig);
    CHECK(d.listing().empty());
  }
}

TEST_CASE("file_io: a program's own signal handler still runs while files are staged",
          "[file_io]") {
  static volatile std::sig_atomic_t seen = 0;
  seen = 0;
  auto old = std::signal(SIGINT, [](int) { seen = 1; });
  TempDir d;
  {
    FileSet f;
    f.stage(d.file("t.json"), "x");
    ::raise(SIGINT);  // handled by the program (autotune's "stop after this key")
    f.commit();
  }
  std::signal(SIGINT, old);
  CHECK(seen == 1);
  CHECK(slurp(d.file("t.json")) == "x");
  CHECK(hidden(d) == 0);
}

TEST_CASE("file_io: write failures name the file and leave nothing behind", "[file_io]") {
  TempDir d;
  CHECK_THROWS_WITH(write_file_atomic(d.file("missing/x.json"), "x"),
                    Catch::Contains("does not exist"));
  CHECK_THROWS_WITH(check_output_writable(d.file("missing/x.json")),
                    Catch::Contains("does not exist"));
  CHECK_NOTHROW(check_output_writable(d.file("fine.json")));
  CHECK(d.listing().empty());  // the probe is removed
  if (::geteuid() != 0) {      // root writes anywhere
    fs::create_directories(d.file("ro"));
    fs::permissions(d.file("ro"), fs::perms::owner_read | fs::perms::owner_exec);
    CHECK_THROWS_WITH(check_output_writable(d.file("ro/t.json")),
                      Catch::Contains("cannot create files"));
    fs::permissions(d.file("ro"), fs::perms::owner_all);
  }
}

TEST_CASE("file_io: bounded reads refuse streams that never end and oversized files (bug 7)",
          "[file_io]") {
  TempDir d;
  d.write("small.json", "{}");
  CHECK(read_file_bounded(d.file("small.json"), 100) == "{}");
  d.write("big.json", std::string(101, ' '));
  CHECK_THROWS_WITH(read_file_bounded(d.file("big.json"), 100),
                    Catch::Contains("big.json") && Catch::Contains("101 bytes"));
  if (fs::exists("/dev/zero"))
    CHECK_THROWS_WITH(read_file_bounded("/dev/zero", 1 << 20),
                      Catch::Contains("/dev/zero") && Catch::Contains("never ends"));
  CHECK_THROWS_WITH(read_file_bounded(d.file("nope"), 10), Catch::Contains("no such file"));
  CHECK_THROWS_WITH(read_file_bounded(d.dir(), 10), Catch::Contains("is a directory"));
}

TEST_CASE("file_io: .npy reading stops at what the header announces (bug 7)", "[file_io]") {
  TempDir d;
  if (fs::exists("/dev/zero"))
    CHECK_THROWS_WITH(read_npy("/dev/zero"), Catch::Contains("/dev/zero") &&
                                                 Catch::Contains("bad magic"));
  // A header announcing 2^38 floats in a small file: refused from the file size, not read.
  const std::vector<float> four = {1, 2, 3, 4};
  const std::string img = encode_npy(four.data(), {4});
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (262144, 1048576), }";
  header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::string huge = std::string("\x93NUMPY\x01\x00", 8);
  huge += static_cast<char>(header.size() & 0xff);
  huge += static_cast<char>(header.size() >> 8);
  huge += header + std::string(16, '\0');
  d.write("huge.npy", huge);
  CHECK_THROWS_WITH(read_npy(d.file("huge.npy")),
                    Catch::Contains("huge.npy") && Catch::Contains("truncated data"));

  // A FIFO carrying a valid array and then more: refused after one byte past the data.
  const std::string fifo = d.file("in.npy");
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  auto old = std::signal(SIGPIPE, SIG_IGN);
  std::thread writer([&] {
    const int fd = ::open(fifo.c_str(), O_WRONLY);
    if (fd < 0) return;
    const std::string body = img + std::string(1 << 16, 'z');
    (void)!::write(fd, body.data(), body.size());
    ::close(fd);
  });
  CHECK_THROWS_WITH(read_npy(fifo), Catch::Contains("trailing bytes"));
  writer.join();
  std::signal(SIGPIPE, old);
  // The same array alone through a FIFO reads fine.
  std::thread writer2([&] {
    const int fd = ::open(fifo.c_str(), O_WRONLY);
    if (fd < 0) return;
    (void)!::write(fd, img.data(), img.size());
    ::close(fd);
  });
  CHECK(read_npy(fifo).data == four);
  writer2.join();
}

TEST_CASE("file_io: a tuned table that never ends is refused (bug 7)", "[file_io]") {
  if (!fs::exists("/dev/zero")) return;
  TunedTable t;
  const Status st = TunedTable::load("/dev/zero", &t);
  CHECK_FALSE(st.ok());
  CHECK_THAT(st.message(), Catch::Contains("/dev/zero") && Catch::Contains("never ends"));
}
