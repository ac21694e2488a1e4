// run_fwd_tc: picks the (dtype, head-dim bucket) instance; the instance picks the tile.
#include <string>

#include "gpu/fwd/fwd_instances.h"
#include "gpu/fwd_sm90/fwd_sm90.h"
#include "gpu/gpu_kernels.h"
#include "gpu/tc_common.h"
#include "platform/arch.h"
#include "platform/env.h"
#if FLASHPLUS_VENDOR_HIP
#include "gpu/fwd/fwd_kernel_mfma.h"  // the MFMA tile list (templates only, nothing instantiated)
#else
#include "gpu/fwd/fwd_kernel.cuh"  // the tile list (templates only, nothing instantiated)
#endif

namespace flashplus::gpu {

Status run_fwd_tc(const AttnParams& p, const KernelConfig& cfg, void* stream) {
  FLASHPLUS_RETURN_IF_ERROR(tc_supports(p, cfg, "fwd_tc"));
#if !FLASHPLUS_VENDOR_HIP
  // Hopper: the wgmma family first (its own tiles, num_warps 12, or the default; every call with
  // FLASHPLUS_GPU_FWD_SM90=2, platform/env.h); what it has no instance for (paged varlen, kv
  // cache, dropout, head_dim > 128, a non-sm_90 device) goes on to mma.sync.
  if (const int mode = env::gpu_fwd_sm90_mode(); mode != 0) {
    const bool named = is_sm90_config(cfg);
    const bool dflt = cfg.block_m == 0 && cfg.block_n == 0 && cfg.num_warps == 0 && cfg.stages == 0;
    if (named || dflt || mode == 2) {
      Status st = run_fwd_sm90(p, named ? cfg : KernelConfig{}, stream);
      if (st.code() != StatusCode::no_instance || named) return st;  // a named tile runs or fails
    }
  }
#endif
  const int d = tc::head_dim_bucket(p.head_dim);
  auto s = static_cast<gpuStream_t>(stream);
  if (d == 0) return Status::NoInstance("fwd_tc: no head-dim bucket for " + std::to_string(p.head_dim));
  // The built instances (FLASHPLUS_HEAD_DIMS / FLASHPLUS_DTYPES may leave some out).
#define FLASHPLUS_FWD_RUN(DT, D) \
  if (d == D && p.dtype == DType::DT) return tc::fwd_##DT##_d##D(p, cfg, s);
  FLASHPLUS_FWD_INSTANCES(FLASHPLUS_FWD_RUN)
#undef FLASHPLUS_FWD_RUN
  (void)s;
  return Status::NoInstance("fwd_tc: head-dim bucket " + std::to_string(d) + " (" +
                            dtype_name(p.dtype) + ") is not compiled into this build");
}

std::vector<KernelConfig> fwd_tc_configs(int head_dim) {
  std::vector<KernelConfig> r;
#if !FLASHPLUS_VENDOR_HIP
  // On an sm_90 device the Hopper family's tiles come first: the default call runs them.
  int dev = 0;
  if (env::gpu_fwd_sm90_mode() != 0 && cudaGetDevice(&dev) == cudaSuccess &&
      current_arch(dev) == 90)
    r = fwd_sm90_configs(head_dim);
#endif
  const int d = tc::head_dim_bucket(head_dim);
#define FLASHPLUS_FWD_CFG(DD, BM, BN, NW) \
  if (DD == d) {                        \
    KernelConfig c;                     \
    c.block_m = BM;                     \
    c.block_n = BN;                     \
    c.num_warps = NW;                   \
    r.push_back(c);                     \
  }
#if FLASHPLUS_VENDOR_HIP
  FLASHPLUS_FWD_MFMA_TILES_ALL(FLASHPLUS_FWD_CFG)
#else
  FLASHPLUS_FWD_TILES_ALL(FLASHPLUS_FWD_CFG)
#endif
#undef FLASHPLUS_FWD_CFG
  return r;
}

}  // namespace flashplus::gpu
