// One backward entry point per compiled (dtype, head-dim bucket), each in its own translation
// unit (bwd_<dtype>_d<D>.cu, generated from kernels/registry/spec.json; FLASHPLUS_BWD_INSTANCES
// and FLASHPLUS_BWD_VAR_INSTANCES, flashplus_gen/instances.h, list the built ones).
#pragma once
#include "flashplus/params.h"
#include "flashplus/status.h"
#include "gpu/gpu_kernels.h"
#include "flashplus_gen/instances.h"
#include "platform/gpu_runtime.h"

namespace flashplus::gpu::tc {

#define FLASHPLUS_DECLARE_BWD(DT, D) \
  Status bwd_##DT##_d##D(const AttnParams& p, const KernelConfig& cfg, gpuStream_t stream);
FLASHPLUS_BWD_INSTANCES(FLASHPLUS_DECLARE_BWD)
#undef FLASHPLUS_DECLARE_BWD

// Variable-length batches and dropout (bwd_var_<dtype>_d<D>.cu, launch_bwd_var): the buckets
// that have tiles (64, 128); d256 runs the portable fallback.

#define FLASHPLUS_DECLARE_BWD_VAR(DT, D) \
  Status bwd_var_##DT##_d##D(const AttnParams& p, const KernelConfig& cfg, gpuStream_t stream);
FLASHPLUS_BWD_VAR_INSTANCES(FLASHPLUS_DECLARE_BWD_VAR)
#undef FLASHPLUS_DECLARE_BWD_VAR

}  // namespace flashplus::gpu::tc
