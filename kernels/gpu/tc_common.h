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

#if FLASHPLUS_VENDOR_HIP
// The MFMA kernels access rows in 16-byte (K, V; Q, dO in the backward) and 8-byte pieces (Q, O;
// K, V, dK, dV in the backward): pointers and batch/head/row strides (2-byte elements) must keep
// every row of every tensor given 16-byte aligned (dQ is written element by element).
inline bool tc_aligned_16(const AttnParams& p) {
  const auto ok = [](const void* ptr, const Strides3& st) {
    return ptr == nullptr || (reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && st.batch % 8 == 0 &&
                              st.head % 8 == 0 && st.row % 8 == 0);
  };
  return ok(p.q, p.q_stride) && ok(p.k, p.k_stride) && ok(p.v, p.v_stride) &&
         ok(p.out, p.out_stride) && ok(p.dout, p.dout_stride) && ok(p.dk, p.dk_stride) &&
         ok(p.dv, p.dv_stride);
}
#endif

// Ok when the call fits the compiled tensor-core instances; else no_instance naming `family`
// ("fwd_tc", "bwd_tc") and the reason, so the backend falls back to the portable kernels.
inline Status tc_supports(const AttnParams& p, const KernelConfig& cfg, const char* family) {
  const std::string f = family;
#if FLASHPLUS_VENDOR_HIP
  // v_mfma_f32_16x16x16bf16_1k: gfx90a and gfx94x (gfx908 has another bf16 form). The library's
  // code object is for FLASHPLUS_HIP_ARCH (default gfx90a). fwd and bwd both have MFMA kernels.
  const int arch = current_arch(p.device_index);
  if (!platform::arch_has_mfma(arch) || arch == platform::kArchGfx908)
    return Status::NoInstance(f + ": needs MFMA with 16x16x16 bf16/f16 (gfx90a, gfx94x)");
  if (!tc_aligned_16(p)) return Status::NoInstance(f + ": needs 16-byte aligned q/k/v/out rows");
#else
  if (!platform::arch_has_mma_sync(current_arch(p.device_index)))
    return Status::NoInstance(f + ": needs mma.sync (sm_80 or newer)");
#endif
  if (p.dtype != DType::f16 && p.dtype != DType::bf16)
    return Status::NoInstance(f + ": only fp16/bf16 storage runs on tensor cores");
  if (p.head_dim % 8 != 0) return Status::NoInstance(f + ": head_dim must be a multiple of 8");
  if (p.head_dim > 256) return Status::NoInstance(f + ": head_dim > 256");
  if (p.is_kvcache) return Status::NoInstance(f + ": the kv-cache layout is not compiled");
  // The forward takes varlen (paged too: see launch_fwd_tile) and dropout. The backward takes
  // them on CUDA (bwd_var_*.cu: packed varlen, no block_table, which mha_varlen_bwd never has;
  // dropout without softcap, which the API rejects); the MFMA backward does not yet, so there
  // those calls run the portable fallback.
  const bool bwd = f == "bwd_tc";
#if FLASHPLUS_VENDOR_HIP
  if (bwd && p.is_varlen())
    return Status::NoInstance(f + ": variable-length batches are not compiled");
  if (bwd && p.has_dropout()) return Status::NoInstance(f + ": dropout is not compiled");
#else
  if (bwd && p.block_table != nullptr)
    return Status::NoInstance(f + ": the paged (block_table) backward is not compiled");
  if (bwd && p.has_dropout() && p.softcap > 0.f)
    return Status::NoInstance(f + ": dropout with softcap is not compiled");
  // The backward's workspaces index varlen rows as h * total_q + token, as lse.
  if (bwd && p.is_varlen() && p.lse_head_stride != p.total_q)
    return Status::NoInstance(f + ": softmax_lse must be contiguous (nheads, total_q)");
#endif
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
}

}  // namespace flashplus::gpu
