// Built only while kernels/gpu/bwd/ has no sources: the tensor-core backward is absent, so every
// call falls back to the portable kernel.
#include "gpu/gpu_kernels.h"

namespace flashplus::gpu {
Status run_bwd_tc(const AttnParams&, const KernelConfig&, void*) {
  return Status::NoInstance("no tensor-core backward compiled into this build");
}
std::vector<KernelConfig> bwd_tc_configs(int) { return {}; }
}  // namespace flashplus::gpu
