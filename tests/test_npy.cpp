// cli/npy: float32 .npy read/write, and every way a file can be wrong.
#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "common.h"
#include "npy.h"

using namespace flashplus::cli;
namespace fs = std::filesystem;

namespace {

// A v1.0 file image with an arbitrary header text (padded like NumPy's) and payload.
std::string make_npy(const std::string& dict, const std::string& payload, int major = 1) {
  std::string header = dict;
  const size_t prefix = major == 1 ? 10 : 12;
  header.append((64 - (prefix + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::string out("\x93NUMPY", 6);
  out += static_cast<char>(major);
  out += '\0';
  const size_t n = header.size();
  for (size_t i = 0; i < (major == 1 ? 2u : 4u); ++i)
    out += static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + payload;
}

std::string floats(std::initializer_list<float> v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(&s[0], v.begin(), s.size());
  return s;
}

// The message of the usage error that parse_npy throws (fails the test when none is thrown).
std::string parse_error(const std::string& bytes) {
  try {
    parse_npy(bytes, "x.npy");
  } catch (const Error& e) {
    CHECK(e.exit_code() == kExitUsage);
    return e.what();
  }
  FAIL("parse_npy accepted an invalid file");
  return "";
}

struct TempDir {
  fs::path path;
  TempDir() {
    std::random_device rd;
    path = fs::temp_directory_path() / ("flashplus_npy_test_" + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
  size_t count() const {
    return static_cast<size_t>(
        std::distance(fs::directory_iterator(path), fs::directory_iterator()));
  }
};

}  // namespace

TEST_CASE("npy: encode/parse round trip for several shapes", "[npy]") {
  const std::vector<std::vector<int64_t>> shapes = {{}, {5}, {2, 3, 4}, {1, 7, 3, 2}, {0, 3}};
  for (const auto& shape : shapes) {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    std::vector<float> data(static_cast<size_t>(n));
    for (size_t i = 0; i < data.size(); ++i) data[i] = 0.25f * static_cast<float>(i) - 3.f;
    const std::string bytes = encode_npy(data.data(), shape);
    // NumPy's alignment: magic + length + header is a multiple of 64 bytes, header ends in '\n'.
    const size_t hlen =
        static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    CHECK((10 + hlen) % 64 == 0);
    CHECK(bytes[10 + hlen - 1] == '\n');
    const NpyArray a = parse_npy(bytes, "mem");
    CHECK(a.shape == shape);
    CHECK(a.data == data);
  }
  NpyArray one;
  one.shape = {5};
  CHECK(one.shape_str() == "(5,)");
}

TEST_CASE("npy: header variants NumPy writes are accepted", "[npy]") {
  const std::string payload = floats({1.f, 2.f});
  CHECK(
      parse_npy(
          make_npy("{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2,)}", payload), "a")
          .shape == std::vector<int64_t>{2});
  CHECK(
      parse_npy(make_npy("{'shape': (1, 2), 'fortran_order': False, 'descr': '<f4'}", payload), "a")
          .shape == std::vector<int64_t>{1, 2});
  // Version 2.0 (4-byte header length).
  CHECK(parse_npy(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", payload, 2),
                  "a")
            .data == std::vector<float>{1.f, 2.f});
  // fortran_order True is harmless for one dimension.
  CHECK(
      parse_npy(make_npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", payload), "a")
          .shape.size() == 1);
}

TEST_CASE("npy: corrupt files and wrong dtypes give one clear message naming the file", "[npy]") {
  const std::string ok_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
  const std::string payload = floats({1.f, 2.f});
  const std::string good = make_npy(ok_dict, payload);

  CHECK_THAT(parse_error("not an npy file at all"),
             Catch::Contains("x.npy") && Catch::Contains("bad magic"));
  CHECK_THAT(parse_error(good.substr(0, 30)), Catch::Contains("truncated .npy header"));
  CHECK_THAT(parse_error(good.substr(0, good.size() - 3)), Catch::Contains("truncated data"));
  CHECK_THAT(parse_error(good + "xx"), Catch::Contains("trailing bytes"));
  std::string v9 = good;
  v9[6] = 9;
  CHECK_THAT(parse_error(v9), Catch::Contains("version 9.0"));

  CHECK_THAT(parse_error(make_npy("{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }",
                                  floats({1.f}))),
             Catch::Contains("float16") && Catch::Contains("expected float32"));
  CHECK_THAT(parse_error(make_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
                                  payload + payload)),
             Catch::Contains("float64"));
  CHECK_THAT(
      parse_error(make_npy("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", payload)),
      Catch::Contains("big-endian"));
  CHECK_THAT(
      parse_error(make_npy("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", payload)),
      Catch::Contains("int32"));
  CHECK_THAT(
      parse_error(make_npy("{'descr': '<f4', 'fortran_order': True, 'shape': (1, 2), }", payload)),
      Catch::Contains("Fortran"));

  CHECK_THAT(parse_error(make_npy("{'descr': '<f4', 'fortran_order': False}", payload)),
             Catch::Contains("missing key 'shape'"));
  CHECK_THAT(parse_error(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}",
                                  payload)),
             Catch::Contains("corrupt .npy header"));
  CHECK_THAT(
      parse_error(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", payload)),
      Catch::Contains("non-negative"));
  CHECK_THAT(
      parse_error(make_npy("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }", payload)),
      Catch::Contains("corrupt .npy header"));
  CHECK_THAT(
      parse_error(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': 2, }", payload)),
      Catch::Contains("corrupt .npy header"));
  CHECK_THAT(parse_error(make_npy("{'descr': '<f4', 'fortran_o", "")),
             Catch::Contains("corrupt .npy header"));
}

TEST_CASE("npy: read_npy reports missing files and directories", "[npy]") {
  TempDir d;
  CHECK_THROWS_WITH(read_npy(d.file("nope.npy")), Catch::Contains("nope.npy: no such file"));
  CHECK_THROWS_WITH(read_npy(d.path.string()), Catch::Contains("is a directory"));
}

TEST_CASE("npy: OutputSet writes all outputs on commit and nothing otherwise", "[npy]") {
  TempDir d;
  const std::vector<float> a = {1.f, 2.f, 3.f}, b = {4.f};
  {
    OutputSet o;
    o.stage(d.file("a.npy"), a.data(), {3});
    o.stage(d.file("b.npy"), b.data(), {1, 1});
    CHECK_FALSE(fs::exists(d.file("a.npy")));  // staged only: temp files, not the destinations
    o.commit();
  }
  CHECK(read_npy(d.file("a.npy")).data == a);
  CHECK(read_npy(d.file("b.npy")).shape == std::vector<int64_t>{1, 1});
  CHECK(d.count() == 2);  // no temp file left behind

  {  // abandoned (an error between stage and commit): temp files are removed
    OutputSet o;
    o.stage(d.file("c.npy"), a.data(), {3});
    CHECK(d.count() == 3);
  }
  CHECK(d.count() == 2);
  CHECK_FALSE(fs::exists(d.file("c.npy")));

  // Overwriting an existing output replaces it atomically.
  {
    OutputSet o;
    o.stage(d.file("a.npy"), b.data(), {1});
    o.commit();
  }
  CHECK(read_npy(d.file("a.npy")).data == b);

  // A destination in a missing directory is rejected before anything is written.
  CHECK_THROWS_WITH(check_output_dir(d.file("missing/x.npy")), Catch::Contains("does not exist"));
}
