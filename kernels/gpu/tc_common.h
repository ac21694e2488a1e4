// What the tensor-core families (fwd/, bwd/) share on the host: which calls they can take at all.
// One check for both directions, so they can never disagree on what falls back.
#pragma once
#include <cstdint>
#include <string>

#include "flashplus/params.h"
#include "flashplus/status.h"
#include "gpu/gpu_kernels.h"
#include "platform/arch.h"

namespace flashplus::gpu {

// Ok when the call fits the compiled tensor-core instances; else no_instance naming `family`
// ("fwd_tc", "bwd_tc") and the reason, so the backend falls back to the portable kernels.
inline Status tc_supports(const AttnParams& p, const KernelConfig& cfg, const char* family) {
  const std::string f = family;
#if FLASHPLUS_VENDOR_HIP
  (void)p;
  (void)cfg;
  return Status::NoInstance(f + ": the AMD MFMA path is not implemented yet");
#else
  if (!platform::arch_has_mma_sync(current_arch(p.device_index)))
    return Status::NoInstance(f + ": needs mma.sync (sm_80 or newer)");
  if (p.dtype != DType::f16 && p.dtype != DType::bf16)
    return Status::NoInstance(f + ": only fp16/bf16 storage runs on tensor cores");
  if (p.head_dim % 8 != 0) return Status::NoInstance(f + ": head_dim must be a multiple of 8");
  if (p.head_dim > 256) return Status::NoInstance(f + ": head_dim > 256");
  if (p.is_kvcache) return Status::NoInstance(f + ": the kv-cache layout is not compiled");
  // The forward takes varlen (paged too: see launch_fwd_tile) and dropout; the backward's
  // tensor-core kernels do not yet, so those calls run the portable fallback.
  const bool bwd = f == "bwd_tc";
  if (bwd && p.is_varlen())
    return Status::NoInstance(f + ": variable-length batches are not compiled");
  if (bwd && p.has_dropout()) return Status::NoInstance(f + ": dropout is not compiled");
  if (p.num_splits > 1 || cfg.num_splits > 1)
    return Status::NoInstance(f + ": split-KV is not compiled");
  // softmax_lse / softmax_d are indexed as contiguous (batch, nheads, seqlen_q), or (nheads,
  // total_q) in varlen mode (always contiguous).
  const bool lse_contiguous =
      p.is_varlen() || (p.lse_batch_stride == 0 && p.lse_head_stride == 0) ||
      (p.lse_head_stride == p.seqlen_q &&
       p.lse_batch_stride == static_cast<int64_t>(p.nheads) * p.seqlen_q);
  if (!lse_contiguous)
    return Status::NoInstance(f + ": softmax_lse must be contiguous (batch, nheads, seqlen_q)");
  return Status::Ok();
#endif
}

}  // namespace flashplus::gpu
