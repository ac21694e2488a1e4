// Model configs (cli/config.cpp) from arbitrary bytes: load_model_configs and load_model_config
// either return configs or throw a usage error naming the file; the workloads of an accepted
// config expand (when there are not too many to list) and label without crashing.
#include <cstdint>
#include <string>

#include "config.h"
#include "fuzz_util.h"

using namespace flashplus;

namespace {

// Upper bound on expand_workloads' output, so a config that asks for 10^9 runs is not listed.
size_t workload_bound(const cli::ModelConfig& m) {
  const size_t sizes = m.batch_sizes.size() + 1;
  const size_t prefill = m.dtypes.size() * sizes * m.seqlens.size() * (m.modes.size() + 1);
  const size_t decode = m.dtypes.size() * m.decode_shapes.size() * m.page_sizes.size() *
                        m.num_splits.size() * (m.modes.size() + 1);
  const size_t varlen = m.dtypes.size() * m.varlen_batches.size() * (m.modes.size() + 1);
  return prefill + decode + varlen;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::scratch_path(".json");
  fuzz::write_scratch(path, data, size);
  try {
    for (const cli::ModelConfig& m : cli::load_model_configs(path)) {
      (void)cli::mask_label(m);
      if (workload_bound(m) > 20000) continue;
      for (const cli::Workload& w : cli::expand_workloads(m, {})) {
        if (w.model != &m || w.batch < 1 || w.seqlen < 1) std::abort();
        (void)cli::workload_label(w);
      }
    }
  } catch (const cli::Error& e) {
    fuzz::check_error(e, path);
  }
  try {
    (void)cli::load_model_config(path);
  } catch (const cli::Error& e) {
    fuzz::check_error(e, path);
  }
  return 0;
}
