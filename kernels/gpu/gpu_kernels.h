// Interface between the GPU backend's host side (kernels/gpu/backend_gpu.cpp: memory, devices,
// dispatch) and the kernel families (tensor-core kernels in kernels/gpu/fwd, kernels/gpu/bwd;
// the portable fallback in kernels/gpu/fallback). Compiled by nvcc and by hipcc; host code only
// sees these declarations.
#pragma once
#include <vector>

#include "flashplus/params.h"
#include "flashplus/status.h"
#include "flashplus/tuning.h"

namespace flashplus::gpu {

// Run-time kernel configuration (flashplus/tuning.h): chosen from the tuned table or the
// heuristic, never constants buried in a kernel. A kernel family rejects configurations it has no
// instance for (Status::NoInstance). Fields: block_m, block_n, num_warps, stages, num_splits;
// 0 = the family's default.
using KernelConfig = ::flashplus::KernelConfig;

// Whether a family's compiled tile (bm, bn, nw) runs `cfg`: a named configuration matches on
// block_m and block_n (num_warps 0 = any); the all-zero default runs the family's first tile
// (`first`: no earlier tile of the bucket has been passed over). One rule for every family's
// tile list (the launch_* functions walk their FLASHPLUS_*_TILES_* macros with it).
inline bool tile_selected(const KernelConfig& cfg, int bm, int bn, int nw, bool first) {
  const bool is_default = cfg.block_m == 0 && cfg.block_n == 0 && cfg.num_warps == 0;
  return (is_default && first) ||
         (cfg.block_m == bm && cfg.block_n == bn && (cfg.num_warps == nw || cfg.num_warps == 0));
}

// The GPU architecture the current device reports, e.g. 80, 86, 90 (NVIDIA) or 90a-as-900 (AMD
// gfx90a -> 9010; see platform/arch.h).
int current_arch(int device_index);

// Tensor-core forward/backward (mma.sync on sm_80+, MFMA on CDNA where implemented).
// Return no_instance when (dtype, head_dim, arch, config) has no compiled instance, so the caller
// can fall back. `stream` is a cudaStream_t / hipStream_t.
Status run_fwd_tc(const AttnParams& p, const KernelConfig& cfg, void* stream);
Status run_bwd_tc(const AttnParams& p, const KernelConfig& cfg, void* stream);

// The tensor-core family's compiled tiles for `head_dim` (first = its default), in KernelConfig
// terms; empty when the family has none (e.g. bwd d256, head_dim > 256).
std::vector<KernelConfig> fwd_tc_configs(int head_dim);
std::vector<KernelConfig> bwd_tc_configs(int head_dim);

// Portable fallback (no tensor cores; any dtype incl. fp32, any head_dim <= 256, any arch).
// zero_tensors: out = 0 and softmax_lse = -inf (fwd), dq = dk = dv = 0 and softmax_d = 0 (bwd)
// over the whole tensors, packed rows no sequence covers included; run before the kernels.
Status zero_fwd_outputs(const AttnParams& p, void* stream);
Status zero_bwd_outputs(const AttnParams& p, void* stream);
Status run_fwd_fallback(const AttnParams& p, void* stream);
Status run_bwd_fallback(const AttnParams& p, void* stream);

// return_softmax: S_dmask from the forward's lse (dmask.cu; kernels/src/dmask.h).
Status run_dmask(const AttnParams& p, void* stream);

}  // namespace flashplus::gpu
