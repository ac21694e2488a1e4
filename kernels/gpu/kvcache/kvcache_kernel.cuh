// KV-cache decoding kernels (NVIDIA, mma.sync m16n8k16): pre-pass, split-KV attention, combine.
// Interface and the error-word protocol: gpu/kvcache/kvcache.h.
//
// Attention block = 16 packed query rows (row r: token r / group, query head hk * group +
// r % group) of one (kv head hk, sequence b, split). The block streams the split's key tiles of
// BN keys through a STAGES-deep cp.async ring (16-byte copies, STAGES - 1 tiles in flight while
// one is computed): decoding is bound by the cache read, so what matters is bytes in flight per
// SM, not MMA throughput. Each of the NW warps takes its own BN / NW keys of every tile and keeps
// its own online softmax (flash-decoding inside the block); the warps' partial results are merged
// once at the end through shared memory. Rows are masked per token with the sequence's actual
// lengths (bottom-right aligned causal/window), keys are addressed through the cache geometry
// (block table / cache_batch_idx / leftpad) and every index read from the caller's tensors is
// range-checked before it is used.
#pragma once
#include "platform/gpu_runtime.h"
#if FLASHPLUS_VENDOR_HIP
#error "kvcache_kernel.cuh is the NVIDIA (mma.sync) path; HIP builds use the no_instance stub"
#endif
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "flashplus/params.h"
#include "flashplus/status.h"
#include "gpu/kvcache/kvcache.h"
#include "gpu/workspace_pool.h"
#include "platform/types.h"
#include "primitives/attn_score.h"
#include "primitives/tile_mma.h"
#include "flashplus_gen/instances.h"  // FLASHPLUS_KVCACHE_HEAD_DIMS
#include "flashplus_gen/tiles.h"  // the tile lists, generated from kernels/registry/spec.json

namespace flashplus::gpu::kv {

// Compiled attention tiles per head-dim bucket: FLASHPLUS_KV_TILES_D<D>(X), X(D, BN, NW,
// STAGES), generated from kernels/registry/spec.json (family "kvcache"). The first entry of a
// bucket is its default when the heuristic names none; the host dispatch, kvcache_configs() and
// the instantiation all read these lists.

constexpr int kRows = kKvcacheBlockRows;

// What the attention and combine kernels receive besides the params.
struct KvArgs {
  int nsplit = 1;
  float* o_acc = nullptr;    // (nsplit, batch, nheads, seqlen_q, head_dim) fp32, normalised
  float* lse_acc = nullptr;  // (nsplit, batch, nheads, seqlen_q) fp32; -inf = the split saw nothing
  int* err = nullptr;        // kKvErrSlots error flags (kv_report)
  // Append fused into the attention (k_new without rotary, kv_fuse_append): the keys of the new
  // tokens are read from k_new / v_new, and one block per (b, kv head) writes them into the cache.
  int fuse_append = 0;
  // Early report of a checked call (kv_early_report; null = report at the kernel's end): each
  // attention block checks every index it will read before its key loop, reports, and counts
  // itself in *done_count (device memory, 0 between calls); the last to count resets it and sets
  // *done (a mapped pinned word the host spins on), after which the kernels write nothing the
  // host reads.
  int* done = nullptr;
  unsigned* done_count = nullptr;
  // Shared tail (splits > 1, kv_pool_counters): one claim counter per (b, kv head, row block),
  // 0 between calls; pool_per_split tiles per split go to the group's pool. Null: static splits.
  unsigned* pool_cnt = nullptr;
  int pool_per_split = 0;
};

// ---- error flags and programmatic dependent launch ---------------------------------------------

// The error report: one int per KvcacheError bit, set to 1 by a plain store (idempotent, so no
// atomics and no zeroing on the device). When the host checks, the flags live in mapped pinned
// host memory the host zeroed before the launches and reads after the stream synchronisation
// (no memset, no copy: docs/PERF.md "KV-cache decoding, round 3"); otherwise they point into the
// workspace and nobody reads them.
constexpr int kKvErrSlots = 5;
__device__ __forceinline__ void kv_report(int* err, int bits) {
  volatile int* e = err;
#pragma unroll
  for (int i = 0; i < kKvErrSlots; ++i)
    if (bits & (1 << i)) e[i] = 1;
  // Visible to the host before this block counts itself (kv_early_report) or its grid ends
  // (the attention behind a pre-pass counts only after the pre-pass grid); error path only.
  __threadfence_system();
}

// The early report's count (one thread per block, after its flags): the block that counts last
// resets the counter for the next call, fences at system scope and sets the done word, so a host
// that sees done == 1 sees every flag of the call. Blocks of later waves count when they start:
// the host then waits longer, nothing waits on anything.
__device__ __forceinline__ void kv_count_checked(const KvArgs& a) {
  // No fence of its own: a block that reported has fenced its flags at system scope in
  // kv_report, and a block that did not has written nothing the host reads (round 8 dropped the
  // __threadfence here: within the bench's noise, docs/PERF.md).
  const unsigned total = gridDim.x * gridDim.y * gridDim.z;
  if (atomicAdd(a.done_count, 1u) == total - 1) {
    __threadfence();  // the other blocks' counts, and so their flags, happened before
    *a.done_count = 0;
    __threadfence_system();
    *reinterpret_cast<volatile int*>(a.done) = 1;
  }
}

// Programmatic dependent launch (sm_90): a kernel launched with the programmatic stream
// serialization attribute may start while the previous kernel of the stream drains; it must not
// touch global memory before kv_grid_wait() (which returns once that kernel has finished and its
// writes are visible). kv_grid_trigger() lets the next kernel launch early. Both are no-ops on
// older chips and in kernels launched without the attribute.
__device__ __forceinline__ void kv_grid_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void kv_grid_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

template <int D, int BN, int NW, int STAGES>
struct KvTraits {
  static constexpr int kThreads = NW * 32;
  static constexpr int kKW = BN / NW;  // keys of a tile per warp
  static constexpr int kNT = kKW / 8;  // n8 tiles of S per warp
  static constexpr int kDT = D / 8;    // n8 tiles of O
  using TileQ = prim::SwizzledTile<kRows, D>;
  using TileKV = prim::SwizzledTile<BN, D>;
  static constexpr int kPipeBytes = TileQ::kBytes + STAGES * 2 * TileKV::kBytes;
  static constexpr int kRingBytes = 8 * 4;  // claimed tiles of the shared tail, after the pipeline
  // Merge area (reuses the pipeline's memory): per-warp row max/sum and fp32 O, padded rows.
  static constexpr int kOPitch = D + 4;
  static constexpr int kMergeBytes = 2 * NW * kRows * 4 + NW * kRows * kOPitch * 4;
  static constexpr int kSmemBytes =
      kPipeBytes + kRingBytes > kMergeBytes ? kPipeBytes + kRingBytes : kMergeBytes;
  // Blocks per SM the shared memory allows on sm_90 (228 KiB, 1 KiB reserved per block); the
  // register budget is capped to match (down to 168 per thread), so registers do not cost a
  // block (decoding wants warps in flight per SM: docs/PERF.md "KV-cache decoding on the H100").
  static constexpr int kSmemBlocks = 233472 / (kSmemBytes + 1024);
  static constexpr int kRegBlocks = 65536 / (kThreads * 168);
  static constexpr int kMinBlocks0 = kSmemBlocks < kRegBlocks ? kSmemBlocks : kRegBlocks;
  static constexpr int kMinBlocks = kMinBlocks0 < 1 ? 1 : kMinBlocks0;
  static_assert(kKW % 16 == 0, "each warp needs whole k16 steps of keys");
  static_assert(D % 64 == 0, "the ldmatrix address trick needs rows of >= 128 bytes");
  static_assert(STAGES >= 2, "at least double buffering");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory over the sm_90 per-block limit");
};

// ---- geometry with range checks --------------------------------------------------------------

// Keys sequence b attends to (AttnParams::actual_seqlen_k) after checking the indices it depends
// on; 0 (and *err bits) when one is out of range.
__device__ __forceinline__ int checked_seqlen_k(const AttnParams& p, int b, int* err) {
  int end = p.seqlen_k;
  if (p.cache_seqlens) {
    const long long cs = p.cache_seqlens[b];
    if (cs < 0 || cs + p.seqlen_new > p.seqlen_k) {
      *err |= kKvErrSeqlens;
      return 0;
    }
    end = static_cast<int>(cs) + p.seqlen_new;
  }
  const int lp = p.leftpad(b);
  if (lp < 0 || lp > end) {
    *err |= kKvErrLeftpad;
    return 0;
  }
  if (!p.block_table && p.cache_batch_idx) {
    const int r = p.cache_batch_idx[b];
    if (r < 0 || r >= p.batch_cache) {
      *err |= kKvErrBatchIdx;
      return 0;
    }
  }
  return end - lp;
}

// Element offsets (head 0) of the k and v cache slots at logical position pos of sequence b;
// false (nothing to read) when the page's block_table entry is out of range.
__device__ __forceinline__ bool cache_slot(const AttnParams& p, int b, int pos, int64_t* ko,
                                           int64_t* vo) {
  if (p.block_table) {
    const int blk = p.block_table[static_cast<int64_t>(b) * p.block_table_batch_stride +
                                  pos / p.page_block_size];
    if (blk < 0 || blk >= p.num_blocks) return false;
    const int w = pos % p.page_block_size;
    *ko = static_cast<int64_t>(blk) * p.k_stride.batch + static_cast<int64_t>(w) * p.k_stride.row;
    *vo = static_cast<int64_t>(blk) * p.v_stride.batch + static_cast<int64_t>(w) * p.v_stride.row;
    return true;
  }
  const int r = p.cache_batch_idx ? p.cache_batch_idx[b] : b;
  *ko = static_cast<int64_t>(r) * p.k_stride.batch + static_cast<int64_t>(pos) * p.k_stride.row;
  *vo = static_cast<int64_t>(r) * p.v_stride.batch + static_cast<int64_t>(pos) * p.v_stride.row;
  return true;
}

// Channel c of row x (d channels, storage T) rotated at position pos (API.md §7.1), fp32 without
// contraction so the result matches the CPU backend's rounding; channels >= rotary_dim pass.
template <typename T>
__device__ __forceinline__ float rotary_channel(const AttnParams& p, const T* x, int c, int pos) {
  using E = prim::Elem<T>;
  const float xc = E::to_float(x[c]);
  if (c >= p.rotary_dim) return xc;
  const int half = p.rotary_dim / 2;
  const T* cs = static_cast<const T*>(p.rotary_cos) + static_cast<int64_t>(pos) * half;
  const T* sn = static_cast<const T*>(p.rotary_sin) + static_cast<int64_t>(pos) * half;
  int j, partner;
  bool first;
  if (p.rotary_interleaved) {
    j = c / 2;
    first = (c & 1) == 0;
    partner = first ? c + 1 : c - 1;
  } else {
    first = c < half;
    j = first ? c : c - half;
    partner = first ? c + half : c - half;
  }
  const float co = E::to_float(cs[j]), si = E::to_float(sn[j]);
  const float xp = E::to_float(x[partner]);
  // first: x0 * cos - x1 * sin; second: x0 * sin + x1 * cos (x0 = the first of the pair).
  return first ? __fsub_rn(__fmul_rn(xc, co), __fmul_rn(xp, si))
               : __fadd_rn(__fmul_rn(xp, si), __fmul_rn(xc, co));
}

// ---- 1. pre-pass: append (k rotated) and rotate q ---------------------------------------------
// Launched only with rotary or an append the attention cannot take (kv_run: a.fuse_append);
// otherwise the attention reads the new keys from k_new and writes them into the cache.
// One warp per row: items [0, seqlen_new * nheads_k) append token t = item / nheads_k of kv head
// item % nheads_k; the next seqlen_q * nheads items (only when q_rot) rotate q row (i, h) into
// q_rot (batch, seqlen_q, nheads, d) contiguous. blockIdx.y = sequence.
template <typename T>
__global__ void __launch_bounds__(128) kv_prepass_kernel(const AttnParams p, T* q_rot, int* err) {
  using E = prim::Elem<T>;
  kv_grid_trigger();  // the attention may launch now; it waits for this grid before reading
  const int b = blockIdx.y, lane = threadIdx.x % 32;
  const int item = blockIdx.x * 4 + threadIdx.x / 32;
  const int d = p.head_dim;
  const int n_app = p.k_new ? p.seqlen_new * p.nheads_k : 0;
  const int n_q = q_rot ? p.seqlen_q * p.nheads : 0;
  if (item >= n_app + n_q) return;
  int bad = 0;
  if (item < n_app) {
    const int t = item / p.nheads_k, hk = item % p.nheads_k;
    if (checked_seqlen_k(p, b, &bad) >= 0 && !bad) {
      const int pos = p.cache_seqlens[b] + t;  // k_new implies cache_seqlens (params.cpp)
      int64_t ko = 0, vo = 0;
      if (p.rotary_dim > 0 && pos >= p.seqlen_ro) bad |= kKvErrRotary;
      else if (!cache_slot(p, b, pos, &ko, &vo)) bad |= kKvErrBlockTable;
      else {
        const T* ks = static_cast<const T*>(p.k_new) + b * p.knew_stride.batch +
                      static_cast<int64_t>(t) * p.knew_stride.row + hk * p.knew_stride.head;
        const T* vs = static_cast<const T*>(p.v_new) + b * p.vnew_stride.batch +
                      static_cast<int64_t>(t) * p.vnew_stride.row + hk * p.vnew_stride.head;
        T* kd = static_cast<T*>(p.kcache) + ko + hk * p.k_stride.head;
        T* vd = static_cast<T*>(p.vcache) + vo + hk * p.v_stride.head;
        for (int c = lane; c < d; c += 32) {
          kd[c] = p.rotary_dim > 0 ? E::from_float(rotary_channel(p, ks, c, pos)) : ks[c];
          vd[c] = vs[c];
        }
      }
    }
  } else {
    const int qi = item - n_app, i = qi / p.nheads, h = qi % p.nheads;
    const int pos = p.rotary_pos_q(b, i);
    if (pos < 0 || pos >= p.seqlen_ro) {
      bad |= kKvErrRotary;
    } else {
      const T* qs = static_cast<const T*>(p.q) + p.q_offset(p.q_stride, b, i) + h * p.q_stride.head;
      T* qd = q_rot + ((static_cast<int64_t>(b) * p.seqlen_q + i) * p.nheads + h) * d;
      for (int c = lane; c < d; c += 32) qd[c] = E::from_float(rotary_channel(p, qs, c, pos));
    }
  }
  if (bad && lane == 0) kv_report(err, bad);
}

// ---- 2. attention ------------------------------------------------------------------------------

// ALiBi bias of (token i, key j) with the sequence's actual lengths (API.md §2.5).
__device__ __forceinline__ float kv_alibi(const AttnParams& p, float slope, int i, int j, int sq,
                                          int sk) {
  if (p.is_causal) return slope * static_cast<float>(j);
  const int dist = i + sk - sq - j;
  return -slope * static_cast<float>(dist < 0 ? -dist : dist);
}

template <typename T, int D, int BN, int NW, int STAGES>
__global__ void __launch_bounds__(NW * 32, (KvTraits<D, BN, NW, STAGES>::kMinBlocks))
    kv_attn_kernel(const AttnParams p, const KvArgs a) {
#if FLASHPLUS_HAS_MMA_SYNC
  using Tr = KvTraits<D, BN, NW, STAGES>;
  using TileQ = typename Tr::TileQ;
  using TileKV = typename Tr::TileKV;
  constexpr int kThreads = Tr::kThreads, kKW = Tr::kKW, kNT = Tr::kNT, kDT = Tr::kDT;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sKV = sQ + TileQ::kElems;  // stage s: K at 2 s, V at 2 s + 1 (tiles of TileKV::kElems)
  // Launched with PDL: nothing of global memory before the previous kernel (the pre-pass, or the
  // caller's kernel that wrote cache_seqlens / the cache) has finished.
  kv_grid_wait();

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int split = blockIdx.x % a.nsplit, mb = blockIdx.x / a.nsplit;
  const int hk = blockIdx.y, b = blockIdx.z;
  const int grp = p.group(), sq = p.seqlen_q;
  const int m_rows = sq * grp, m0 = mb * kRows;
  const int rows = min(kRows, m_rows - m0);
  const int dchunks = p.head_dim / 8;

  int bad = 0;
  const int sk = checked_seqlen_k(p, b, &bad);
  const int lp = bad ? 0 : p.leftpad(b);
  // Fused append: keys [jnew, sk) are the new tokens, read from k_new / v_new (never from the
  // cache slots this call writes). sk >= seqlen_new whenever the indices were in range.
  const int sn = a.fuse_append && !bad ? p.seqlen_new : 0;
  const int jnew = sk - sn;

  // Visible keys of this thread's two accumulator rows (g, g + 8) and of the whole block
  // (key_range's bounds are non-decreasing in the token).
  int lo[2], hi[2], tok[2];
  float slope[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = m0 + g + 8 * r;
    tok[r] = row / grp;
    slope[r] = 0.f;
    lo[r] = hi[r] = 0;
    if (row < m_rows) {
      p.key_range(tok[r], sq, sk, &lo[r], &hi[r]);
      slope[r] = prim::alibi_slope(p, b, hk * grp + row % grp);
    }
  }
  int blo, bhi, dummy;
  p.key_range(m0 / grp, sq, sk, &blo, &dummy);
  p.key_range((m0 + rows - 1) / grp, sq, sk, &dummy, &bhi);
  int t_begin = 0, t_end = 0;  // this split's own key tiles
  // The group's shared tail (splits > 1, a.pool_cnt): tiles [pool_base, pool_base + pool_n) are
  // claimed one at a time by whichever split of the (b, kv head, row block) group gets there
  // first, so splits that run fast take more and the grid's blocks end together.
  int pool_base = 0, pool_n = 0;
  if (blo < bhi) {
    const int n_first = blo / BN, n_end = (bhi + BN - 1) / BN;
    const int nt = n_end - n_first;
    pool_n = a.pool_cnt != nullptr ? min(a.pool_per_split * a.nsplit, nt / 2) : 0;
    const int ns_t = nt - pool_n;
    pool_base = n_first + ns_t;
    // Own tiles: as even as whole tiles allow (counts differ by one at most).
    t_begin = n_first + static_cast<int>(static_cast<int64_t>(ns_t) * split / a.nsplit);
    t_end = n_first + static_cast<int>(static_cast<int64_t>(ns_t) * (split + 1) / a.nsplit);
  }
  const int nstat = t_end - t_begin;
  const bool dyn = pool_n > 0;
  // Tiles of sequence positions >= nstat (claimed), by position % 8.
  int* const s_ring = reinterpret_cast<int*>(smem_raw + Tr::kPipeBytes);
  unsigned* const pool_cnt =
      dyn ? a.pool_cnt + (static_cast<int64_t>(b) * gridDim.y + hk) * (gridDim.x / a.nsplit) + mb
          : nullptr;
  bool claims_over = false;  // thread 0: a claim failed, the pool is empty
  auto claim = [&]() -> int {
    if (claims_over) return -1;
    const unsigned q = atomicAdd(pool_cnt, 1u);
    if (q < static_cast<unsigned>(pool_n)) return pool_base + static_cast<int>(q);
    claims_over = true;
    // Every split makes exactly one failing claim, so the last of them is the counter's last
    // touch in this call: it leaves 0 for the next.
    if (q == static_cast<unsigned>(pool_n + a.nsplit - 1)) *pool_cnt = 0u;
    return -1;
  };
  // Tile at position i of this block's sequence (-1: none); positions past nstat are published in
  // s_ring before the barrier that precedes their first use.
  auto seq = [&](int i) -> int { return i < nstat ? t_begin + i : dyn ? s_ring[i & 7] : -1; };

  const T* kbase = static_cast<const T*>(p.k) + hk * p.k_stride.head;
  const T* vbase = static_cast<const T*>(p.v) + hk * p.v_stride.head;

  // Q rows (zero beyond the block's rows and head_dim).
  {
    constexpr int kCpr = D / 8;
    const uint32_t base = prim::smem_u32(sQ);
    for (int c = tid; c < kRows * kCpr; c += kThreads) {
      const int r = c / kCpr, ch = c % kCpr;
      const bool ok = r < rows && ch < dchunks;
      const T* src = static_cast<const T*>(p.q);
      if (ok) {
        const int row = m0 + r;
        src += p.q_offset(p.q_stride, b, row / grp) + (hk * grp + row % grp) * p.q_stride.head + ch * 8;
      }
      prim::cp_async_16(base + 2 * TileQ::offset(r, ch * 8), src, ok);
    }
  }

  // One tile of K and V: thread (r0, ch) copies chunk ch of rows r0, r0 + kRpi, ... (kIt rows).
  // The per-row address math is most of the loop's instructions (and a block's warps are few), so
  // it is kept to adds where the geometry allows: a contiguous cache row or a page that holds the
  // whole tile is an arithmetic progression. With a block table, the entries a tile needs (one
  // per tile, or one per row for pages smaller than a tile) are read one tile ahead into
  // registers (`nb`), so the table's L2 round trip is not in front of every tile's copies, and
  // the rows' (page, slot) advance by adds: one division per tile, not two per row.
  constexpr int kCpr = D / 8;
  constexpr int kRpi = kThreads / kCpr;
  constexpr int kIt = BN / kRpi;
  static_assert(kRpi >= 1 && BN % kRpi == 0, "tile rows must split evenly over the threads");
  const int r0 = tid / kCpr, ch = tid % kCpr;
  const bool ch_ok = ch < dchunks;
  const int64_t krow = p.k_stride.row, vrow = p.v_stride.row;
  const int64_t kbs = p.k_stride.batch, vbs = p.v_stride.batch;
  // Contiguous cache: element offsets of key 0 (cache row of b, position leftpad).
  int64_t k0 = 0, v0 = 0;
  if (!p.block_table && !bad) cache_slot(p, b, lp, &k0, &v0);
  const bool paged = p.block_table != nullptr;  // leftpad is 0 with a block table (params.cpp)
  const bool page_holds_tile = paged && p.page_block_size % BN == 0;
  const int page = paged ? p.page_block_size : 1;
  const int* bt = paged ? p.block_table + static_cast<int64_t>(b) * p.block_table_batch_stride
                        : nullptr;
  const int step_q = kRpi / page, step_w = kRpi % page;  // one row step in (page, slot)
  // Pages of 16 keys (vLLM's default) inside a tile: a thread's row `it` lies in page
  // it * kRpi / 16 of the tile at slot r0 + it * kRpi % 16, both known at compile time, so a tile
  // needs BN / 16 table entries, not one per row, and a row costs the same adds as a contiguous one.
  constexpr bool kPage16Ok = BN % 16 == 0 && 16 % kRpi == 0;
  const bool page16 = kPage16Ok && paged && page == 16;
  // The tile loader's address pattern, fixed per call: 0 contiguous, 1 a page holds the tile,
  // 2 pages of 16, 3 one table entry per row.
  const int layout = !paged ? 0 : page_holds_tile ? 1 : page16 ? 2 : 3;
  // Block-table entries of the next tile to load: [0] = the tile's page (page_holds_tile), else
  // one per row; -1 for rows at or beyond sk (never read: the table has no entry there).
  int nb[kIt];
#pragma unroll
  for (int it = 0; it < kIt; ++it) nb[it] = -1;
  auto fetch_table = [&](int n) {
    if (page_holds_tile) {
      nb[0] = n * BN < sk ? bt[n * BN / page] : -1;
    } else if (page16) {
#pragma unroll
      for (int pi = 0; pi < BN / 16; ++pi)
        nb[pi] = n * BN + pi * 16 < sk ? bt[n * (BN / 16) + pi] : -1;
    } else if (paged) {
      const int j0 = n * BN + r0;
      int q = j0 / page, w = j0 % page;
#pragma unroll
      for (int it = 0; it < kIt; ++it) {
        nb[it] = j0 + it * kRpi < sk ? bt[q] : -1;
        q += step_q;
        w += step_w;
        if (w >= page) {
          w -= page;
          ++q;
        }
      }
    }
  };
  const T* knew = nullptr;
  const T* vnew = nullptr;
  if (sn > 0) {
    knew = static_cast<const T*>(p.k_new) + b * p.knew_stride.batch + hk * p.knew_stride.head;
    vnew = static_cast<const T*>(p.v_new) + b * p.vnew_stride.batch + hk * p.vnew_stride.head;
  }
  // The cache is read once per call: its lines go first when the L2 needs room, so the stream
  // does not push out the block table, the partial results the combine reads back, or whatever
  // else the L2 holds (docs/PERF.md "KV-cache decoding, round 8").
  const uint64_t l2_stream = prim::l2_policy_evict_first();
  // NEW: the tile holds keys of the new tokens (the last tile or two of the last split only), so
  // the steady-state loop carries no test for them.
  auto load_tile_impl = [&](int n, int stage, int n_next, auto new_rows, auto layout_c) {
    constexpr bool NEW = decltype(new_rows)::value;
    constexpr int L = decltype(layout_c)::value;
    const uint32_t sk_base = prim::smem_u32(sKV + 2 * stage * TileKV::kElems);
    const uint32_t sv_base = sk_base + TileKV::kBytes;
    const int jt = n * BN + r0;  // key of this thread's first row
    int64_t ko = 0, vo = 0;      // offsets of that row (contiguous / whole-tile page)
    bool tile_ok = true;
    int w = 0;                   // slot of the row in its page (pages smaller than a tile)
    if constexpr (L == 0) {
      ko = k0 + jt * krow;
      vo = v0 + jt * vrow;
    } else if constexpr (L == 1) {
      const int blk = nb[0], w0 = n * BN % page + r0;
      tile_ok = blk >= 0 && blk < p.num_blocks;
      ko = static_cast<int64_t>(blk) * kbs + static_cast<int64_t>(w0) * krow;
      vo = static_cast<int64_t>(blk) * vbs + static_cast<int64_t>(w0) * vrow;
    } else if constexpr (L == 2) {
      ko = static_cast<int64_t>(r0) * krow;  // slot r0 of the tile's pages
      vo = static_cast<int64_t>(r0) * vrow;
    } else {
      w = jt % page;
    }
#pragma unroll
    for (int it = 0; it < kIt; ++it) {
      const int r = r0 + it * kRpi, j = jt + it * kRpi;
      bool ok = j < sk && tile_ok;
      int64_t kr = ko + static_cast<int64_t>(it) * kRpi * krow;
      int64_t vr = vo + static_cast<int64_t>(it) * kRpi * vrow;
      if constexpr (L == 2) {
        const int blk = nb[it * kRpi / 16];
        const int ws = it * kRpi % 16;
        ok = ok && blk >= 0 && blk < p.num_blocks;
        kr = static_cast<int64_t>(blk) * kbs + ko + ws * krow;
        vr = static_cast<int64_t>(blk) * vbs + vo + ws * vrow;
      } else if constexpr (L == 3) {
        const int blk = nb[it];
        ok = ok && blk >= 0 && blk < p.num_blocks;
        kr = static_cast<int64_t>(blk) * kbs + static_cast<int64_t>(w) * krow;
        vr = static_cast<int64_t>(blk) * vbs + static_cast<int64_t>(w) * vrow;
        w += step_w;
        if (w >= page) w -= page;
      }
      if (j < sk && !ok) bad |= kKvErrBlockTable;
      ok = ok && ch_ok;
      const uint32_t o = 2 * TileKV::offset(r, ch * 8);
      const T* ks = ok ? kbase + kr + ch * 8 : kbase;
      const T* vs = ok ? vbase + vr + ch * 8 : vbase;
      if constexpr (NEW) {
        if (j >= jnew && j < sk) {  // a new token: from k_new / v_new, not through the table
          ok = ch_ok;
          ks = ok ? knew + (j - jnew) * p.knew_stride.row + ch * 8 : kbase;
          vs = ok ? vnew + (j - jnew) * p.vnew_stride.row + ch * 8 : vbase;
        }
      }
      prim::cp_async_16(sk_base + o, ks, ok, l2_stream);
      prim::cp_async_16(sv_base + o, vs, ok, l2_stream);
    }
    if (n_next >= 0) fetch_table(n_next);  // the next load's entries, consumed one load later
  };
  auto load_tile_new = [&](int n, int stage, int n_next, auto new_rows) {
    using I0 = std::integral_constant<int, 0>;
    using I1 = std::integral_constant<int, 1>;
    using I2 = std::integral_constant<int, 2>;
    using I3 = std::integral_constant<int, 3>;
    switch (layout) {
      case 0: load_tile_impl(n, stage, n_next, new_rows, I0{}); break;
      case 1: load_tile_impl(n, stage, n_next, new_rows, I1{}); break;
      case 2:
        if constexpr (kPage16Ok) load_tile_impl(n, stage, n_next, new_rows, I2{});
        break;
      default: load_tile_impl(n, stage, n_next, new_rows, I3{}); break;
    }
  };
  auto load_tile = [&](int n, int stage, int n_next) {
    if (sn > 0 && (n + 1) * BN > jnew)
      load_tile_new(n, stage, n_next, std::true_type{});
    else
      load_tile_new(n, stage, n_next, std::false_type{});
  };

  // Positions 0 .. STAGES are needed by the first barrier of the loop (the prologue's loads and
  // the table entries of the first loop load); later ones are claimed one iteration ahead.
  if (dyn && nstat <= STAGES) {
    if (tid == 0)
      for (int i = nstat; i <= STAGES; ++i) s_ring[i & 7] = claim();
    __syncthreads();
  }
  if (seq(0) >= 0) fetch_table(seq(0));
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    const int ns = seq(s);
    if (ns >= 0) load_tile(ns, s, seq(s + 1));
    prim::cp_async_commit();  // the first group also holds Q
  }

  // Fused append: the first row block of the last split writes the new tokens into the cache
  // (the pre-pass's job when not fused; this call reads them from k_new, so no block waits).
  if (sn > 0 && mb == 0 && split == a.nsplit - 1) {
    const int cs = p.cache_seqlens[b];  // in range: checked_seqlen_k passed
    for (int c = tid; c < sn * dchunks; c += kThreads) {
      const int tt = c / dchunks, cc = (c % dchunks) * 8;
      int64_t ko = 0, vo = 0;
      if (!cache_slot(p, b, cs + tt, &ko, &vo)) {
        bad |= kKvErrBlockTable;
        continue;
      }
      T* kd = static_cast<T*>(p.kcache) + ko + hk * p.k_stride.head + cc;
      T* vd = static_cast<T*>(p.vcache) + vo + hk * p.v_stride.head + cc;
      *reinterpret_cast<uint4*>(kd) =
          *reinterpret_cast<const uint4*>(knew + tt * p.knew_stride.row + cc);
      *reinterpret_cast<uint4*>(vd) =
          *reinterpret_cast<const uint4*>(vnew + tt * p.vnew_stride.row + cc);
    }
  }

  // Early report (checked calls, a.done): every index this block reads was checked above
  // (checked_seqlen_k: cache_seqlens, leftpad, cache_batch_idx) or is checked here: the block-table
  // entries of the keys its tiles load ([t_begin * BN, min(t_end * BN, sk)), the new tokens'
  // entries included) and, for the append's writer, of the slots it writes. The loads above are
  // in flight meanwhile (an out-of-range entry is never dereferenced there either). The block then
  // reports and counts; its later checks find nothing new and report nothing.
  if (a.done != nullptr) {
    // Bits of checked_seqlen_k are the block's (uniform); a table entry one of this thread's
    // loads above found bad counts as one found here.
    int tbad = (bad & kKvErrBlockTable) ? 1 : 0;
    if (paged) {
      auto check_pages = [&](int j_lo, int j_hi) {
        if (j_lo >= j_hi) return;
        for (int pg = j_lo / page + tid; pg <= (j_hi - 1) / page; pg += kThreads) {
          const int e = bt[pg];
          if (e < 0 || e >= p.num_blocks) tbad = 1;
        }
      };
      check_pages(t_begin * BN, min(t_end * BN, sk));
      if (dyn && split == a.nsplit - 1) check_pages(pool_base * BN, min((pool_base + pool_n) * BN, sk));
      if (sn > 0 && mb == 0 && split == a.nsplit - 1) check_pages(jnew, sk);
    }
    const int eb = (bad & ~kKvErrBlockTable) | (__syncthreads_or(tbad) ? kKvErrBlockTable : 0);
    if (tid == 0) {
      if (eb) kv_report(a.err, eb);
      kv_count_checked(a);
    }
  }

  const bool plain = !(p.softcap > 0.f) && p.alibi_slopes == nullptr;
  const float mul = plain ? p.softmax_scale * prim::kLog2e : prim::kLog2e;
  float acc[kDT][4];
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[dt][e] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};

  const int lrow = lane % 8, lsel1 = (lane / 8) % 2, lsel2 = lane / 16;
  const uint32_t sQ_base = prim::smem_u32(sQ);
  // Per-lane ldmatrix offsets at k-step 0; k-step kk is offset ^ (kk * 32) (see fwd_kernel.cuh).
  const uint32_t q_off = 2 * TileQ::offset(lsel1 * 8 + lrow, lsel2 * 8);
  const uint32_t k_off = 2 * TileKV::offset(warp * kKW + lsel2 * 8 + lrow, lsel1 * 8);
  const uint32_t v_off = 2 * TileKV::offset(warp * kKW + lsel1 * 8 + lrow, lsel2 * 8);
  const int ksteps = (dchunks + 1) / 2;  // k16 steps holding real channels (the rest are zeros)

  for (int i = 0;; ++i) {
    const int n = seq(i);
    if (n < 0) break;
    prim::cp_async_wait<STAGES - 2>();  // tile n (and Q) landed
    __syncthreads();                    // ... for every thread; everyone is done with tile n - 1
    {
      const int nn = seq(i + STAGES - 1);
      if (nn >= 0) load_tile(nn, (i + STAGES - 1) % STAGES, seq(i + STAGES));
      prim::cp_async_commit();
    }
    const int stage = i % STAGES;
    const uint32_t sK_base = prim::smem_u32(sKV + 2 * stage * TileKV::kElems);
    const uint32_t sV_base = sK_base + TileKV::kBytes;

    // ---- S = Q K^T over this warp's kKW keys ----
    float s[kNT][4];
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      if (kk < ksteps) {
        uint32_t qa[4];
        prim::ldmatrix_x4(qa, sQ_base + (q_off ^ (kk * 32)));
#pragma unroll
        for (int np = 0; np < kNT / 2; ++np) {
          uint32_t bf[4];
          prim::ldmatrix_x4(bf, sK_base + np * 16 * D * 2 + (k_off ^ (kk * 32)));
          prim::mma_16816<T>(s[2 * np], qa, bf[0], bf[1]);
          prim::mma_16816<T>(s[2 * np + 1], qa, bf[2], bf[3]);
        }
      }
    }

    // ---- logits, mask, online softmax (rows g, g + 8) ----
    const int j0 = n * BN + warp * kKW;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int j = j0 + nt * 8 + 2 * t + c;
          float z = s[nt][2 * r + c];
          if (!plain) {
            z *= p.softmax_scale;
            if (p.softcap > 0.f) z = p.softcap * tanhf(z / p.softcap);
            if (p.alibi_slopes) z += kv_alibi(p, slope[r], tok[r], j, sq, sk);
          }
          if (j < lo[r] || j >= hi[r]) z = -INFINITY;
          s[nt][2 * r + c] = z;
          mx = fmaxf(mx, z);
        }
      mx = prim::quad_max(mx);
      const float new_max = fmaxf(row_max[r], mx);
      const float m_scaled = (new_max == -INFINITY ? 0.f : new_max) * mul;
      const float corr = prim::fast_exp2(row_max[r] * mul - m_scaled);
      row_max[r] = new_max;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const float e = prim::fast_exp2(fmaf(s[nt][2 * r + c], mul, -m_scaled));
          s[nt][2 * r + c] = e;
          sum += e;
        }
      row_sum[r] = row_sum[r] * corr + sum;
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        acc[dt][2 * r] *= corr;
        acc[dt][2 * r + 1] *= corr;
      }
    }

    // ---- O += P V ----
#pragma unroll
    for (int kk = 0; kk < kKW / 16; ++kk) {
      uint32_t pa[4];
      prim::c_to_a<T>(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        if (dp < ksteps) {
          uint32_t bf[4];
          prim::ldmatrix_x4_trans(bf, sV_base + kk * 16 * D * 2 + (v_off ^ (dp * 32)));
          prim::mma_16816<T>(acc[2 * dp], pa, bf[0], bf[1]);
          prim::mma_16816<T>(acc[2 * dp + 1], pa, bf[2], bf[3]);
        }
      }
    }
    // The tile of position i + STAGES + 1, read after the next barrier (its table entries are
    // fetched with the load of position i + STAGES): the claim's round trip overlaps the wait for
    // tile i + 1.
    if (dyn && tid == 0 && i + STAGES + 1 >= nstat) s_ring[(i + STAGES + 1) & 7] = claim();
  }
  kv_grid_trigger();  // the combine may launch (it waits for this grid before reading)
  prim::cp_async_wait<0>();
  __syncthreads();  // the pipeline's memory becomes the merge area

  // ---- merge the warps: row max/sum and O through shared memory ----
  float* sM = reinterpret_cast<float*>(smem_raw);
  float* sL = sM + NW * kRows;
  float* sO = sL + NW * kRows;
  constexpr int kP = Tr::kOPitch;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = prim::quad_sum(row_sum[r]);
    const int row = g + 8 * r;
    if (t == 0) {
      sM[warp * kRows + row] = row_max[r];
      sL[warp * kRows + row] = l;
    }
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt)
      *reinterpret_cast<float2*>(sO + (warp * kRows + row) * kP + dt * 8 + 2 * t) =
          make_float2(acc[dt][2 * r], acc[dt][2 * r + 1]);
  }
  __syncthreads();

  const int64_t split_stride = static_cast<int64_t>(p.batch) * p.nheads * sq;
  for (int c = tid; c < kRows * (D / 4); c += kThreads) {
    const int row = c / (D / 4), c4 = c % (D / 4);
    if (row >= rows || c4 * 4 >= p.head_dim) continue;
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < NW; ++w) m = fmaxf(m, sM[w * kRows + row]);
    const float m_use = m == -INFINITY ? 0.f : m;
    float l = 0.f, o[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int w = 0; w < NW; ++w) {
      const float f = prim::fast_exp2(sM[w * kRows + row] * mul - m_use * mul);
      l += sL[w * kRows + row] * f;
      const float4 x = *reinterpret_cast<const float4*>(sO + (w * kRows + row) * kP + c4 * 4);
      o[0] += x.x * f;
      o[1] += x.y * f;
      o[2] += x.z * f;
      o[3] += x.w * f;
    }
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int mrow = m0 + row, i = mrow / grp, h = hk * grp + mrow % grp;
    if (a.nsplit == 1) {
      T* out = static_cast<T*>(p.out) + b * p.out_stride.batch +
               static_cast<int64_t>(i) * p.out_stride.row + h * p.out_stride.head + c4 * 4;
      uint2 v;
      v.x = prim::Elem<T>::pack(o[0] * inv, o[1] * inv);
      v.y = prim::Elem<T>::pack(o[2] * inv, o[3] * inv);
      *reinterpret_cast<uint2*>(out) = v;
      if (c4 == 0 && p.softmax_lse)
        p.softmax_lse[p.lse_offset(b, h, i)] =
            l > 0.f ? m_use * mul * prim::kLn2 + logf(l) : INFINITY;
    } else {
      const int64_t rid = split * split_stride + (static_cast<int64_t>(b) * p.nheads + h) * sq + i;
      *reinterpret_cast<float4*>(a.o_acc + rid * p.head_dim + c4 * 4) =
          make_float4(o[0] * inv, o[1] * inv, o[2] * inv, o[3] * inv);
      if (c4 == 0) a.lse_acc[rid] = l > 0.f ? m_use * mul * prim::kLn2 + logf(l) : -INFINITY;
    }
  }
  if (bad && a.done == nullptr) kv_report(a.err, bad);  // early report: done before the loop
#endif  // FLASHPLUS_HAS_MMA_SYNC
}

// ---- 3. combine the splits ---------------------------------------------------------------------
// One block of kCombineThreads per (b, h, i) row: lse = log sum_s exp(lse_s), out = sum_s
// exp(lse_s - lse) O_s; a row no split saw a key of gets out = 0, lse = +inf. The splits are
// spread over the block (the first version walked them serially in one warp: one dependent L2
// round trip per split, ~87 us at 99 splits): thread s reads lse_s (nsplit <= 128), the block
// reduces max and sum, then thread (group, chunk) sums splits group, group + groups, ... of
// 4-channel chunk `chunk` kCombineBatch splits at a time (16-byte loads, all in flight), and the
// groups' partial sums meet in shared memory.
constexpr int kCombineThreads = 128;
constexpr int kMaxSplits = 128;
constexpr int kCombineBatch = 16;  // split loads in flight per combine thread

template <typename T>
__global__ void __launch_bounds__(kCombineThreads) kv_combine_kernel(const AttnParams p, const KvArgs a) {
  static_assert(kMaxSplits <= kCombineThreads, "one thread per split's lse");
  constexpr int kWarps = kCombineThreads / 32;
  __shared__ float s_w[kMaxSplits];            // exp(lse_s - lse) per split
  __shared__ float s_max[kWarps], s_sum[kWarps];
  __shared__ float4 s_part[kCombineThreads];   // per (group, chunk) partial O
  kv_grid_wait();  // launched with PDL: the attention's partials are complete past this point
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t rows = static_cast<int64_t>(p.batch) * p.nheads * p.seqlen_q;
  const int64_t rid = blockIdx.x;
  const int i = static_cast<int>(rid % p.seqlen_q);
  const int h = static_cast<int>((rid / p.seqlen_q) % p.nheads);
  const int b = static_cast<int>(rid / (static_cast<int64_t>(p.seqlen_q) * p.nheads));
  const int d = p.head_dim, ns = a.nsplit;

  // head_dim is a multiple of 8 up to 256: 2..64 chunks of 4 channels, >= 2 groups. Thread
  // (group, chunk) sums splits group, group + groups, ... of chunk `chunk`, kCombineBatch of them
  // per batch of loads; the first batch is loaded before the LSE reduction (it does not depend on
  // it), so up to 64 splits (d 128) cost one L2 round trip besides the LSE's.
  const int nchunk = d / 4, groups = kCombineThreads / nchunk;
  const int chunk = tid % nchunk, grp = tid / nchunk;
  const float* base = a.o_acc + rid * d + chunk * 4;
  const int64_t sstride = rows * d;
  float4 x[kCombineBatch];
  auto load_batch = [&](int s0) {
#pragma unroll
    for (int u = 0; u < kCombineBatch; ++u) {
      const int su = s0 + u * groups;
      // Every split writes every row of its blocks (O = 0 where it saw nothing), so the
      // weight-0 pieces are finite; the guard only keeps reads inside the workspace.
      x[u] = grp < groups && su < ns ? __ldcg(reinterpret_cast<const float4*>(base + su * sstride))
                                     : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  };
  load_batch(grp);

  const float ls = tid < ns ? a.lse_acc[tid * rows + rid] : -INFINITY;
  float m = ls;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if (lane == 0) s_max[warp] = m;
  __syncthreads();
  m = s_max[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) m = fmaxf(m, s_max[w]);
  const float e = m == -INFINITY ? 0.f : expf(ls - m);  // ls = -inf (saw nothing): 0
  const float wsum = prim::warp_sum(e);
  if (lane == 0) s_sum[warp] = wsum;
  __syncthreads();
  float sum = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) sum += s_sum[w];
  const float lse = m == -INFINITY ? INFINITY : m + logf(sum);
  if (tid < ns) s_w[tid] = m == -INFINITY ? 0.f : expf(ls - lse);
  __syncthreads();

  float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
  if (grp < groups && m != -INFINITY) {
    for (int s = grp; s < ns; s += kCombineBatch * groups) {
      if (s != grp) load_batch(s);
#pragma unroll
      for (int u = 0; u < kCombineBatch; ++u) {
        const int su = s + u * groups;
        const float w = su < ns ? s_w[su] : 0.f;
        o.x = fmaf(w, x[u].x, o.x);
        o.y = fmaf(w, x[u].y, o.y);
        o.z = fmaf(w, x[u].z, o.z);
        o.w = fmaf(w, x[u].w, o.w);
      }
    }
  }
  s_part[tid] = o;
  __syncthreads();
  if (tid < nchunk) {
    for (int g2 = 1; g2 < groups; ++g2) {
      const float4 x = s_part[g2 * nchunk + tid];
      o.x += x.x;
      o.y += x.y;
      o.z += x.z;
      o.w += x.w;
    }
    T* out = static_cast<T*>(p.out) + b * p.out_stride.batch +
             static_cast<int64_t>(i) * p.out_stride.row + h * p.out_stride.head + tid * 4;
    uint2 v;
    v.x = prim::Elem<T>::pack(o.x, o.y);
    v.y = prim::Elem<T>::pack(o.z, o.w);
    *reinterpret_cast<uint2*>(out) = v;
  }
  if (tid == 0 && p.softmax_lse) p.softmax_lse[p.lse_offset(b, h, i)] = lse;
}

// ---- host: launch one tile ----------------------------------------------------------------------

constexpr int kMaxDevices = 64;

// Blocks of the tile that fit on one SM (for the split heuristic), after allowing the tile's
// shared memory. Both are per-device runtime calls worth microseconds, i.e. a few percent of a
// decoding step: done once per (tile, device), the answer kept.
template <typename T, int D, int BN, int NW, int STAGES>
Status kv_prepare_tile(int* blocks_per_sm) {
  using Tr = KvTraits<D, BN, NW, STAGES>;
  static std::atomic<int> known[kMaxDevices];  // 0 = not asked yet
  int dev = 0;
  FLASHPLUS_GPU_CHECK(cudaGetDevice(&dev));
  if (dev >= 0 && dev < kMaxDevices && (*blocks_per_sm = known[dev].load()) > 0) return Status::Ok();
  int max_smem = 0;
  FLASHPLUS_GPU_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (Tr::kSmemBytes > max_smem)
    return Status::NoInstance("kvcache: tile needs more shared memory than this device has");
  auto kernel = kv_attn_kernel<T, D, BN, NW, STAGES>;
  FLASHPLUS_GPU_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           Tr::kSmemBytes));
  FLASHPLUS_GPU_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks_per_sm, kernel,
                                                                     Tr::kThreads, Tr::kSmemBytes));
  *blocks_per_sm = std::max(1, *blocks_per_sm);
  if (dev >= 0 && dev < kMaxDevices) known[dev].store(*blocks_per_sm);
  return Status::Ok();
}

// Launches `kernel` on `stream`, with programmatic stream serialization when `pdl` (sm_90: the
// kernel may be scheduled while the previous one drains; it calls kv_grid_wait() first).
template <typename... Args>
cudaError_t kv_launch(void (*kernel)(Args...), dim3 grid, int threads, int smem,
                      cudaStream_t stream, bool pdl, const Args&... args) {
  cudaLaunchConfig_t lc{};
  lc.gridDim = grid;
  lc.blockDim = dim3(threads);
  lc.dynamicSmemBytes = static_cast<size_t>(smem);
  lc.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  lc.attrs = attr;
  lc.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&lc, kernel, args...);
}

// Programmatic dependent launch for the attention and the combine where the chip has it (sm_90).
inline bool kv_pdl_enabled(const DeviceInfo& dev) { return dev.arch >= 90 && dev.arch < 1000; }

template <typename T, int D, int BN, int NW, int STAGES>
Status kv_launch_tile(const AttnParams& p, const KvArgs& a, cudaStream_t stream, bool pdl) {
  using Tr = KvTraits<D, BN, NW, STAGES>;
  const long long mblocks = (static_cast<long long>(p.seqlen_q) * p.group() + kRows - 1) / kRows;
  const long long gx = mblocks * a.nsplit;
  if (gx > 0x7fffffffLL || p.batch > 65535 || p.nheads_k > 65535)
    return Status::Unsupported("kvcache: grid too large (seqlen_q * group * splits or batch)");
  const dim3 grid(static_cast<unsigned>(gx), p.nheads_k, p.batch);
  FLASHPLUS_GPU_CHECK(kv_launch(kv_attn_kernel<T, D, BN, NW, STAGES>, grid, Tr::kThreads,
                                Tr::kSmemBytes, stream, pdl, p, a));
  return Status::Ok();
}

// ---- host: one call -------------------------------------------------------------------------------

// Mapped pinned host slots of kKvErrSlots flags and the done word, reused across calls: a
// checked call takes one, zeroes it on the host, the kernels store into it through the mapped
// address, and once the host has seen the done word (early report) or synchronised the stream it
// reads the flags and gives the slot back. Replaces a memset and a pageable 4-byte device-to-host
// copy per call. A slot whose call failed before that is not given back (a kernel may still write
// it). Each slot has a device counter for the early report (zeroed once here, reset by the last
// block of each call), so slots are kept per device.
constexpr int kKvSlotWords = kKvErrSlots + 1;
struct KvErrSlot {
  int* host = nullptr;
  int* device = nullptr;
  unsigned* count = nullptr;
};
inline std::mutex& kv_err_mutex() {
  static std::mutex mu;
  return mu;
}
inline std::vector<KvErrSlot>& kv_err_free(int device) {
  static std::vector<KvErrSlot> v[kMaxDevices];
  return v[device];
}
inline Status kv_err_acquire(int device, KvErrSlot* slot) {
  if (device < 0 || device >= kMaxDevices)
    return Status::Unsupported("kvcache: device index beyond 64");
  {
    std::lock_guard<std::mutex> lock(kv_err_mutex());
    auto& v = kv_err_free(device);
    if (!v.empty()) {
      *slot = v.back();
      v.pop_back();
      return Status::Ok();
    }
  }
  void* h = nullptr;
  FLASHPLUS_GPU_CHECK(cudaHostAlloc(&h, kKvSlotWords * sizeof(int),
                                    cudaHostAllocMapped | cudaHostAllocPortable));
  void* d = nullptr;
  cudaError_t e = cudaHostGetDevicePointer(&d, h, 0);
  if (e != cudaSuccess) {
    (void)cudaFreeHost(h);
    return platform::gpu_status(e, "kvcache: mapping the error flags");
  }
  void* c = nullptr;
  e = cudaMalloc(&c, sizeof(unsigned));
  if (e == cudaSuccess) e = cudaMemset(c, 0, sizeof(unsigned));  // synchronous: once per slot
  if (e != cudaSuccess) {
    if (c != nullptr) (void)cudaFree(c);
    (void)cudaFreeHost(h);
    return platform::gpu_status(e, "kvcache: the early report's counter");
  }
  slot->host = static_cast<int*>(h);
  slot->device = static_cast<int*>(d);
  slot->count = static_cast<unsigned*>(c);
  return Status::Ok();
}
inline void kv_err_release(int device, const KvErrSlot& slot) {
  std::lock_guard<std::mutex> lock(kv_err_mutex());
  kv_err_free(device).push_back(slot);
}

// How a checked call waits for its error flags: the early report (KvArgs::done): the host spins
// on the done word, which the attention's blocks set once all of them have checked their indices
// (before their key loops), for up to kKvEarlySpinUs microseconds, then falls back to
// cudaStreamSynchronize (work queued ahead of the call, a failed kernel); the call returns while
// its kernels still run, as an unchecked call does.
constexpr int kKvEarlySpinUs = 20000;

// Spins until *word != 0 (true) or `us` microseconds passed (false).
inline bool kv_spin_done(const int* word, int us) {
  const volatile int* w = word;
  const auto t0 = std::chrono::steady_clock::now();
  const auto limit = std::chrono::microseconds(us);
  for (unsigned it = 0;; ++it) {
    if (*w != 0) {
      std::atomic_thread_fence(std::memory_order_acquire);
      return true;
    }
    if ((it & 31u) == 31u && std::chrono::steady_clock::now() - t0 > limit) return false;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
}

inline int64_t round_up_256(int64_t n) { return (n + 255) / 256 * 256; }

// Claim counters of the shared tail (KvArgs::pool_cnt), one per (b, kv head, row block) group,
// 0 between calls: each group's last claim resets its counter, so the calls of one stream reuse
// the same counters in stream order. Calls on other streams may overlap, so each stream has its
// own, keyed by the stream's process-unique id (cudaStreamGetId: never reused, unlike handles).
// Allocated stream-ordered from the workspace pool and zeroed once, grown when a call needs more
// (the smaller array is freed behind the calls that used it).
inline Status kv_pool_counters(int device, cudaStream_t stream, int64_t groups, unsigned** out) {
  unsigned long long sid = 0;
  FLASHPLUS_GPU_CHECK(cudaStreamGetId(stream, &sid));
  struct Counters {
    unsigned* ptr = nullptr;
    int64_t cap = 0;
  };
  static std::mutex mu;
  static std::map<std::pair<int, unsigned long long>, Counters> by_stream;
  std::lock_guard<std::mutex> lock(mu);
  Counters& c = by_stream[{device, sid}];
  if (c.cap < groups) {
    cudaMemPool_t pool = nullptr;
    FLASHPLUS_RETURN_IF_ERROR(workspace_pool(device, &pool));
    const int64_t cap = std::max<int64_t>(groups, 1024);
    void* fresh = nullptr;
    FLASHPLUS_GPU_CHECK(cudaMallocFromPoolAsync(&fresh, static_cast<size_t>(cap) * sizeof(unsigned),
                                                pool, stream));
    const cudaError_t e = cudaMemsetAsync(fresh, 0, static_cast<size_t>(cap) * sizeof(unsigned), stream);
    if (e != cudaSuccess) {
      (void)cudaFreeAsync(fresh, stream);
      return platform::gpu_status(e, "kvcache: zeroing the tail's claim counters");
    }
    if (c.ptr != nullptr) (void)cudaFreeAsync(c.ptr, stream);
    c.ptr = static_cast<unsigned*>(fresh);
    c.cap = cap;
  }
  *out = c.ptr;
  return Status::Ok();
}

// The whole call for storage type T (kvcache.h: run_kvcache).
template <typename T>
Status kv_run(const AttnParams& p0, const KernelConfig& cfg, const DeviceInfo& dev,
              cudaStream_t stream, bool check, KernelConfig* used) {
  AttnParams p = p0;
  // The head-dim bucket: the smallest of the spec's >= head_dim (kvcache_supports: <= 256).
  constexpr int kBuckets[] = FLASHPLUS_KVCACHE_HEAD_DIMS;
  int D = 0;
  for (int b : kBuckets)
    if (D == 0 && p.head_dim <= b) D = b;
  KernelConfig tile = cfg;
  if (tile.block_n == 0 && tile.num_warps == 0 && tile.stages == 0) {
    const KernelConfig def = kvcache_default_tile(p.head_dim);
    tile.block_n = def.block_n;
    tile.num_warps = def.num_warps;
    tile.stages = def.stages;
  }
  using Prep = Status (*)(int*);
  using Launch = Status (*)(const AttnParams&, const KvArgs&, cudaStream_t, bool);
  Prep prep = nullptr;
  Launch launch = nullptr;
  KernelConfig ran;
#define FLASHPLUS_KV_PICK(DD, BN, NW, ST)                                                   \
  if (DD == D && launch == nullptr && tile.block_n == BN &&                                 \
      (tile.num_warps == NW || tile.num_warps == 0) && (tile.stages == ST || tile.stages == 0)) { \
    prep = kv_prepare_tile<T, DD, BN, NW, ST>;                                              \
    launch = kv_launch_tile<T, DD, BN, NW, ST>;                                             \
    ran.block_m = kRows;                                                                    \
    ran.block_n = BN;                                                                       \
    ran.num_warps = NW;                                                                     \
    ran.stages = ST;                                                                        \
  }
  FLASHPLUS_KV_TILES_ALL(FLASHPLUS_KV_PICK)
#undef FLASHPLUS_KV_PICK
  if (launch == nullptr)
    return Status::NoInstance("kvcache: no compiled tile n" + std::to_string(tile.block_n) + "w" +
                              std::to_string(tile.num_warps) + "s" + std::to_string(tile.stages) +
                              " for head-dim bucket " + std::to_string(D));
  int blocks_per_sm = 1;
  FLASHPLUS_RETURN_IF_ERROR(prep(&blocks_per_sm));
  const int nsplit = std::min(kMaxSplits, std::max(1, p.num_splits > 0   ? p.num_splits
                                               : cfg.num_splits > 0 ? cfg.num_splits
                                                                    : kvcache_num_splits(p, dev, ran.block_n, blocks_per_sm)));
  ran.num_splits = nsplit;

  // Workspace, stream-ordered: [error flags when unchecked | rotated q | split LSE | split O].
  const bool rot = p.rotary_dim > 0 && p.seqlen_q > 0;
  const bool append = p.k_new != nullptr && p.seqlen_new > 0;
  const int64_t rows = static_cast<int64_t>(p.batch) * p.nheads * p.seqlen_q;
  const int64_t q_bytes = rot ? round_up_256(rows * p.head_dim * static_cast<int64_t>(sizeof(T))) : 0;
  const int64_t lse_bytes = nsplit > 1 ? round_up_256(nsplit * rows * 4) : 0;
  const int64_t o_bytes = nsplit > 1 ? nsplit * rows * p.head_dim * 4 : 0;
  int device = 0;
  FLASHPLUS_GPU_CHECK(cudaGetDevice(&device));
  cudaMemPool_t pool = nullptr;
  FLASHPLUS_RETURN_IF_ERROR(workspace_pool(device, &pool));
  char* ws = nullptr;
  FLASHPLUS_GPU_CHECK(cudaMallocFromPoolAsync(reinterpret_cast<void**>(&ws),
                                              static_cast<size_t>(256 + q_bytes + lse_bytes + o_bytes),
                                              pool, stream));
  KvArgs a;
  a.nsplit = nsplit;
  // The shared tail's counters first: nothing to give back if that fails.
  if (nsplit > 1 && kKvcachePoolPerSplit > 0 && rows > 0) {
    const int64_t mblocks = (static_cast<int64_t>(p.seqlen_q) * p.group() + kRows - 1) / kRows;
    const Status cs = kv_pool_counters(device, stream, int64_t{p.batch} * p.nheads_k * mblocks,
                                       &a.pool_cnt);
    if (!cs.ok()) {
      (void)cudaFreeAsync(ws, stream);
      return cs;
    }
    a.pool_per_split = kKvcachePoolPerSplit;
  }
  KvErrSlot slot;
  if (check) {
    const Status sst = kv_err_acquire(device, &slot);
    if (!sst.ok()) {
      (void)cudaFreeAsync(ws, stream);
      return sst;
    }
    for (int i = 0; i < kKvSlotWords; ++i) slot.host[i] = 0;  // the previous user is done
    a.err = slot.device;
  } else {
    a.err = reinterpret_cast<int*>(ws);  // written on error only, never read
  }
  const bool pdl = kv_pdl_enabled(dev);
  // The append rides on the attention when there is one to ride on (rows > 0), k is not rotated
  // (the rotated key would have to be computed by every block that reads it) and the new rows
  // allow 16-byte copies.
  const auto rows16 = [](const void* ptr, const Strides3& st) {
    return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && st.row % 8 == 0 && st.head % 8 == 0 &&
           st.batch % 8 == 0;
  };
  a.fuse_append = append && !rot && rows > 0 &&
                  rows16(p.k_new, p.knew_stride) && rows16(p.v_new, p.vnew_stride);
  const int spin_us = check && rows > 0 ? kKvEarlySpinUs : 0;
  if (spin_us > 0) {
    a.done = slot.device + kKvErrSlots;
    a.done_count = slot.count;
  }
  T* q_rot = rot ? reinterpret_cast<T*>(ws + 256) : nullptr;
  if (nsplit > 1) {
    a.lse_acc = reinterpret_cast<float*>(ws + 256 + q_bytes);
    a.o_acc = reinterpret_cast<float*>(ws + 256 + q_bytes + lse_bytes);
  }
  Status st = [&]() -> Status {
    if ((append && !a.fuse_append) || rot) {
      const int64_t items = (append ? static_cast<int64_t>(p.seqlen_new) * p.nheads_k : 0) +
                            (rot ? static_cast<int64_t>(p.seqlen_q) * p.nheads : 0);
      if ((items + 3) / 4 > 0x7fffffffLL || p.batch > 65535)
        return Status::Unsupported("kvcache: pre-pass grid too large");
      const dim3 grid(static_cast<unsigned>((items + 3) / 4), p.batch);
      kv_prepass_kernel<T><<<grid, 128, 0, stream>>>(p, q_rot, a.err);
      FLASHPLUS_GPU_CHECK_LAUNCH("kv_prepass_kernel");
    }
    if (rows == 0) return Status::Ok();
    if (rot) {
      p.q = q_rot;
      p.q_stride = {static_cast<int64_t>(p.seqlen_q) * p.nheads * p.head_dim,
                    static_cast<int64_t>(p.nheads) * p.head_dim, p.head_dim};
    }
    FLASHPLUS_RETURN_IF_ERROR(launch(p, a, stream, pdl));
    if (nsplit > 1) {
      if (rows > 0x7fffffffLL) return Status::Unsupported("kvcache: combine grid too large");
      FLASHPLUS_GPU_CHECK(kv_launch(kv_combine_kernel<T>, dim3(static_cast<unsigned>(rows)),
                                    kCombineThreads, 0, stream, pdl, p, a));
    }
    return Status::Ok();
  }();
  const cudaError_t fe = cudaFreeAsync(ws, stream);
  if (!st.ok()) return st;  // a checked call's slot is dropped: its kernels may still run
  int err = 0;
  if (check) {
    const bool signalled = spin_us > 0 && kv_spin_done(slot.host + kKvErrSlots, spin_us);
    if (!signalled) {
      const cudaError_t ce = cudaStreamSynchronize(stream);
      if (ce != cudaSuccess)
        return platform::gpu_status(ce, "kvcache: waiting for the error flags");
    }
    const volatile int* h = slot.host;
    for (int i = 0; i < kKvErrSlots; ++i)
      if (h[i]) err |= 1 << i;
    // Kernels that completed without setting done would leave the counter in doubt: the slot is
    // dropped (does not happen while every block runs its check).
    if (spin_us == 0 || h[kKvErrSlots] != 0) kv_err_release(device, slot);
  }
  if (fe != cudaSuccess) return platform::gpu_status(fe, "cudaFreeAsync(workspace)");
  if (used) *used = ran;
  return kvcache_error_status(err);
}

// Instances (kvcache_<dtype>.cu).
Status run_f16(const AttnParams& p, const KernelConfig& cfg, const DeviceInfo& dev,
               cudaStream_t stream, bool check, KernelConfig* used);
Status run_bf16(const AttnParams& p, const KernelConfig& cfg, const DeviceInfo& dev,
                cudaStream_t stream, bool check, KernelConfig* used);

}  // namespace flashplus::gpu::kv
