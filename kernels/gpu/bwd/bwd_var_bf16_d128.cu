// Backward tensor-core instances for variable-length batches and dropout: bf16, head-dim bucket
// 128 (launch_bwd_var: the bucket's default tiles with kVar, and kDrop when dropout is on). Their
// own translation unit so the plain instances (bwd_bf16_d128.cu) compile as before.
#include "gpu/bwd/bwd_instances.h"
#if !FLASHPLUS_VENDOR_HIP
#include "gpu/bwd/bwd_kernel.cuh"
#endif

namespace flashplus::gpu::tc {
Status bwd_var_bf16_d128(const AttnParams& p, const KernelConfig& cfg, gpuStream_t stream) {
#if FLASHPLUS_VENDOR_HIP
  (void)p;
  (void)cfg;
  (void)stream;
  return Status::NoInstance("bwd_tc: varlen and dropout have no MFMA instance");
#else
  return launch_bwd_var<platform::bf16_t, 128>(p, cfg, stream);
#endif
}
}  // namespace flashplus::gpu::tc
