// Kernel-configuration heuristics for the GPU backends: pure host functions of the params and a
// cached description of the device, so they can be unit-tested without a GPU and later replaced
// by the tuned-table lookup (the autotune issue) behind the same signature.
#pragma once
#include <cstddef>

#include "flashplus/params.h"
#include "gpu/gpu_kernels.h"

namespace flashplus::gpu {

// What the heuristics may look at, queried once per device (backend_gpu.cu).
struct DeviceInfo {
  int arch = 0;                    // platform/arch.h id: 90 = sm_90, 9010 = gfx90a
  int multiprocessors = 0;         // SMs / CUs
  int warp_size = 32;              // 32, or 64 on CDNA
  size_t l2_bytes = 0;
  size_t smem_per_block_optin = 0; // largest dynamic shared memory a block may opt in to
  size_t memory_bytes = 0;
};

enum class Pass { fwd, bwd };

// Thread blocks a forward with `block_m` query rows per block launches.
inline long long fwd_blocks(const AttnParams& p, int block_m) {
  return static_cast<long long>(p.batch) * p.nheads * ((p.seqlen_q + block_m - 1) / block_m);
}

// The configuration to try first. Fields left 0 mean "family default" (the family's first
// compiled tile). Without measurements the default is the best guess; the one rule here is for
// grids too small to fill the device (decode-like shapes), where 64-row query tiles double the
// number of blocks. The backend retries the family default when a named tile has no instance, then
// falls back to the portable kernel, so a stale rule costs speed, never correctness.
inline KernelConfig choose_config(const AttnParams& p, const DeviceInfo& dev, Pass pass) {
  KernelConfig c;  // all 0 = family defaults, num_splits = 1 (no family implements split-KV yet)
  if (pass == Pass::fwd && p.head_dim <= 128 && fwd_blocks(p, 128) < dev.multiprocessors) {
    c.block_m = 64;
    c.block_n = p.head_dim <= 64 ? 128 : 64;
    c.num_warps = dev.warp_size == 64 ? 2 : 4;  // one warp (wave) per 16 rows; wave64 halves it
  }
  return c;
}

}  // namespace flashplus::gpu
