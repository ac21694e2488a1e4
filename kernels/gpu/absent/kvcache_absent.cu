// Built when kernels/gpu/kvcache is not compiled (HIP, FLASHPLUS_GPU_TC=OFF): kv-cache calls are
// refused with a clear status.
#include "gpu/kvcache/kvcache.h"

namespace flashplus::gpu {
Status kvcache_supports(const AttnParams&) {
  return Status::Unsupported("kvcache: the GPU kv-cache kernels are not compiled into this build");
}
Status run_kvcache(const AttnParams& p, const KernelConfig&, const DeviceInfo&, void*, bool,
                   KernelConfig*) {
  return kvcache_supports(p);
}
std::vector<KernelConfig> kvcache_configs(int) { return {}; }
}  // namespace flashplus::gpu
