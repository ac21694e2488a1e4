// Kernel-configuration heuristics for the GPU backends: pure host functions of the params and a
// cached description of the device, so they can be unit-tested without a GPU and later replaced
// by the tuned-table lookup (the autotune issue) behind the same signature.
#pragma once
#include <algorithm>
#include <cmath>
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

// ---- kv-cache decoding (kernels/gpu/kvcache) ------------------------------------------------------

// Query rows one kv-cache attention block holds: the group's query heads of seqlen_q tokens are
// packed (row r = token r / group, head r % group of the kv head), one m16 tile per block.
constexpr int kKvcacheBlockRows = 16;

// Blocks of one kv-cache attention launch before splitting the keys: (row blocks, kv heads, batch).
inline long long kvcache_blocks(const AttnParams& p) {
  const long long rows = static_cast<long long>(p.seqlen_q) * p.group();
  return static_cast<long long>(p.batch) * p.nheads_k *
         ((rows + kKvcacheBlockRows - 1) / kKvcacheBlockRows);
}

// Default kv-cache tile per head-dim bucket: block_n keys per pipeline stage (each of num_warps
// warps takes block_n / num_warps of them), `stages` tiles of K and V in flight. Decoding is
// bound by the cache read, so the tile is chosen for bytes in flight per SM (64 x 128 bf16 K + V
// = 32 KiB per stage, 3 stages ahead of the one computed), not for tensor-core throughput.
inline KernelConfig kvcache_default_tile(int head_dim) {
  KernelConfig c;
  if (head_dim <= 128) {
    c.block_n = 64;
    c.num_warps = 4;
    c.stages = 4;
  } else {
    c.block_n = 32;
    c.num_warps = 2;
    c.stages = 4;
  }
  return c;
}

// Splits of the key sequence (split-KV, combined through the LSE) for a kv-cache call:
// p.num_splits when the caller set it (> 0); otherwise 1 when the unsplit grid already fills
// the device (>= 80% of one wave of `blocks_per_sm` blocks on every SM), else the smallest
// count that gives at least two waves with >= 90% of the last wave busy, each split keeping at
// least kMinTiles key tiles of `block_n` (capacity p.seqlen_k: the actual lengths live on the
// device); 128 at most (upstream's limit).
inline int kvcache_num_splits(const AttnParams& p, const DeviceInfo& dev, int block_n,
                              int blocks_per_sm) {
  if (p.num_splits > 0) return std::min(p.num_splits, 128);
  constexpr int kMinTiles = 4;
  const long long base = kvcache_blocks(p);
  const double slots = static_cast<double>(std::max(1, dev.multiprocessors) * std::max(1, blocks_per_sm));
  if (base <= 0 || static_cast<double>(base) >= 0.8 * slots) return 1;
  const long long tiles = (static_cast<long long>(p.seqlen_k) + block_n - 1) / std::max(1, block_n);
  const int max_n = static_cast<int>(std::clamp<long long>(tiles / kMinTiles, 1, 128));
  int best = 1;
  double best_eff = 0.;
  for (int n = 1; n <= max_n; ++n) {
    const double waves = static_cast<double>(base) * n / slots;
    const double eff = waves / std::ceil(waves);
    if (waves >= 2. && eff >= 0.9) return n;
    if (waves >= 1. && eff > best_eff + 1e-9) {
      best = n;
      best_eff = eff;
    }
  }
  return best_eff > 0. ? best : max_n;
}

}  // namespace flashplus::gpu
