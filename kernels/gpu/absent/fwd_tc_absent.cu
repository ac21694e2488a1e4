// Built only while kernels/gpu/fwd/ has no sources: the tensor-core forward is absent, so every
// call falls back to the portable kernel.
#include "gpu/gpu_kernels.h"

namespace flashplus::gpu {
Status run_fwd_tc(const AttnParams&, const KernelConfig&, void*) {
  return Status::NoInstance("no tensor-core forward compiled into this build");
}
}  // namespace flashplus::gpu
