// KV-cache decoding instances for f16 storage: every tile of FLASHPLUS_KV_TILES_D{64,128,256}.
#include "platform/gpu_runtime.h"
#if !FLASHPLUS_VENDOR_HIP
#include "gpu/kvcache/kvcache_kernel.cuh"

namespace flashplus::gpu::kv {
Status run_f16(const AttnParams& p, const KernelConfig& cfg, const DeviceInfo& dev,
               cudaStream_t stream, bool check, KernelConfig* used) {
  return kv_run<platform::half_t>(p, cfg, dev, stream, check, used);
}
}  // namespace flashplus::gpu::kv
#endif
