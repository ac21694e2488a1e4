// The Hopper forward family (fwd_sm90): entry points the mma.sync dispatch (run_fwd_tc) tries
// first on sm_90 devices. Every function returns no_instance when the call or the device is not
// one this family serves (then the caller goes on to the mma.sync family).
#pragma once
#include <vector>

#include "flashplus/params.h"
#include "flashplus/status.h"
#include "gpu/gpu_kernels.h"
#include "flashplus_gen/instances.h"
#include "platform/gpu_runtime.h"

namespace flashplus::gpu {

// Forward on wgmma + TMA (sm_90a instances; other archs: no_instance): dense fixed-length calls
// and packed varlen ones (no block_table).
Status run_fwd_sm90(const AttnParams& p, const KernelConfig& cfg, void* stream);
// The family's compiled tiles for `head_dim` (first = its default); num_warps = 12 marks them.
std::vector<KernelConfig> fwd_sm90_configs(int head_dim);
// True when cfg names this family (num_warps 12) rather than the mma.sync family.
inline bool is_sm90_config(const KernelConfig& cfg) { return cfg.num_warps == 12; }

namespace sm90fwd {
// The built instances (flashplus_gen/instances.h, from kernels/registry/spec.json).
#define FLASHPLUS_DECLARE_FWD_SM90(DT, D) \
  Status fwd_sm90_##DT##_d##D(const AttnParams& p, const KernelConfig& cfg, gpuStream_t stream);
FLASHPLUS_FWD_SM90_INSTANCES(FLASHPLUS_DECLARE_FWD_SM90)
#undef FLASHPLUS_DECLARE_FWD_SM90
// The packed varlen instances (kVar), one .cu file each.
#define FLASHPLUS_DECLARE_FWD_SM90_VAR(DT, D) \
  Status fwd_sm90_var_##DT##_d##D(const AttnParams& p, const KernelConfig& cfg, gpuStream_t stream);
FLASHPLUS_FWD_SM90_VAR_INSTANCES(FLASHPLUS_DECLARE_FWD_SM90_VAR)
#undef FLASHPLUS_DECLARE_FWD_SM90_VAR
}  // namespace sm90fwd

}  // namespace flashplus::gpu
