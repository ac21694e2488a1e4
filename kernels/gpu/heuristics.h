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
// warps takes block_n / num_warps of them), `stages` tiles in the cp.async ring. Decoding is
// bound by the cache read, and on the H100 one warp's loop turns out latency-bound (a fixed
// time per tile whatever its size, docs/PERF.md "KV-cache decoding on the H100"), so the tile is
// chosen for warps (and bytes in flight) per SM. d <= 128: 32 keys x 2 warps x 2 stages (36 KiB
// at d 128) lets 6 blocks = 12 warps share an SM; it beat 64 x 4 x 2 (3 blocks of 4 warps) at
// every paged-16 decode shape of the sweep there. d <= 64 keeps 64 x 4 x 2 (not measured).
inline KernelConfig kvcache_default_tile(int head_dim) {
  KernelConfig c;
  if (head_dim <= 64) {
    c.block_n = 64;
    c.num_warps = 4;
    c.stages = 2;
  } else {
    c.block_n = 32;
    c.num_warps = 2;
    c.stages = 2;
  }
  return c;
}

// Most splits whose fp32 partial results (written by the attention, read by the combine: 8 bytes
// per split, row and channel) stay within kvcache_partial_share of the cache bytes the call
// reads (2 x elem bytes per kv head, key and channel). Decoding GQA 32/8 in bf16 costs
// 8 x splits / seqlen_k of the read: 0.6% at 99 splits of 131072 keys.
constexpr double kKvcachePartialShare = 1. / 32;
inline int kvcache_max_splits_for_traffic(const AttnParams& p) {
  const double elem = static_cast<double>(dtype_size(p.dtype));
  const double per_split = 8. * p.seqlen_q * std::max(1, p.group());  // per kv head and channel
  const double cache = 2. * elem * static_cast<double>(p.seqlen_k);
  return static_cast<int>(std::clamp(kKvcachePartialShare * cache / std::max(1., per_split), 1., 128.));
}

// Splits of the key sequence (split-KV, combined through the LSE) for a kv-cache call:
// p.num_splits when the caller set it (> 0); otherwise the fewest whose grid reaches
// kKvcacheWaveFill of one wave of the tile's blocks (`blocks_per_sm` per SM), 1 when the unsplit
// grid already does. Each split keeps at least kMinTiles key tiles of `block_n` (capacity
// p.seqlen_k: the actual lengths live on the device), the partial results' traffic stays within
// kKvcachePartialShare of the cache read, 128 at most (upstream's limit).
//
// 0.64 of a wave (~4 blocks of the 6-slot 32 x 2 x 2 tile per SM, ~507 of 792 blocks on the
// H100), from the round-3 sweep (docs/PERF.md "KV-cache decoding, round 3"; H100, error flags
// checked, TB/s): batch 1 x 131072 (8 blocks per split) 25 / 32 / 40 / 50 / 64 splits = 1.82 /
// 2.26 / 2.40 / 2.59 / 2.62; batch 8 x 16384 (64 per split) 4 / 5 / 7 / 10 / 12 = 2.02 / 2.41 /
// 2.59 / 2.54 / 2.61; batch 64 x 4096 (512 per split) 1 / 2 / 3 = 2.87 / 2.44 / 2.80. Grids of
// 400-770 blocks run at full speed, 200-320 leave SMs short of warps, 1024 (1.3 waves) pays a
// second wave's tail. The picks: 64 / 8 / 1 splits. (Round 2's 0.5 picked 50 / 7 / 1.)
constexpr double kKvcacheWaveFill = 0.64;

// Key tiles per split that go to the shared tail of a split call (kv_attn_kernel: the last
// kKvcachePoolPerSplit * splits tiles of each (b, kv head, row block) are claimed one at a time
// by whichever split is free, so the grid's blocks end together instead of over ~10 us). Round 8
// (docs/PERF.md, H100, `flashplus bench --timing stream`, with the evict-first cache hint and the
// balanced split): 2 per split gives batch 1 x 131072 2.87 / 2.84 / 2.84 TB/s (contiguous / page
// 16 / page 256) and batch 8 x 16384 2.80 / 2.85 / 2.83; 4 per split 2.79 / 2.74 / 2.74 and
// 2.82 / 2.84 / 2.81; the evict-first hint alone (no tail, round 7's split) 2.80 / 2.78 / 2.79
// and 2.77 / 2.84 / 2.81.
constexpr int kKvcachePoolPerSplit = 2;
inline int kvcache_num_splits(const AttnParams& p, const DeviceInfo& dev, int block_n,
                              int blocks_per_sm) {
  if (p.num_splits > 0) return std::min(p.num_splits, 128);
  constexpr int kMinTiles = 4;
  const long long base = kvcache_blocks(p);
  if (base <= 0) return 1;
  const double target = kKvcacheWaveFill * std::max(1, dev.multiprocessors) * std::max(1, blocks_per_sm);
  const long long tiles = (static_cast<long long>(p.seqlen_k) + block_n - 1) / std::max(1, block_n);
  const int max_n = std::min(kvcache_max_splits_for_traffic(p),
                             static_cast<int>(std::clamp<long long>(tiles / kMinTiles, 1, 128)));
  const long long want = static_cast<long long>(std::ceil(target / static_cast<double>(base)));
  return static_cast<int>(std::clamp<long long>(want, 1, max_n));
}

}  // namespace flashplus::gpu
