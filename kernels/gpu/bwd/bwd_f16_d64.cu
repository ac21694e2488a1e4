// Backward tensor-core instances: f16, head-dim bucket 64 (tiles: FLASHPLUS_BWD_TILES_D64).
#include "gpu/bwd/bwd_instances.h"
#if FLASHPLUS_VENDOR_HIP
#include "gpu/bwd/bwd_kernel_mfma.h"
#else
#include "gpu/bwd/bwd_kernel.cuh"
#endif

namespace flashplus::gpu::tc {
Status bwd_f16_d64(const AttnParams& p, const KernelConfig& cfg, gpuStream_t stream) {
#if FLASHPLUS_VENDOR_HIP
  return launch_bwd_mfma<platform::half_t, 64>(p, cfg, stream);
#else
  return launch_bwd<platform::half_t, 64>(p, cfg, stream);
#endif
}
}  // namespace flashplus::gpu::tc
