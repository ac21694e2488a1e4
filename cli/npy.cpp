#include "npy.h"

#include <fmt/format.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include "common.h"

namespace flashplus::cli {
namespace fs = std::filesystem;

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

std::string NpyArray::shape_str() const {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) s += ",";
  return s + ")";
}

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;

// A tiny parser for the header: a Python dict literal with string keys and values that are
// strings, True/False, or tuples of integers. Nothing else appears in a valid .npy header.
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& name) : s_(text), name_(name) {}

  struct Value {
    enum Kind { str, boolean, tuple } kind;
    std::string s;
    bool b = false;
    std::vector<int64_t> t;
  };

  std::map<std::string, Value> parse_dict() {
    std::map<std::string, Value> out;
    skip_ws();
    expect('{');
    for (;;) {
      skip_ws();
      if (peek() == '}') {
        ++i_;
        break;
      }
      std::string key = parse_string();
      skip_ws();
      expect(':');
      skip_ws();
      Value v = parse_value();
      if (!out.emplace(key, v).second) fail(fmt::format("duplicate key '{}'", key));
      skip_ws();
      if (peek() == ',') {
        ++i_;
      } else if (peek() != '}') {
        fail("expected ',' or '}' in the header dict");
      }
    }
    skip_ws();
    if (i_ != s_.size()) fail("trailing characters after the header dict");
    return out;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw usage_error(fmt::format("{}: corrupt .npy header: {}", name_, why));
  }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r'))
      ++i_;
  }
  void expect(char c) {
    if (peek() != c) fail(fmt::format("expected '{}' at offset {}", c, i_));
    ++i_;
  }
  std::string parse_string() {
    const char q = peek();
    if (q != '\'' && q != '"') fail(fmt::format("expected a quoted string at offset {}", i_));
    ++i_;
    std::string r;
    while (i_ < s_.size() && s_[i_] != q) r += s_[i_++];
    if (i_ >= s_.size()) fail("unterminated string");
    ++i_;
    return r;
  }
  Value parse_value() {
    Value v{};
    const char c = peek();
    if (c == '\'' || c == '"') {
      v.kind = Value::str;
      v.s = parse_string();
    } else if (s_.compare(i_, 4, "True") == 0) {
      v.kind = Value::boolean;
      v.b = true;
      i_ += 4;
    } else if (s_.compare(i_, 5, "False") == 0) {
      v.kind = Value::boolean;
      i_ += 5;
    } else if (c == '(') {
      v.kind = Value::tuple;
      ++i_;
      for (;;) {
        skip_ws();
        if (peek() == ')') {
          ++i_;
          break;
        }
        if (!std::isdigit(static_cast<unsigned char>(peek())))
          fail(fmt::format("shape entries must be non-negative integers (offset {})", i_));
        int64_t n = 0;
        while (std::isdigit(static_cast<unsigned char>(peek()))) {
          if (n > (int64_t{1} << 50)) fail("shape entry too large");
          n = n * 10 + (s_[i_++] - '0');
        }
        if (peek() == 'L') ++i_;  // Python 2 long suffix, still found in old files
        v.t.push_back(n);
        skip_ws();
        if (peek() == ',') {
          ++i_;
        } else if (peek() != ')') {
          fail("expected ',' or ')' in the shape tuple");
        }
      }
    } else {
      fail(fmt::format("unexpected value at offset {}", i_));
    }
    return v;
  }

  const std::string& s_;
  const std::string& name_;
  size_t i_ = 0;
};

std::string describe_descr(const std::string& d) {
  static const std::map<std::string, const char*> names = {{"<f4", "float32"},
                                                           {"<f2", "float16"},
                                                           {"<f8", "float64"},
                                                           {"<i4", "int32"},
                                                           {"<i8", "int64"},
                                                           {"|u1", "uint8"},
                                                           {"|i1", "int8"},
                                                           {"|b1", "bool"},
                                                           {"<u2", "uint16"},
                                                           {">f4", "big-endian float32"},
                                                           {">f8", "big-endian float64"},
                                                           {"<c8", "complex64"},
                                                           {"<V2", "void16 (bfloat16?)"}};
  auto it = names.find(d);
  return it == names.end() ? fmt::format("'{}'", d) : fmt::format("'{}' ({})", d, it->second);
}

}  // namespace

namespace {

// What the header of a .npy image announces.
struct NpyHeader {
  std::vector<int64_t> shape;
  size_t data_start = 0;  // offset of the first data byte
  size_t data_bytes = 0;  // numel * 4
};

// The fixed prefix: magic, version, header length. Returns false when `bytes` is too short to
// tell the header length yet; throws on a bad magic string or version.
bool parse_npy_prefix(const std::string& bytes, const std::string& name, size_t* header_start,
                      size_t* header_len) {
  auto fail = [&](const std::string& why) -> Error {
    return usage_error(fmt::format("{}: {}", name, why));
  };
  if (bytes.size() < kMagicLen + 4 || bytes.compare(0, kMagicLen, kMagic, kMagicLen) != 0)
    throw fail("not a .npy file (bad magic string)");
  const int major = static_cast<unsigned char>(bytes[6]);
  const int minor = static_cast<unsigned char>(bytes[7]);
  *header_len = 0;
  if (major == 1) {
    *header_len = static_cast<unsigned char>(bytes[8]) |
                  (static_cast<size_t>(static_cast<unsigned char>(bytes[9])) << 8);
    *header_start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return false;
    for (int i = 0; i < 4; ++i)
      *header_len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    *header_start = 12;
  } else {
    throw fail(fmt::format("unsupported .npy format version {}.{}", major, minor));
  }
  return true;
}

// Parses and validates the header of a .npy image whose dtype must be `want_descr` (4-byte
// elements); `bytes` holds at least the whole header.
NpyHeader parse_npy_header(const std::string& bytes, const std::string& name,
                           const std::string& want_descr) {
  auto fail = [&](const std::string& why) -> Error {
    return usage_error(fmt::format("{}: {}", name, why));
  };
  size_t header_len = 0, header_start = 0;
  if (!parse_npy_prefix(bytes, name, &header_start, &header_len))
    throw fail("truncated .npy header");
  if (header_start + header_len > bytes.size())
    throw fail(fmt::format("truncated .npy header ({} bytes announced, {} present)", header_len,
                           bytes.size() - header_start));
  const std::string header = bytes.substr(header_start, header_len);
  auto dict = HeaderParser(header, name).parse_dict();

  for (const auto& kv : dict) {
    if (kv.first != "descr" && kv.first != "fortran_order" && kv.first != "shape")
      throw fail(fmt::format("corrupt .npy header: unexpected key '{}'", kv.first));
  }
  auto get = [&](const char* key, HeaderParser::Value::Kind kind) -> const HeaderParser::Value& {
    auto it = dict.find(key);
    if (it == dict.end()) throw fail(fmt::format("corrupt .npy header: missing key '{}'", key));
    if (it->second.kind != kind)
      throw fail(fmt::format("corrupt .npy header: key '{}' has the wrong type", key));
    return it->second;
  };
  const std::string descr = get("descr", HeaderParser::Value::str).s;
  const bool fortran = get("fortran_order", HeaderParser::Value::boolean).b;
  NpyHeader h;
  h.shape = get("shape", HeaderParser::Value::tuple).t;
  if (descr != want_descr) {
    if (want_descr == "<i4")
      throw fail(
          fmt::format("dtype {} is not supported: expected int32 ('<i4'); convert with "
                      "a.astype(np.int32)",
                      describe_descr(descr)));
    throw fail(
        fmt::format("dtype {} is not supported: expected float32 ('<f4'); convert with "
                    "a.astype(np.float32)",
                    describe_descr(descr)));
  }
  if (fortran && h.shape.size() > 1)
    throw fail(
        "Fortran-order arrays are not supported: expected C order; convert with "
        "np.ascontiguousarray(a)");
  int64_t n = 1;
  for (int64_t s : h.shape) {
    if (s != 0 && n > (int64_t{1} << 40) / s) throw fail("shape too large");
    n *= s;
  }
  h.data_start = header_start + header_len;
  h.data_bytes = static_cast<size_t>(n) * 4;
  return h;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  NpyArray tmp;
  tmp.shape = shape;
  return tmp.shape_str();
}

// Parses and validates a .npy image whose dtype must be `want_descr` (4-byte elements); returns the
// shape and copies the raw little-endian data into `raw` (numel * 4 bytes).
std::vector<int64_t> parse_npy_raw(const std::string& bytes, const std::string& name,
                                   const std::string& want_descr, std::vector<uint8_t>* raw) {
  const NpyHeader h = parse_npy_header(bytes, name, want_descr);
  const size_t want = h.data_bytes;
  const size_t have = bytes.size() - h.data_start;
  if (have < want)
    throw usage_error(fmt::format("{}: truncated data: shape {} needs {} bytes, file has {}", name,
                                  shape_string(h.shape), want, have));
  if (have > want)
    throw usage_error(fmt::format("{}: {} unexpected trailing bytes after the data of shape {}",
                                  name, have - want, shape_string(h.shape)));
  raw->resize(want);
  if (want) std::memcpy(raw->data(), bytes.data() + h.data_start, want);  // little-endian host
  return h.shape;
}

// Physical memory of this machine in bytes (0 when unknown).
uint64_t physical_memory() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0;
}

// The image of a .npy file, read header first: the data is read only once the header is valid,
// and only as many bytes as it announces (plus one to see the end), so /dev/zero, a stream that
// never ends, or a header announcing more than the machine's memory is refused before allocating.
std::string read_npy_image(const std::string& path, const std::string& want_descr) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) throw usage_error(fmt::format("{}: no such file", path));
    throw usage_error(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  }
  if (S_ISDIR(st.st_mode)) throw usage_error(fmt::format("{}: is a directory", path));
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw usage_error(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  std::string img;
  read_exact(fd, 12, &img, path);  // short files are judged by the parser below
  size_t header_start = 0, header_len = 0;
  if (img.size() < 10 || !parse_npy_prefix(img, path, &header_start, &header_len))
    (void)parse_npy_header(img, path, want_descr);  // throws the right message
  constexpr size_t kMaxHeader = size_t{1} << 20;
  if (header_len > kMaxHeader)
    throw usage_error(fmt::format("{}: corrupt .npy header: {} bytes announced (at most {})",
                                  path, header_len, kMaxHeader));
  if (header_start + header_len > img.size())
    read_exact(fd, header_start + header_len - img.size(), &img, path);
  const NpyHeader h = parse_npy_header(img, path, want_descr);
  if (img.size() > h.data_start + h.data_bytes)  // the 12 bytes read first reach past the data
    return img;  // the parser reports the trailing bytes
  const size_t need = h.data_start + h.data_bytes - img.size();
  if (S_ISREG(st.st_mode)) {
    const uint64_t have = static_cast<uint64_t>(st.st_size) - std::min<uint64_t>(
                                                                  st.st_size, h.data_start);
    if (have < h.data_bytes)
      throw usage_error(fmt::format("{}: truncated data: shape {} needs {} bytes, file has {}",
                                    path, shape_string(h.shape), h.data_bytes, have));
    if (have > h.data_bytes)
      throw usage_error(
          fmt::format("{}: {} unexpected trailing bytes after the data of shape {}", path,
                      have - h.data_bytes, shape_string(h.shape)));
  }
  const uint64_t mem = physical_memory();
  if (mem && h.data_bytes > mem / 2)
    throw usage_error(fmt::format("{}: shape {} needs {} bytes, more than half of this machine's "
                                  "{} bytes of memory",
                                  path, shape_string(h.shape), h.data_bytes, mem));
  if (!read_exact(fd, need, &img, path))
    throw usage_error(fmt::format("{}: truncated data: shape {} needs {} bytes, file has {}", path,
                                  shape_string(h.shape), h.data_bytes,
                                  img.size() - h.data_start));
  std::string extra;
  read_exact(fd, 1, &extra, path);
  if (!extra.empty())
    throw usage_error(fmt::format(
        "{}: unexpected trailing bytes after the data of shape {} (a stream that never ends?)",
        path, shape_string(h.shape)));
  return img;
}

std::string encode_npy_raw(const void* data, const std::vector<int64_t>& shape, const char* descr) {
  std::string shp = "(";
  int64_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    shp += (i ? ", " : "") + std::to_string(shape[i]);
    n *= shape[i];
  }
  if (shape.size() == 1) shp += ",";
  shp += ")";
  std::string header =
      fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", descr, shp);
  // Pad with spaces and a final newline so magic + len + header is a multiple of 64 bytes.
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string out(kMagic, kMagicLen);
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>((header.size() >> 8) & 0xff);
  out += header;
  out.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n) * 4);
  return out;
}

}  // namespace

NpyArray parse_npy(const std::string& bytes, const std::string& name) {
  std::vector<uint8_t> raw;
  NpyArray a;
  a.shape = parse_npy_raw(bytes, name, "<f4", &raw);
  a.data.resize(raw.size() / 4);
  if (!raw.empty()) std::memcpy(a.data.data(), raw.data(), raw.size());
  return a;
}

NpyIntArray parse_npy_int32(const std::string& bytes, const std::string& name) {
  std::vector<uint8_t> raw;
  NpyIntArray a;
  a.shape = parse_npy_raw(bytes, name, "<i4", &raw);
  a.data.resize(raw.size() / 4);
  if (!raw.empty()) std::memcpy(a.data.data(), raw.data(), raw.size());
  return a;
}

NpyIntArray read_npy_int32(const std::string& path) {
  return parse_npy_int32(read_npy_image(path, "<i4"), path);
}

std::string encode_npy_int32(const int32_t* data, const std::vector<int64_t>& shape) {
  return encode_npy_raw(data, shape, "<i4");
}

std::string NpyIntArray::shape_str() const {
  NpyArray tmp;
  tmp.shape = shape;
  return tmp.shape_str();
}

NpyArray read_npy(const std::string& path) { return parse_npy(read_npy_image(path, "<f4"), path); }

std::string encode_npy(const float* data, const std::vector<int64_t>& shape) {
  return encode_npy_raw(data, shape, "<f4");
}

void OutputSet::stage(const std::string& path, const float* data,
                      const std::vector<int64_t>& shape) {
  files_.stage(path, encode_npy(data, shape));
}

void OutputSet::stage_bytes(const std::string& path, const std::string& bytes) {
  files_.stage(path, bytes);
}

void OutputSet::commit() { files_.commit(); }

}  // namespace flashplus::cli
