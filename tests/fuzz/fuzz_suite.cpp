// Verify suites (cli/suite.cpp) from arbitrary bytes: load_suite either expands the suite or
// throws a usage error naming the file; the cases it returns have unique names.
#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>

#include "fuzz_util.h"
#include "suite.h"

using namespace flashplus;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::scratch_path(".json");
  fuzz::write_scratch(path, data, size);
  for (Backend b : {Backend::cpu, Backend::cuda}) {
    try {
      const cli::Suite s = cli::load_suite(path, b);
      std::set<std::string> names;
      for (const cli::Case& c : s.cases) {
        if (!names.insert(c.name).second) std::abort();
        (void)cli::case_label(c);
      }
    } catch (const cli::Error& e) {
      fuzz::check_error(e, path);
    }
  }
  return 0;
}
