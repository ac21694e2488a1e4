// NumPy .npy files: float32 (and int32 for index arrays), C order, format versions 1.0/2.0/3.0,
// little-endian.
//
// Reading validates everything (magic, header dict, dtype, order, size) and throws
// cli::Error(kExitUsage, "<path>: <reason>") on any problem. Writing is atomic: data goes to a
// temporary file in the destination's directory that is renamed over the target only on commit.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace flashplus::cli {

struct NpyArray {
  std::vector<int64_t> shape;  // () for a scalar
  std::vector<float> data;     // C order
  int64_t numel() const;
  std::string shape_str() const;  // "(2, 3)"; "(5,)" for one dimension, as NumPy prints
};

// int32 arrays (cu_seqlens, cache_seqlens, block tables, ...): '<i4' only; any other dtype is a
// one-line usage error naming the file.
struct NpyIntArray {
  std::vector<int64_t> shape;
  std::vector<int32_t> data;  // C order
  std::string shape_str() const;
};

// Parses a whole .npy file image (for tests and for read_npy). `name` prefixes error messages.
NpyArray parse_npy(const std::string& bytes, const std::string& name);
NpyArray read_npy(const std::string& path);

NpyIntArray parse_npy_int32(const std::string& bytes, const std::string& name);
NpyIntArray read_npy_int32(const std::string& path);
std::string encode_npy_int32(const int32_t* data, const std::vector<int64_t>& shape);

// The file image of a float32 C-order array (format 1.0, header padded to 64 bytes).
std::string encode_npy(const float* data, const std::vector<int64_t>& shape);

// Writes several outputs all-or-nothing: stage() writes each array to a temporary file next to its
// destination; commit() renames them all into place. Anything staged but not committed (an error
// or exception in between) is deleted by the destructor, so no half-written output remains.
class OutputSet {
 public:
  OutputSet() = default;
  OutputSet(const OutputSet&) = delete;
  OutputSet& operator=(const OutputSet&) = delete;
  ~OutputSet();
  void stage(const std::string& path, const float* data, const std::vector<int64_t>& shape);
  void stage_bytes(const std::string& path, const std::string& bytes);
  void commit();

 private:
  struct Pending {
    std::string tmp, dest;
  };
  std::vector<Pending> pending_;
};

// Throws a usage error when the directory that would hold `path` does not exist, so a run fails
// before computing rather than after.
void check_output_dir(const std::string& path);

}  // namespace flashplus::cli
