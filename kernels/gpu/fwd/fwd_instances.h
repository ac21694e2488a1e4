// One entry point per compiled (dtype, head-dim bucket); each lives in its own translation unit
// (fwd_<dtype>_d<D>.cu) so that compile time stays bounded and parallel.
#pragma once
#include "flashplus/params.h"
#include "flashplus/status.h"
#include "gpu/gpu_kernels.h"
#include "platform/gpu_runtime.h"

namespace flashplus::gpu::tc {

#define FLASHPLUS_FWD_INSTANCES(X) \
  X(f16, 64) X(f16, 128) X(f16, 256) X(bf16, 64) X(bf16, 128) X(bf16, 256)

#define FLASHPLUS_DECLARE_FWD(DT, D) \
  Status fwd_##DT##_d##D(const AttnParams& p, const KernelConfig& cfg, gpuStream_t stream);
FLASHPLUS_FWD_INSTANCES(FLASHPLUS_DECLARE_FWD)
#undef FLASHPLUS_DECLARE_FWD

// Smallest compiled head-dim bucket >= head_dim, or 0 when none (head_dim > 256).
inline int head_dim_bucket(int head_dim) {
  return head_dim <= 64 ? 64 : head_dim <= 128 ? 128 : head_dim <= 256 ? 256 : 0;
}

}  // namespace flashplus::gpu::tc
