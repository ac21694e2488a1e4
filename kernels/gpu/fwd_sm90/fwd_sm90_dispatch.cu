// run_fwd_sm90: picks the (dtype, head-dim bucket) instance of the Hopper forward family.
#include <string>

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
  const bool bf = p.dtype == DType::bf16;
  if (p.is_varlen()) {
    if (p.head_dim <= 64)
      return bf ? sm90fwd::fwd_sm90_var_bf16_d64(p, cfg, s) : sm90fwd::fwd_sm90_var_f16_d64(p, cfg, s);
    if (p.head_dim <= 128)
      return bf ? sm90fwd::fwd_sm90_var_bf16_d128(p, cfg, s)
                : sm90fwd::fwd_sm90_var_f16_d128(p, cfg, s);
    return Status::NoInstance("fwd_sm90: no head-dim bucket for " + std::to_string(p.head_dim));
  }
  if (p.head_dim <= 64) return bf ? sm90fwd::fwd_sm90_bf16_d64(p, cfg, s) : sm90fwd::fwd_sm90_f16_d64(p, cfg, s);
  if (p.head_dim <= 128)
    return bf ? sm90fwd::fwd_sm90_bf16_d128(p, cfg, s) : sm90fwd::fwd_sm90_f16_d128(p, cfg, s);
  return Status::NoInstance("fwd_sm90: no head-dim bucket for " + std::to_string(p.head_dim));
#endif
}

std::vector<KernelConfig> fwd_sm90_configs(int head_dim) {
  std::vector<KernelConfig> r;
#if !FLASHPLUS_VENDOR_HIP
  const int d = head_dim <= 64 ? 64 : head_dim <= 128 ? 128 : 0;
#define FLASHPLUS_FWD_SM90_CFG(DD, BM, BN, ST, OV) \
  if (DD == d) {                               \
    KernelConfig c;                            \
    c.block_m = BM;                            \
    c.block_n = BN;                            \
    c.num_warps = sm90fwd::kSm90Warps;         \
    c.stages = ST;                             \
    r.push_back(c);                            \
  }
  FLASHPLUS_FWD_SM90_TILES_D64(FLASHPLUS_FWD_SM90_CFG)
  FLASHPLUS_FWD_SM90_TILES_D128(FLASHPLUS_FWD_SM90_CFG)
#undef FLASHPLUS_FWD_SM90_CFG
#else
  (void)head_dim;
#endif
  return r;
}

}  // namespace flashplus::gpu
