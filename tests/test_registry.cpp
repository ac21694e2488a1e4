// The kernel registry of this binary (flashplus/registry.h, generated from
// kernels/registry/spec.json) and `flashplus info --kernels`, which prints it.
#include <catch2/catch.hpp>

#include <algorithm>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "cli_test_util.h"
#include "cpu/tiles.h"
#include "flashplus/api.h"
#include "flashplus/registry.h"

using namespace flashplus;

namespace {
bool gpu_compiled() {
  for (Backend b : compiled_backends())
    if (b != Backend::cpu) return true;
  return false;
}
}  // namespace

TEST_CASE("registry: names are unique and carry their key", "[registry]") {
  const KernelTable t = kernel_registry();
  REQUIRE(t.size > 0);
  std::set<std::string> names;
  for (const KernelEntry& e : t) {
    INFO(e.name);
    CHECK(names.insert(e.name).second);
    const std::string want = std::string(e.family) == "cpu"
                                 ? std::string("cpu_") + e.tile
                                 : std::string(e.family) + "_" + e.dtype + "_d" +
                                       std::to_string(e.head_dim) + "_" + e.tile;
    CHECK(want == e.name);
    CHECK(std::string(e.reason).size() > 0);
  }
}

TEST_CASE("registry: the CPU tiles are the instantiated ones", "[registry]") {
  std::vector<std::string> cpu;
  for (const KernelEntry& e : kernel_registry())
    if (std::string(e.vendor) == "cpu") cpu.push_back(e.tile);
  std::vector<std::string> shapes;
  for (const cpu::TileShape& s : cpu::kTileShapes) {
    shapes.push_back("m" + std::to_string(s.block_m) + "n" + std::to_string(s.block_n));
    CHECK(cpu::tile_supported(s.block_m, s.block_n));
  }
  CHECK(cpu == shapes);
  CHECK(std::find(cpu.begin(), cpu.end(), "m128n64") != cpu.end());  // kBlockM x kBlockN
}

TEST_CASE("registry: a build without GPU backends lists no GPU kernel", "[registry]") {
  if (gpu_compiled()) SUCCEED("GPU backend compiled: checked on the device");
  else
    for (const KernelEntry& e : kernel_registry()) CHECK(std::string(e.vendor) == "cpu");
}

#ifdef FLASHPLUS_CLI_PATH
TEST_CASE("cli: info --kernels lists the registry", "[cli][registry]") {
  const clitest::Result r = clitest::run_cli("info --kernels");
  REQUIRE(r.code == 0);
  std::istringstream in(r.output);
  std::string line;
  REQUIRE(std::getline(in, line));
  CHECK(line.rfind("# name", 0) == 0);
  std::vector<std::string> names;
  while (std::getline(in, line)) names.push_back(line.substr(0, line.find(' ')));
  std::vector<std::string> want;
  for (const KernelEntry& e : kernel_registry()) want.push_back(e.name);
  CHECK(names == want);
  if (!gpu_compiled()) CHECK(names.size() == std::size(cpu::kTileShapes));
}
#endif
