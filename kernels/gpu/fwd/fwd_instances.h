// One entry point per compiled (dtype, head-dim bucket); each lives in its own translation unit
// (fwd_<dtype>_d<D>.cu, generated in the build tree from kernels/registry/spec.json) so that
// compile time stays bounded and parallel. FLASHPLUS_FWD_INSTANCES(X) lists the built ones.
#pragma once
#include "flashplus/params.h"
#include "flashplus/status.h"
#include "gpu/gpu_kernels.h"
#include "flashplus_gen/instances.h"
#include "platform/gpu_runtime.h"

namespace flashplus::gpu::tc {

#define FLASHPLUS_DECLARE_FWD(DT, D) \
  Status fwd_##DT##_d##D(const AttnParams& p, const KernelConfig& cfg, gpuStream_t stream);
FLASHPLUS_FWD_INSTANCES(FLASHPLUS_DECLARE_FWD)
#undef FLASHPLUS_DECLARE_FWD

// Smallest of `buckets` (ascending) >= head_dim, or 0 when none.
template <int N>
constexpr int bucket_of(const int (&buckets)[N], int head_dim) {
  for (int b : buckets)
    if (head_dim <= b) return b;
  return 0;
}
// The spec's head-dim buckets of an instance kind (all of them, built or not: a bucket this build
// does not compile finds no instance and the call takes the portable path).
inline constexpr int kFwdHeadDims[] = FLASHPLUS_FWD_HEAD_DIMS;
inline constexpr int kBwdHeadDims[] = FLASHPLUS_BWD_HEAD_DIMS;
inline constexpr int kBwdVarHeadDims[] = FLASHPLUS_BWD_VAR_HEAD_DIMS;
inline constexpr int kFwdSm90HeadDims[] = FLASHPLUS_FWD_SM90_HEAD_DIMS;
inline constexpr int kFwdSm90VarHeadDims[] = FLASHPLUS_FWD_SM90_VAR_HEAD_DIMS;
inline constexpr int kKvcacheHeadDims[] = FLASHPLUS_KVCACHE_HEAD_DIMS;

// Smallest forward head-dim bucket >= head_dim, or 0 when none (head_dim > 256).
inline int head_dim_bucket(int head_dim) { return bucket_of(kFwdHeadDims, head_dim); }

}  // namespace flashplus::gpu::tc
