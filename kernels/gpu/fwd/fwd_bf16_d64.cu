// Forward tensor-core instances: bf16, head-dim bucket 64 (tiles: FLASHPLUS_FWD_TILES_D64).
#include "gpu/fwd/fwd_instances.h"
#if FLASHPLUS_VENDOR_HIP
#include "gpu/fwd/fwd_kernel_mfma.h"
#else
#include "gpu/fwd/fwd_kernel.cuh"
#endif

namespace flashplus::gpu::tc {
Status fwd_bf16_d64(const AttnParams& p, const KernelConfig& cfg, gpuStream_t stream) {
#if FLASHPLUS_VENDOR_HIP
  return launch_fwd_mfma<platform::bf16_t, 64>(p, cfg, stream);
#else
  return launch_fwd<platform::bf16_t, 64>(p, cfg, stream);
#endif
}
}  // namespace flashplus::gpu::tc
