// run_bwd_tc: picks the (dtype, head-dim bucket) instance; the instance picks the tile.
#include <algorithm>
#include <string>

#include "gpu/bwd/bwd_instances.h"
#include "gpu/fwd/fwd_instances.h"  // head_dim_bucket
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
  const int d = tc::head_dim_bucket(p.head_dim);
  auto s = static_cast<gpuStream_t>(stream);
  const bool bf = p.dtype == DType::bf16;
  if (p.is_varlen() || p.has_dropout()) {
    switch (d) {
      case 64: return bf ? tc::bwd_var_bf16_d64(p, cfg, s) : tc::bwd_var_f16_d64(p, cfg, s);
      case 128: return bf ? tc::bwd_var_bf16_d128(p, cfg, s) : tc::bwd_var_f16_d128(p, cfg, s);
      default:
        return Status::NoInstance("bwd_tc: varlen / dropout are not compiled for head-dim bucket " +
                                  std::to_string(d));
    }
  }
  switch (d) {
    case 64: return bf ? tc::bwd_bf16_d64(p, cfg, s) : tc::bwd_f16_d64(p, cfg, s);
    case 128: return bf ? tc::bwd_bf16_d128(p, cfg, s) : tc::bwd_f16_d128(p, cfg, s);
    case 256: return bf ? tc::bwd_bf16_d256(p, cfg, s) : tc::bwd_f16_d256(p, cfg, s);
    default: return Status::NoInstance("bwd_tc: no head-dim bucket for " + std::to_string(p.head_dim));
  }
}

std::vector<KernelConfig> bwd_tc_configs(int head_dim) {
  std::vector<KernelConfig> r;
  const int d = tc::head_dim_bucket(head_dim);
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
  FLASHPLUS_BWD_MFMA_TILES_D64(FLASHPLUS_BWD_CFG)
  FLASHPLUS_BWD_MFMA_TILES_D128(FLASHPLUS_BWD_CFG)
  FLASHPLUS_BWD_MFMA_TILES_D256(FLASHPLUS_BWD_CFG)
#else
  FLASHPLUS_BWD_GMMA_TILES_D64(FLASHPLUS_BWD_CFG)
  FLASHPLUS_BWD_GMMA_TILES_D128(FLASHPLUS_BWD_CFG)
  FLASHPLUS_BWD_GMMA_TILES_D256(FLASHPLUS_BWD_CFG)
  FLASHPLUS_BWD_TILES_D64(FLASHPLUS_BWD_CFG)
  FLASHPLUS_BWD_TILES_D128(FLASHPLUS_BWD_CFG)
  FLASHPLUS_BWD_TILES_D256(FLASHPLUS_BWD_CFG)
#endif
#undef FLASHPLUS_BWD_CFG
  return r;
}

}  // namespace flashplus::gpu
