// Hopper forward instances, packed varlen (kVar): f16, head-dim bucket 64.
#include "gpu/fwd_sm90/fwd_sm90.h"
#if !FLASHPLUS_VENDOR_HIP
#include "gpu/fwd_sm90/fwd_sm90_kernel.cuh"
#endif

namespace flashplus::gpu::sm90fwd {
Status fwd_sm90_var_f16_d64(const AttnParams& p, const KernelConfig& cfg, gpuStream_t stream) {
#if FLASHPLUS_VENDOR_HIP
  (void)p; (void)cfg; (void)stream;
  return Status::NoInstance("fwd_sm90: NVIDIA only");
#else
  return launch_fwd_sm90<platform::half_t, 64, true>(p, cfg, stream);
#endif
}
}  // namespace flashplus::gpu::sm90fwd
