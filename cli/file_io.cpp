#include "file_io.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>

#include "common.h"

namespace flashplus::cli {
namespace fs = std::filesystem;

// ---- temporaries removed by fatal signals --------------------------------------------------
//
// A fixed table the handler can walk without allocating: a slot's path is written before the
// slot is marked used, and unmarked before the file is renamed or removed.
namespace {

constexpr int kSlots = 64;
constexpr size_t kPathMax = 4096;
char g_paths[kSlots][kPathMax];
volatile std::sig_atomic_t g_used[kSlots];
int g_live = 0;  // slots in use (the handlers are installed while > 0)
constexpr int kSignals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE};
struct sigaction g_previous[sizeof kSignals / sizeof kSignals[0]];

int signal_index(int sig) {
  for (size_t i = 0; i < sizeof kSignals / sizeof kSignals[0]; ++i)
    if (kSignals[i] == sig) return static_cast<int>(i);
  return -1;
}

extern "C" void on_fatal_signal(int sig, siginfo_t* info, void* ctx) {
  const int i = signal_index(sig);
  if (i < 0) return;
  const struct sigaction& prev = g_previous[i];
  // The program had its own handler (autotune's Ctrl-C: stop after this step): it goes on and
  // cleans up itself.
  if (prev.sa_flags & SA_SIGINFO) {
    if (prev.sa_sigaction) prev.sa_sigaction(sig, info, ctx);
    return;
  }
  if (prev.sa_handler == SIG_IGN) return;
  if (prev.sa_handler != SIG_DFL) {
    prev.sa_handler(sig);
    return;
  }
  for (int s = 0; s < kSlots; ++s)
    if (g_used[s]) ::unlink(g_paths[s]);
  // End the process the way the signal would have.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  ::sigaction(sig, &dfl, nullptr);
  ::raise(sig);
}

void install_handlers() {
  for (size_t i = 0; i < sizeof kSignals / sizeof kSignals[0]; ++i) {
    struct sigaction sa {};
    sa.sa_sigaction = on_fatal_signal;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    for (int s : kSignals) sigaddset(&sa.sa_mask, s);
    ::sigaction(kSignals[i], &sa, &g_previous[i]);
  }
}

void restore_handlers() {
  for (size_t i = 0; i < sizeof kSignals / sizeof kSignals[0]; ++i)
    ::sigaction(kSignals[i], &g_previous[i], nullptr);
}

// Reserves a slot for `path` (before the file is created); -1 when the table is full (the file
// is then only removed on the ordinary paths).
int register_temp(const std::string& path) {
  if (path.size() >= kPathMax) return -1;
  for (int s = 0; s < kSlots; ++s) {
    if (g_used[s]) continue;
    std::memcpy(g_paths[s], path.c_str(), path.size() + 1);
    if (g_live++ == 0) install_handlers();
    g_used[s] = 1;
    return s;
  }
  return -1;
}

void unregister_temp(int slot) {
  if (slot < 0 || !g_used[slot]) return;
  g_used[slot] = 0;
  if (--g_live == 0) restore_handlers();
}

// A temporary file name next to `target`: ".NAME.<kind>XXXXXXXX".
std::string sibling_name(const std::string& target, const char* kind) {
  static std::mt19937 rng{std::random_device{}()};
  const fs::path t(target);
  const fs::path dir = t.parent_path();
  return (dir / fmt::format(".{}.{}{:08x}", t.filename().string(), kind, rng())).string();
}

std::string errno_text(int e) { return std::strerror(e); }

// Writes all of `bytes` to `fd`; returns 0 or the errno of the failure.
int write_all(int fd, const std::string& bytes) {
  size_t off = 0;
  while (off < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + off, bytes.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    off += static_cast<size_t>(n);
  }
  return 0;
}

// A file created by us (temporary or backup) that goes away unless released.
struct Temp {
  std::string path;
  int slot = -1;
  void remove() {
    if (path.empty()) return;
    unregister_temp(slot);
    ::unlink(path.c_str());
    path.clear();
  }
  void release() {  // renamed into place or gone: nothing to remove
    unregister_temp(slot);
    path.clear();
  }
};

// The descriptor a path such as /dev/stdout, /dev/fd/3 or /proc/self/fd/3 names; -1 otherwise.
// Those are written to the descriptor itself: reopening them could truncate or replace what the
// shell redirected stdout to.
int descriptor_path(const std::string& path) {
  if (path == "/dev/stdout") return 1;
  if (path == "/dev/stderr") return 2;
  for (const char* prefix : {"/dev/fd/", "/proc/self/fd/"}) {
    const size_t n = std::strlen(prefix);
    if (path.compare(0, n, prefix) == 0 && path.size() > n &&
        path.find_first_not_of("0123456789", n) == std::string::npos)
      return std::atoi(path.c_str() + n);
  }
  return -1;
}

bool is_regular_or_missing(const std::string& target, struct stat* st, bool* exists) {
  if (::stat(target.c_str(), st) != 0) {
    *exists = false;
    return true;
  }
  *exists = true;
  return S_ISREG(st->st_mode);
}

}  // namespace

std::string resolve_symlinks(const std::string& path) {
  fs::path p(path);
  for (int hops = 0; hops < 40; ++hops) {
    std::error_code ec;
    if (!fs::is_symlink(fs::symlink_status(p, ec))) break;
    const fs::path link = fs::read_symlink(p, ec);
    if (ec) break;
    p = link.is_absolute() ? link : p.parent_path() / link;
  }
  return p.string();
}

std::string file_identity(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0)
    return fmt::format("inode {}:{}", static_cast<unsigned long long>(st.st_dev),
                       static_cast<unsigned long long>(st.st_ino));
  std::error_code ec;
  const fs::path abs = fs::absolute(resolve_symlinks(path), ec);
  const fs::path c = fs::weakly_canonical(abs, ec);
  return "path " + (ec ? abs.lexically_normal().string() : c.string());
}

void check_distinct_outputs(const std::vector<std::pair<std::string, std::string>>& outputs) {
  std::map<std::string, size_t> seen;
  for (size_t i = 0; i < outputs.size(); ++i) {
    const std::string& path = outputs[i].second;
    if (path.empty()) continue;
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && S_ISCHR(st.st_mode)) continue;  // /dev/null twice
    auto [it, fresh] = seen.emplace(file_identity(path), i);
    if (!fresh) {
      const auto& first = outputs[it->second];
      throw usage_error(fmt::format(
          "{}: given as two different outputs ({} {} and {} {} are the same file; each output "
          "needs a file of its own)",
          path, first.first, first.second, outputs[i].first, path));
    }
  }
}

void check_output_dir(const std::string& path) {
  struct stat st {};
  if (descriptor_path(path) >= 0) return;
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
    return;  // a device or FIFO: written through
  const fs::path p(resolve_symlinks(path));
  fs::path dir = p.parent_path();
  if (dir.empty()) dir = ".";
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw usage_error(fmt::format("{}: output directory '{}' does not exist", path, dir.string()));
  if (fs::is_directory(p, ec)) throw usage_error(fmt::format("{}: is a directory", path));
}

void check_output_writable(const std::string& path) {
  check_output_dir(path);
  const std::string target = resolve_symlinks(path);
  struct stat st {};
  bool exists = false;
  if (descriptor_path(path) >= 0 || !is_regular_or_missing(path, &st, &exists)) {
    // Written through: needs write access.
    if (::access(path.c_str(), W_OK) != 0)
      throw usage_error(fmt::format("{}: cannot write: {}", path, errno_text(errno)));
    return;
  }
  // Replaced by rename: the directory must take a new file.
  const std::string probe = sibling_name(target, "probe");
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    const fs::path dir = fs::path(target).parent_path();
    throw usage_error(fmt::format("{}: cannot create files in '{}': {}", path,
                                  dir.empty() ? "." : dir.string(), errno_text(errno)));
  }
  ::close(fd);
  ::unlink(probe.c_str());
}

// ---- FileSet ---------------------------------------------------------------------------------

FileSet::~FileSet() {
  for (auto& p : pending_)
    if (!p.tmp.empty()) {
      ::unlink(p.tmp.c_str());
      for (int s = 0; s < kSlots; ++s)
        if (g_used[s] && p.tmp == g_paths[s]) unregister_temp(s);
    }
}

void FileSet::stage(const std::string& path, const std::string& bytes) {
  check_output_dir(path);
  Pending p;
  p.dest = path;
  p.target = resolve_symlinks(path);
  p.identity = file_identity(path);
  struct stat dev {};
  const bool chr = ::stat(path.c_str(), &dev) == 0 && S_ISCHR(dev.st_mode);
  for (const auto& q : pending_)
    if (!chr && q.identity == p.identity)
      throw usage_error(fmt::format("{} and {} are the same file; each output needs a file of "
                                    "its own",
                                    q.dest, path));
  struct stat st {};
  bool exists = false;
  if (descriptor_path(path) >= 0 || !is_regular_or_missing(path, &st, &exists)) {
    // A device, FIFO or descriptor: written through at commit, never replaced by a regular file.
    p.target = path;
    p.bytes = bytes;
    pending_.push_back(std::move(p));
    return;
  }
  Temp t;
  for (int attempt = 0; attempt < 16; ++attempt) {
    t.path = sibling_name(p.target, "tmp");
    t.slot = register_temp(t.path);
    const int fd = ::open(t.path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0) {
      const int e = errno;
      unregister_temp(t.slot);
      t.path.clear();
      if (e == EEXIST) continue;
      throw usage_error(fmt::format("{}: cannot create a temporary file next to it: {}", path,
                                    errno_text(e)));
    }
    if (exists) (void)::fchmod(fd, st.st_mode & 07777);  // keep the replaced file's mode
    int e = write_all(fd, bytes);
    if (::close(fd) != 0 && e == 0) e = errno;
    if (e != 0) {
      t.remove();
      throw runtime_error(fmt::format("{}: write failed: {}", path, errno_text(e)));
    }
    break;
  }
  if (t.path.empty()) throw runtime_error(fmt::format("{}: cannot name a temporary file", path));
  p.tmp = t.path;
  pending_.push_back(std::move(p));
}

void FileSet::commit() {
  // 1. Write-through destinations first: a failing device (/dev/full) stops everything before
  //    any regular file is replaced.
  for (auto& p : pending_) {
    if (!p.tmp.empty()) continue;
    int e = 0;
    if (const int dfd = descriptor_path(p.target); dfd >= 0) {
      if (dfd == 1) std::fflush(stdout);
      if (dfd == 2) std::fflush(stderr);
      e = write_all(dfd, p.bytes);
    } else {
      const int fd = ::open(p.target.c_str(), O_WRONLY | O_TRUNC | O_NOCTTY | O_CLOEXEC);
      if (fd < 0)
        throw runtime_error(fmt::format("{}: cannot open: {}", p.dest, errno_text(errno)));
      e = write_all(fd, p.bytes);
      if (::close(fd) != 0 && e == 0) e = errno;
    }
    if (e != 0) throw runtime_error(fmt::format("{}: write failed: {}", p.dest, errno_text(e)));
  }
  // 2. Renames, all or none. With more than one file, each existing destination is first
  //    hard-linked to a backup so a failed later rename can put it back.
  size_t renames = 0;
  for (const auto& p : pending_) renames += !p.tmp.empty();
  std::vector<Temp> backups(pending_.size());
  auto remove_backups = [&] {
    for (auto& b : backups) b.remove();
  };
  // 2a. Backups first, before anything is renamed: a failure here changes nothing.
  for (size_t i = 0; i < pending_.size() && renames > 1; ++i) {
    const Pending& p = pending_[i];
    struct stat st {};
    if (p.tmp.empty() || ::stat(p.target.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    Temp& b = backups[i];
    b.path = sibling_name(p.target, "bak");
    b.slot = register_temp(b.path);
    if (::link(p.target.c_str(), b.path.c_str()) != 0) {
      std::error_code ec;  // a file system without hard links: a copy does as well
      if (!fs::copy_file(p.target, b.path, ec)) {
        remove_backups();
        throw runtime_error(fmt::format(
            "{}: cannot keep a backup for the all-or-nothing write: {}; no output was changed",
            p.dest, ec.message()));
      }
    }
  }
  // 2b. Renames; a failure puts back what was renamed before it.
  std::vector<size_t> done;
  for (size_t i = 0; i < pending_.size(); ++i) {
    Pending& p = pending_[i];
    if (p.tmp.empty()) continue;
    if (::rename(p.tmp.c_str(), p.target.c_str()) != 0) {
      const int e = errno;
      std::string undo_failed;
      for (auto it = done.rbegin(); it != done.rend(); ++it) {
        const Pending& q = pending_[*it];
        Temp& b = backups[*it];
        const int r = b.path.empty() ? ::unlink(q.target.c_str())
                                     : ::rename(b.path.c_str(), q.target.c_str());
        if (r != 0) undo_failed += fmt::format("; could not restore {}: {}", q.dest,
                                               errno_text(errno));
        if (r == 0) b.release();
      }
      remove_backups();
      throw runtime_error(fmt::format("{}: cannot rename '{}' into place: {}; {}", p.dest, p.tmp,
                                      errno_text(e),
                                      undo_failed.empty() ? "no output was changed"
                                                          : "rollback incomplete" + undo_failed));
    }
    // Renamed: the temporary is now the destination.
    for (int s = 0; s < kSlots; ++s)
      if (g_used[s] && p.tmp == g_paths[s]) unregister_temp(s);
    p.tmp.clear();
    done.push_back(i);
  }
  remove_backups();
  pending_.clear();
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  FileSet f;
  f.stage(path, bytes);
  f.commit();
}

// ---- bounded reading -------------------------------------------------------------------------

bool read_exact(int fd, size_t n, std::string* out, const std::string& path) {
  constexpr size_t kChunk = size_t{64} << 20;
  size_t left = n;
  while (left > 0) {
    const size_t want = std::min(left, kChunk);
    const size_t at = out->size();
    out->resize(at + want);
    size_t got = 0;
    while (got < want) {
      const ssize_t r = ::read(fd, &(*out)[at + got], want - got);
      if (r < 0) {
        if (errno == EINTR) continue;
        const int e = errno;
        out->resize(at + got);
        throw usage_error(fmt::format("{}: read error: {}", path, errno_text(e)));
      }
      if (r == 0) {
        out->resize(at + got);
        return false;
      }
      got += static_cast<size_t>(r);
    }
    left -= want;
  }
  return true;
}

std::string read_file_bounded(const std::string& path, size_t max_bytes) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) throw usage_error(fmt::format("{}: no such file", path));
    throw usage_error(fmt::format("{}: cannot open: {}", path, errno_text(errno)));
  }
  if (S_ISDIR(st.st_mode)) throw usage_error(fmt::format("{}: is a directory", path));
  if (S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) > max_bytes)
    throw usage_error(fmt::format("{}: {} bytes is more than the {} bytes this input may have",
                                  path, static_cast<long long>(st.st_size), max_bytes));
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw usage_error(fmt::format("{}: cannot open: {}", path, errno_text(errno)));
  std::string out;
  char buf[1 << 16];
  for (;;) {
    const ssize_t r = ::read(fd, buf, sizeof buf);
    if (r < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      ::close(fd);
      throw usage_error(fmt::format("{}: read error: {}", path, errno_text(e)));
    }
    if (r == 0) break;
    if (out.size() + static_cast<size_t>(r) > max_bytes) {
      ::close(fd);
      throw usage_error(fmt::format("{}: more than the {} bytes this input may have (a stream "
                                    "that never ends, such as /dev/zero?)",
                                    path, max_bytes));
    }
    out.append(buf, static_cast<size_t>(r));
  }
  ::close(fd);
  return out;
}

}  // namespace flashplus::cli
