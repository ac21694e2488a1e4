// run_bwd_tc: picks the (dtype, head-dim bucket) instance; the instance picks the tile.
#include <string>

#include "gpu/bwd/bwd_instances.h"
#include "gpu/fwd/fwd_instances.h"  // head_dim_bucket
#include "gpu/gpu_kernels.h"
#include "platform/arch.h"
#if !FLASHPLUS_VENDOR_HIP
#include "gpu/bwd/bwd_kernel.cuh"  // the tile list (templates only, nothing instantiated)
#endif

namespace flashplus::gpu {

Status run_bwd_tc(const AttnParams& p, const KernelConfig& cfg, void* stream) {
#if FLASHPLUS_VENDOR_HIP
  (void)p; (void)cfg; (void)stream;
  return Status::NoInstance("bwd_tc: the AMD MFMA path is not implemented yet");
#else
  if (!platform::arch_has_mma_sync(current_arch(p.device_index)))
    return Status::NoInstance("bwd_tc: needs mma.sync (sm_80 or newer)");
  if (p.dtype != DType::f16 && p.dtype != DType::bf16)
    return Status::NoInstance("bwd_tc: only fp16/bf16 storage runs on tensor cores");
  if (p.head_dim % 8 != 0)
    return Status::NoInstance("bwd_tc: head_dim must be a multiple of 8");
  if (p.is_varlen() || p.is_kvcache)
    return Status::NoInstance("bwd_tc: varlen / kv-cache layouts are not compiled");
  if (p.num_splits > 1 || cfg.num_splits > 1)
    return Status::NoInstance("bwd_tc: split-KV is not compiled");
  // softmax_lse / softmax_d are indexed as contiguous (batch, nheads, seqlen_q).
  const bool lse_contiguous =
      (p.lse_batch_stride == 0 && p.lse_head_stride == 0) ||
      (p.lse_head_stride == p.seqlen_q &&
       p.lse_batch_stride == static_cast<int64_t>(p.nheads) * p.seqlen_q);
  if (!lse_contiguous)
    return Status::NoInstance("bwd_tc: softmax_lse must be contiguous (batch, nheads, seqlen_q)");
  const int d = tc::head_dim_bucket(p.head_dim);
  auto s = static_cast<gpuStream_t>(stream);
  const bool bf = p.dtype == DType::bf16;
  switch (d) {
    case 64: return bf ? tc::bwd_bf16_d64(p, cfg, s) : tc::bwd_f16_d64(p, cfg, s);
    case 128: return bf ? tc::bwd_bf16_d128(p, cfg, s) : tc::bwd_f16_d128(p, cfg, s);
    case 256: return bf ? tc::bwd_bf16_d256(p, cfg, s) : tc::bwd_f16_d256(p, cfg, s);
    default: return Status::NoInstance("bwd_tc: head_dim " + std::to_string(p.head_dim) + " > 256");
  }
#endif
}

std::vector<KernelConfig> bwd_tc_configs(int head_dim) {
  std::vector<KernelConfig> r;
#if !FLASHPLUS_VENDOR_HIP
  const int d = tc::head_dim_bucket(head_dim);
#define FLASHPLUS_BWD_CFG(DD, BN, BM, NW) \
  if (DD == d) {                        \
    KernelConfig c;                     \
    c.block_m = BM;                     \
    c.block_n = BN;                     \
    c.num_warps = NW;                   \
    r.push_back(c);                     \
  }
  FLASHPLUS_BWD_TILES_D64(FLASHPLUS_BWD_CFG)
  FLASHPLUS_BWD_TILES_D128(FLASHPLUS_BWD_CFG)
  FLASHPLUS_BWD_TILES_D256(FLASHPLUS_BWD_CFG)
#undef FLASHPLUS_BWD_CFG
#else
  (void)head_dim;
#endif
  return r;
}

}  // namespace flashplus::gpu
