// Every file the CLI writes or reads from outside goes through here.
//
// Writing (FileSet, write_file_atomic):
//  - a regular destination (or a new one) is written to a hidden temporary in its own directory
//    (".NAME.tmpXXXXXXXX") that is renamed over it only on commit, so a reader sees either the
//    previous file or the complete new one;
//  - a symlink is followed: its target is what gets replaced, the link stays;
//  - a destination that exists and is not a regular file (a device such as /dev/null or
//    /dev/stdout, a FIFO) is written *through*, never replaced;
//  - several files staged in one FileSet are renamed all or none: when a later rename fails the
//    earlier ones are rolled back (the previous files restored, new ones removed);
//  - temporaries are removed on failure, by the destructor, and by SIGINT/SIGTERM/SIGHUP/
//    SIGQUIT/SIGPIPE arriving while any exist (the signal then ends the process as it would
//    have). SIGKILL cannot be caught: it can leave a temporary, never a torn destination.
//
// Reading (read_file_bounded): refuses files larger than a bound, and streams that never end
// (/dev/zero), before allocating more than the bound; every message names the file.
#pragma once
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace flashplus::cli {

class FileSet {
 public:
  FileSet() = default;
  FileSet(const FileSet&) = delete;
  FileSet& operator=(const FileSet&) = delete;
  ~FileSet();  // removes whatever is staged and not committed

  // Writes `bytes` to a temporary next to `path` (or keeps them for a write-through destination).
  // Throws a usage error when `path` names the same file as one staged before (file identity).
  void stage(const std::string& path, const std::string& bytes);
  // Puts every staged file in place, all or none; throws (nothing changed) on failure.
  void commit();
  size_t size() const { return pending_.size(); }

 private:
  struct Pending {
    std::string dest;      // as given, for messages
    std::string target;    // symlinks resolved: what is replaced or written through
    std::string tmp;       // "" for a write-through destination
    std::string bytes;     // write-through only
    std::string identity;  // file_identity(dest)
  };
  std::vector<Pending> pending_;
};

// One file, atomically (a FileSet of one).
void write_file_atomic(const std::string& path, const std::string& bytes);

// Follows `path` through symlinks (relative ones against their directory), also dangling ones,
// to the path that would be opened. At most 40 links, as the kernel.
std::string resolve_symlinks(const std::string& path);

// A key equal for two paths that name the same file: "dev:ino" of an existing file, else the
// canonical absolute path (symlinks, "." and ".." resolved).
std::string file_identity(const std::string& path);

// Outputs given as (flag, path): throws a usage error naming both flags when two name the same
// file (by identity, so "o.npy" and "./o.npy" or a hard link collide). Character devices
// (/dev/null) may be repeated: nothing is replaced there.
void check_distinct_outputs(const std::vector<std::pair<std::string, std::string>>& outputs);

// Throws a usage error when the directory that would hold `path` (symlinks followed) does not
// exist or `path` is a directory, so a run fails before computing rather than after.
void check_output_dir(const std::string& path);

// Throws a usage error when `path` cannot be written: its directory is missing or not writable,
// it is a directory, or it exists and is not writable. Creates and removes a probe file in the
// directory (for a regular or new destination), so the check is what the final write will need.
void check_output_writable(const std::string& path);

// The whole file, at most `max_bytes`; throws a usage error "<path>: ..." when it is missing, a
// directory, unreadable, or longer than `max_bytes` (a regular file is refused from its size, a
// stream after reading max_bytes + 1).
std::string read_file_bounded(const std::string& path, size_t max_bytes);

// Reads exactly `n` more bytes of an open descriptor into `out` (appending, growing as data
// arrives so a short stream never allocates `n`); false at a premature end of file.
bool read_exact(int fd, size_t n, std::string* out, const std::string& path);

// Bound for JSON inputs (model configs, suites, peaks cache): 16 MiB.
constexpr size_t kMaxJsonBytes = size_t{16} << 20;

}  // namespace flashplus::cli
