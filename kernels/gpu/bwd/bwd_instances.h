// One backward entry point per compiled (dtype, head-dim bucket), each in its own translation
// unit (bwd_<dtype>_d<D>.cu).
#pragma once
#include "flashplus/params.h"
#include "flashplus/status.h"
#include "gpu/gpu_kernels.h"
#include "platform/gpu_runtime.h"

namespace flashplus::gpu::tc {

#define FLASHPLUS_BWD_INSTANCES(X) \
  X(f16, 64) X(f16, 128) X(f16, 256) X(bf16, 64) X(bf16, 128) X(bf16, 256)

#define FLASHPLUS_DECLARE_BWD(DT, D) \
  Status bwd_##DT##_d##D(const AttnParams& p, const KernelConfig& cfg, gpuStream_t stream);
FLASHPLUS_BWD_INSTANCES(FLASHPLUS_DECLARE_BWD)
#undef FLASHPLUS_DECLARE_BWD

// Variable-length batches and dropout (bwd_var_<dtype>_d<D>.cu, launch_bwd_var): the buckets
// that have tiles (64, 128); d256 runs the portable fallback.
#define FLASHPLUS_BWD_VAR_INSTANCES(X) X(f16, 64) X(f16, 128) X(bf16, 64) X(bf16, 128)

#define FLASHPLUS_DECLARE_BWD_VAR(DT, D) \
  Status bwd_var_##DT##_d##D(const AttnParams& p, const KernelConfig& cfg, gpuStream_t stream);
FLASHPLUS_BWD_VAR_INSTANCES(FLASHPLUS_DECLARE_BWD_VAR)
#undef FLASHPLUS_DECLARE_BWD_VAR

}  // namespace flashplus::gpu::tc
