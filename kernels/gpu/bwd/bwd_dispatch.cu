// run_bwd_tc: picks the (dtype, head-dim bucket) instance; the instance picks the tile.
#include <algorithm>
#include <string>

#include "gpu/bwd/bwd_instances.h"
#include "gpu/fwd/fwd_instances.h"  // bucket_of, the head-dim buckets
#include "gpu/gpu_kernels.h"
#include "gpu/tc_common.h"
#include "platform/arch.h"
#if FLASHPLUS_VENDOR_HIP
#include "gpu/bwd/bwd_kernel_mfma.h"  // the MFMA tile list (templates only, nothing instantiated)
#else
#include "gpu/bwd/bwd_kernel.cuh"  // the tile list (templates only, nothing instantiated)
#endif

namespace flashplus::gpu {

Status run_bwd_tc(const AttnParams& p, const KernelConfig& cfg, void* stream) {
  FLASHPLUS_RETURN_IF_ERROR(tc_supports(p, cfg, "bwd_tc"));
  const int d = tc::bucket_of(tc::kBwdHeadDims, p.head_dim);
  auto s = static_cast<gpuStream_t>(stream);
  // The built instances (FLASHPLUS_HEAD_DIMS / FLASHPLUS_DTYPES may leave some out).
#define FLASHPLUS_BWD_RUN(PREFIX, DT, D) \
  if (d == D && p.dtype == DType::DT) return tc::PREFIX##DT##_d##D(p, cfg, s);
  if (p.is_varlen() || p.has_dropout()) {
#define FLASHPLUS_BWD_VAR_RUN(DT, D) FLASHPLUS_BWD_RUN(bwd_var_, DT, D)
    FLASHPLUS_BWD_VAR_INSTANCES(FLASHPLUS_BWD_VAR_RUN)
#undef FLASHPLUS_BWD_VAR_RUN
    return Status::NoInstance("bwd_tc: varlen / dropout are not compiled for head-dim bucket " +
                              std::to_string(d));
  }
  if (d == 0) return Status::NoInstance("bwd_tc: no head-dim bucket for " + std::to_string(p.head_dim));
#define FLASHPLUS_BWD_PLAIN_RUN(DT, D) FLASHPLUS_BWD_RUN(bwd_, DT, D)
  FLASHPLUS_BWD_INSTANCES(FLASHPLUS_BWD_PLAIN_RUN)
#undef FLASHPLUS_BWD_PLAIN_RUN
#undef FLASHPLUS_BWD_RUN
  (void)s;
  return Status::NoInstance("bwd_tc: head-dim bucket " + std::to_string(d) + " (" +
                            dtype_name(p.dtype) + ") is not compiled into this build");
}

std::vector<KernelConfig> bwd_tc_configs(int head_dim) {
  std::vector<KernelConfig> r;
  const int d = tc::bucket_of(tc::kBwdHeadDims, head_dim);
  // wgmma tiles first (they run where sm_90a code exists; elsewhere a config naming one that is
  // not also an mma.sync tile returns no_instance), then the mma.sync tiles, without duplicates.
#define FLASHPLUS_BWD_CFG(DD, BN, BM, NW)                                    \
  if (DD == d) {                                                           \
    KernelConfig c;                                                        \
    c.block_m = BM;                                                        \
    c.block_n = BN;                                                        \
    c.num_warps = NW;                                                      \
    if (std::find(r.begin(), r.end(), c) == r.end()) r.push_back(c);       \
  }
#if FLASHPLUS_VENDOR_HIP
  FLASHPLUS_BWD_MFMA_TILES_ALL(FLASHPLUS_BWD_CFG)
#else
  FLASHPLUS_BWD_GMMA_TILES_ALL(FLASHPLUS_BWD_CFG)
  FLASHPLUS_BWD_TILES_ALL(FLASHPLUS_BWD_CFG)
#endif
#undef FLASHPLUS_BWD_CFG
  return r;
}

}  // namespace flashplus::gpu
