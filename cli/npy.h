// NumPy .npy files: float32 (and int32 for index arrays), C order, format versions 1.0/2.0/3.0,
// little-endian.
//
// Reading validates everything (magic, header dict, dtype, order, size) and throws
// cli::Error(kExitUsage, "<path>: <reason>") on any problem; the data is read only after the header
// is valid and only as much as it announces. Writing goes through file_io.h (atomic renames).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "file_io.h"

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

// Writes several outputs all-or-nothing through a FileSet (file_io.h: temporaries renamed into
// place, devices and FIFOs written through, symlinks followed): stage() writes each array to a
// temporary next to its destination; commit() puts them all in place or none. Anything staged
// but not committed (an error or exception in between) is deleted by the destructor.
class OutputSet {
 public:
  void stage(const std::string& path, const float* data, const std::vector<int64_t>& shape);
  void stage_bytes(const std::string& path, const std::string& bytes);
  void commit();

 private:
  FileSet files_;
};

}  // namespace flashplus::cli
