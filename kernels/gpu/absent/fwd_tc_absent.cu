// Built only while kernels/gpu/fwd/ has no sources: the tensor-core forward is absent, so every
// call falls back to the portable kernel.
#include "gpu/gpu_kernels.h"

namespace flashplus::gpu {
Status run_fwd_tc(const AttnParams&, const KernelConfig&, void*) {
  return Status::NoInstance("no tensor-core forward compiled into this build");
}
std::vector<KernelConfig> fwd_tc_configs(int) { return {}; }
}  // namespace flashplus::gpu
