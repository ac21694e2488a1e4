// run_fwd_sm90: picks the (dtype, head-dim bucket) instance of the Hopper forward family.
#include <string>

#include "gpu/fwd/fwd_instances.h"  // bucket_of, the head-dim buckets
#include "gpu/fwd_sm90/fwd_sm90.h"
#include "gpu/gpu_kernels.h"
#include "platform/arch.h"
#if !FLASHPLUS_VENDOR_HIP
#include "gpu/fwd_sm90/fwd_sm90_kernel.cuh"  // the tile lists (templates only)
#endif

namespace flashplus::gpu {

Status run_fwd_sm90(const AttnParams& p, const KernelConfig& cfg, void* stream) {
#if FLASHPLUS_VENDOR_HIP
  (void)p; (void)cfg; (void)stream;
  return Status::NoInstance("fwd_sm90: NVIDIA only");
#else
  // The instances are sm_90a code: any other device (or a build without 90a) must not take them.
  if (current_arch(p.device_index) != 90)
    return Status::NoInstance("fwd_sm90: needs an sm_90 device");
  if (p.dtype != DType::f16 && p.dtype != DType::bf16)
    return Status::NoInstance("fwd_sm90: only fp16/bf16 storage");
  if (p.head_dim % 8 != 0) return Status::NoInstance("fwd_sm90: head_dim must be a multiple of 8");
  auto s = static_cast<gpuStream_t>(stream);
  // The built instances (FLASHPLUS_HEAD_DIMS / FLASHPLUS_DTYPES may leave some out).
#define FLASHPLUS_SM90_RUN(PREFIX, DT, D) \
  if (d == D && p.dtype == DType::DT) return sm90fwd::PREFIX##DT##_d##D(p, cfg, s);
  if (p.is_varlen()) {
    const int d = tc::bucket_of(tc::kFwdSm90VarHeadDims, p.head_dim);
#define FLASHPLUS_SM90_VAR_RUN(DT, D) FLASHPLUS_SM90_RUN(fwd_sm90_var_, DT, D)
    FLASHPLUS_FWD_SM90_VAR_INSTANCES(FLASHPLUS_SM90_VAR_RUN)
#undef FLASHPLUS_SM90_VAR_RUN
    return Status::NoInstance("fwd_sm90: no head-dim bucket for " + std::to_string(p.head_dim));
  }
  const int d = tc::bucket_of(tc::kFwdSm90HeadDims, p.head_dim);
#define FLASHPLUS_SM90_PLAIN_RUN(DT, D) FLASHPLUS_SM90_RUN(fwd_sm90_, DT, D)
  FLASHPLUS_FWD_SM90_INSTANCES(FLASHPLUS_SM90_PLAIN_RUN)
#undef FLASHPLUS_SM90_PLAIN_RUN
#undef FLASHPLUS_SM90_RUN
  (void)s;
  return Status::NoInstance("fwd_sm90: no head-dim bucket for " + std::to_string(p.head_dim));
#endif
}

std::vector<KernelConfig> fwd_sm90_configs(int head_dim) {
  std::vector<KernelConfig> r;
#if !FLASHPLUS_VENDOR_HIP
  const int d = tc::bucket_of(tc::kFwdSm90HeadDims, head_dim);
#define FLASHPLUS_FWD_SM90_CFG(DD, BM, BN, ST, OV) \
  if (DD == d) {                               \
    KernelConfig c;                            \
    c.block_m = BM;                            \
    c.block_n = BN;                            \
    c.num_warps = sm90fwd::kSm90Warps;         \
    c.stages = ST;                             \
    r.push_back(c);                            \
  }
  FLASHPLUS_FWD_SM90_TILES_ALL(FLASHPLUS_FWD_SM90_CFG)
#undef FLASHPLUS_FWD_SM90_CFG
#else
  (void)head_dim;
#endif
  return r;
}

}  // namespace flashplus::gpu
