// FlashAttention-2-style forward on tensor cores (mma.sync m16n8k16, fp32 accumulation).
//
// One thread block = BM query rows of one (batch, head); NW warps, each owning kMT = BM/(16*NW)
// m16 row tiles. The block walks the key tiles [n_first, n_last] that its rows can see; Q stays
// in shared memory, K and V have one buffer each and are pipelined as in FA2: V(n) loads while
// S = Q K(n)^T runs, K(n+1) loads while the softmax and O += P V(n) run. P never leaves
// registers (C fragments repacked as A fragments). Tiles strictly inside every row's visible
// range skip the element mask; tiles outside all rows' ranges are never visited.
//
// Geometry goes through AttnParams' per-sequence helpers, once per block, outside the key loop:
// fixed length, varlen (grid over the longest sequence; a block past its sequence's end leaves at
// once; packed q/out rows at cu_seqlens_q[b], keys at cu_seqlens_k[b], seqused_k, masks and ALiBi
// aligned per sequence, lse (nheads, total_q)) and paged varlen (block_table; each BN-key tile
// lies in one page when page_block_size % BN == 0, else no instance). Dropout (kDrop, compiled for
// each bucket's default tile only) applies the Philox keep of flashplus/philox.h to P in registers
// after the row sum, so lse is before dropout, and scales O by 1 / (1 - p) at the end.
#pragma once
#include "platform/gpu_runtime.h"
#if FLASHPLUS_VENDOR_HIP
#error "fwd_kernel.cuh is the NVIDIA (mma.sync) path; HIP builds use the no_instance stubs"
#endif
#include <cmath>
#include <cstdint>

#include "flashplus/params.h"
#include "flashplus/status.h"
#include "gpu/gpu_kernels.h"
#include "platform/gpu_runtime.h"
#include "platform/types.h"
#include "primitives/attn_score.h"
#include "primitives/tile_mma.h"
#include "flashplus_gen/tiles.h"  // the tile lists, generated from kernels/registry/spec.json

namespace flashplus::gpu::tc {

// Compiled forward tiles per head-dim bucket: FLASHPLUS_FWD_TILES_D<D>(X), X(D, BM, BN, NW),
// generated from kernels/registry/spec.json (family "fwd"). The first entry of each bucket is its
// default. Host dispatch and instantiation both read these lists (one source).

// Whether (D, BM, BN, NW) is the first (default) tile of its bucket's list.
struct FwdTileDesc {
  int d, bm, bn, nw;
};
#define FLASHPLUS_FWD_DESC(DD, BM, BN, NW) FwdTileDesc{DD, BM, BN, NW},
inline constexpr FwdTileDesc kFwdTileList[] = {
    FLASHPLUS_FWD_TILES_ALL(FLASHPLUS_FWD_DESC) FwdTileDesc{0, 0, 0, 0}};  // end (never empty)
#undef FLASHPLUS_FWD_DESC
constexpr bool is_default_fwd_tile(int d, int bm, int bn, int nw) {
  for (const FwdTileDesc& t : kFwdTileList)
    if (t.d == d) return t.bm == bm && t.bn == bn && t.nw == nw;
  return false;
}

template <int D, int BM, int BN, int NW>
struct FwdTraits {
  static constexpr int kThreads = NW * 32;
  static constexpr int kMT = BM / (16 * NW);  // m16 row tiles per warp
  static constexpr int kNT = BN / 8;          // n8 tiles of S = Q K^T per row tile
  static constexpr int kDT = D / 8;           // n8 tiles of O per row tile
  using TileQ = prim::SwizzledTile<BM, D>;
  using TileKV = prim::SwizzledTile<BN, D>;
  static constexpr int kSmemBytes = TileQ::kBytes + 2 * TileKV::kBytes;
  // fp32 accumulators each thread holds: O (kMT*kDT*4) + S (kMT*kNT*4).
  static constexpr int kAccRegs = kMT * kDT * 4 + kMT * kNT * 4;
  static_assert(BM % (16 * NW) == 0 && kMT >= 1, "BM must be a multiple of 16 * warps");
  static_assert(BN % 16 == 0 && D % 16 == 0, "BN and D must be multiples of 16");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory over the sm_80/sm_90 per-block limit");
  static_assert(kAccRegs <= 192, "accumulators leave too few of the 255 registers");
};

// Cooperative async copy of a ROWS x D tile (rows beyond rows_valid and head-dim chunks beyond
// dchunks are zero-filled) into a swizzled shared-memory tile.
template <typename Tile, int ROWS, int D, int THREADS, typename T>
__device__ __forceinline__ void load_tile_async(T* smem, const T* gmem, int64_t row_stride,
                                                int rows_valid, int dchunks, const T* safe,
                                                int tid) {
  constexpr int kChunksPerRow = D / 8;
  static_assert(THREADS % kChunksPerRow == 0 || kChunksPerRow % THREADS == 0, "copy shape");
  constexpr int kRowsPerIt = THREADS / kChunksPerRow;  // rows one pass of the block covers
  static_assert(kRowsPerIt >= 1 && ROWS % kRowsPerIt == 0, "tile rows must split evenly");
  const int r0 = tid / kChunksPerRow, ch = tid % kChunksPerRow;
  const bool ch_ok = ch < dchunks;
  const T* src = gmem + r0 * row_stride + ch * 8;
  const int64_t step = kRowsPerIt * row_stride;
  const uint32_t base = prim::smem_u32(smem);
#pragma unroll
  for (int it = 0; it < ROWS / kRowsPerIt; ++it) {
    const int r = r0 + it * kRowsPerIt;
    const bool pred = ch_ok && r < rows_valid;
    prim::cp_async_16(base + 2 * Tile::offset(r, ch * 8), pred ? src : safe, pred);
    src += step;
  }
}

// Dropout keep bits of the column pair (j, j + 1) of a row whose linear Philox index (philox.h)
// of column j is n. One Philox call covers 4 consecutive indices; a pair straddles two calls only
// when n % 4 == 3 (odd Sk*).
__device__ __forceinline__ void dropout_keep_pair(const AttnParams& p, uint64_t n, bool* k0,
                                                  bool* k1) {
  const uint32_t seed_lo = static_cast<uint32_t>(p.philox_seed),
                 seed_hi = static_cast<uint32_t>(p.philox_seed >> 32);
  const uint32_t off_lo = static_cast<uint32_t>(p.philox_offset),
                 off_hi = static_cast<uint32_t>(p.philox_offset >> 32);
  const uint64_t blk = n >> 2;
  const Philox4 r = philox4x32_10(
      Philox4{{static_cast<uint32_t>(blk), static_cast<uint32_t>(blk >> 32), off_lo, off_hi}},
      seed_lo, seed_hi);
  const int w = static_cast<int>(n & 3);
  // Select without dynamic register indexing (which would spill r to local memory).
  const uint32_t d0 = w == 0 ? r.x[0] : w == 1 ? r.x[1] : w == 2 ? r.x[2] : r.x[3];
  uint32_t d1;
  if (w < 3) {
    d1 = w == 0 ? r.x[1] : w == 1 ? r.x[2] : r.x[3];
  } else {
    const uint64_t nb = blk + 1;
    d1 = philox4x32_10(
             Philox4{{static_cast<uint32_t>(nb), static_cast<uint32_t>(nb >> 32), off_lo, off_hi}},
             seed_lo, seed_hi)
             .x[0];
  }
  *k0 = d0 < p.dropout_threshold;
  *k1 = d1 < p.dropout_threshold;
}

// kVar: per-sequence geometry (varlen, paged varlen). Without it the fixed-length instance reads
// lengths and offsets straight from the params, exactly as before varlen existed (no extra live
// registers in the key loop). kDrop: dropout.
template <typename T, int D, int BM, int BN, int NW, bool kVar, bool kDrop>
__global__ void __launch_bounds__(NW * 32)
    fwd_tc_kernel(const AttnParams p) {
#if FLASHPLUS_HAS_MMA_SYNC
  using Tr = FwdTraits<D, BM, BN, NW>;
  using TileQ = typename Tr::TileQ;
  using TileKV = typename Tr::TileKV;
  constexpr int kMT = Tr::kMT, kNT = Tr::kNT, kDT = Tr::kDT, kThreads = Tr::kThreads;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + TileQ::kElems;
  T* sV = sK + TileKV::kElems;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  // Masked problems have more work in later row blocks: start those first.
  const int m_block = p.has_window() ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, hk = h / p.group();
  const int m0 = m_block * BM;
  // This sequence's lengths (fixed length: seqlen_q/k). Varlen grids cover the longest sequence.
  const int sq = kVar ? p.actual_seqlen_q(b) : p.seqlen_q;
  if (kVar && m0 >= sq) return;
  const int sk = kVar ? p.actual_seqlen_k(b) : p.seqlen_k;
  const int rows_q = min(BM, sq - m0);
  const int dchunks = p.head_dim / 8;

  auto q_rows = [&](const Strides3& st) {  // element offset of query row m0 of sequence b
    return kVar ? p.q_offset(st, b, m0)
                : b * st.batch + static_cast<int64_t>(m0) * st.row;
  };
  T* out = static_cast<T*>(p.out) + q_rows(p.out_stride) + h * p.out_stride.head;
  float* lse_out =
      p.softmax_lse == nullptr ? nullptr
      : kVar ? p.softmax_lse + p.lse_offset(b, h, m0)
             : p.softmax_lse + (static_cast<int64_t>(b) * p.nheads + h) * p.seqlen_q + m0;

  // Key range seen by the block: key_range's bounds are non-decreasing in the row.
  int lo_first, hi_first, lo_last, hi_last;
  p.key_range(m0, sq, sk, &lo_first, &hi_first);
  p.key_range(m0 + rows_q - 1, sq, sk, &lo_last, &hi_last);
  const int n_lo = lo_first, n_hi = hi_last;

  if (n_lo >= n_hi) {  // no row of this block sees a key: out = 0, lse = +inf
    for (int c = tid; c < rows_q * dchunks; c += kThreads) {
      const int r = c / dchunks, ch = c % dchunks;
      *reinterpret_cast<uint4*>(out + r * p.out_stride.row + ch * 8) = make_uint4(0, 0, 0, 0);
    }
    if (lse_out)
      for (int r = tid; r < rows_q; r += kThreads) lse_out[r] = INFINITY;
    return;
  }

  const T* q = static_cast<const T*>(p.q) + q_rows(p.q_stride) + h * p.q_stride.head;
  // Keys: rows of one sequence at a fixed stride (fixed length, packed varlen), or pages of BN-
  // aligned tiles (paged varlen: the tile at key n0 starts at kv_offset(b, n0)).
  const bool paged = kVar && p.block_table != nullptr;
  const T* k = static_cast<const T*>(p.k) + hk * p.k_stride.head +
               (kVar ? (paged ? 0 : p.kv_offset(p.k_stride, b, 0)) : b * p.k_stride.batch);
  const T* v = static_cast<const T*>(p.v) + hk * p.v_stride.head +
               (kVar ? (paged ? 0 : p.kv_offset(p.v_stride, b, 0)) : b * p.v_stride.batch);
  auto k_tile = [&](int n0) {
    return paged ? k + p.kv_offset(p.k_stride, b, n0)
                 : k + static_cast<int64_t>(n0) * p.k_stride.row;
  };
  auto v_tile = [&](int n0) {
    return paged ? v + p.kv_offset(p.v_stride, b, n0)
                 : v + static_cast<int64_t>(n0) * p.v_stride.row;
  };

  const int n_first = n_lo / BN, n_last = (n_hi - 1) / BN;

  const bool plain = !(p.softcap > 0.f) && p.alibi_slopes == nullptr;
  // Scores are kept in units u with z * log2(e) = u * mul: raw accumulators on the plain path
  // (one FFMA per exponential), logits z on the general path.
  const float mul = plain ? p.softmax_scale * prim::kLog2e : prim::kLog2e;
  const float slope = prim::alibi_slope(p, b, h);

  float acc_o[kMT][kDT][4];
  float row_max[kMT][2], row_sum[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[mt][dt][e] = 0.f;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row_max[mt][r] = -INFINITY;
      row_sum[mt][r] = 0.f;
    }
  }

  load_tile_async<TileQ, BM, D, kThreads>(sQ, q, p.q_stride.row, rows_q, dchunks, q, tid);
  load_tile_async<TileKV, BN, D, kThreads>(sK, k_tile(n_first * BN), p.k_stride.row,
                                           sk - n_first * BN, dchunks, k, tid);
  prim::cp_async_commit();

  const int lrow = lane % 8, lsel1 = (lane / 8) % 2, lsel2 = lane / 16;
  const uint32_t sQ_base = prim::smem_u32(sQ), sK_base = prim::smem_u32(sK),
                 sV_base = prim::smem_u32(sV);
  // Per-lane byte offsets of the ldmatrix rows at k-step 0. Since the swizzle XORs the chunk
  // with (row % 8) and every row is 2*D >= 128 bytes, the address of k-step kk is
  // offset ^ (kk * 32): one LOP3 instead of a fresh swizzle (and no hoisted address tables).
  uint32_t q_off[kMT];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
    q_off[mt] = 2 * TileQ::offset(warp * 16 * kMT + mt * 16 + lsel1 * 8 + lrow, lsel2 * 8);
  const uint32_t k_off = 2 * TileKV::offset(lsel2 * 8 + lrow, lsel1 * 8);
  const uint32_t v_off = 2 * TileKV::offset(lsel1 * 8 + lrow, lsel2 * 8);

  for (int nb = n_first; nb <= n_last; ++nb) {
    const int n0 = nb * BN;
    load_tile_async<TileKV, BN, D, kThreads>(sV, v_tile(n0), p.v_stride.row, sk - n0, dchunks, v,
                                             tid);
    prim::cp_async_commit();
    prim::cp_async_wait<1>();  // Q and K(nb) have landed
    __syncthreads();

    // ---- S = Q K^T ----
    float s[kMT][kNT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      //NOBREAK1
      uint32_t a[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        prim::ldmatrix_x4(a[mt], sQ_base + (q_off[mt] ^ (kk * 32)));
      }
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        uint32_t bf[4];
        prim::ldmatrix_x4(bf, sK_base + np * 16 * D * 2 + (k_off ^ (kk * 32)));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          prim::mma_16816<T>(s[mt][2 * np], a[mt], bf[0], bf[1]);
          prim::mma_16816<T>(s[mt][2 * np + 1], a[mt], bf[2], bf[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with sK
    if (nb < n_last)
      load_tile_async<TileKV, BN, D, kThreads>(sK, k_tile(n0 + BN), p.k_stride.row,
                                               sk - n0 - BN, dchunks, k, tid);
    prim::cp_async_commit();

    // ---- logits, mask, online softmax ----
    const bool full_tile = n0 + BN <= sk && n0 >= lo_last && n0 + BN <= hi_first;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int i = m0 + warp * 16 * kMT + mt * 16 + g + 8 * r;
        if (!plain) {
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              float th;
              const int j = n0 + nt * 8 + 2 * t + c;
              // Varlen: ALiBi aligns with this sequence's own lengths (sk - sq).
              s[mt][nt][2 * r + c] =
                  kVar ? prim::logit_off(p, s[mt][nt][2 * r + c], slope, i, j, sk - sq, &th)
                       : prim::logit(p, s[mt][nt][2 * r + c], slope, i, j, &th);
            }
        }
        if (!full_tile) {  // boundary tile: element mask (row bounds recomputed, saves registers)
          int lo, hi;
          if (kVar)
            p.key_range(i, sq, sk, &lo, &hi);
          else
            p.key_range(i, &lo, &hi);
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              const int j = n0 + nt * 8 + 2 * t + c;
              if (j < lo || j >= hi) s[mt][nt][2 * r + c] = -INFINITY;
            }
        }
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
          mx = fmaxf(mx, fmaxf(s[mt][nt][2 * r], s[mt][nt][2 * r + 1]));
        mx = prim::quad_max(mx);
        const float new_max = fmaxf(row_max[mt][r], mx);
        // A row that has seen only masked keys keeps max -inf: use 0 so exp2 gives exact zeros.
        const float m_use = new_max == -INFINITY ? 0.f : new_max;
        const float m_scaled = m_use * mul;
        const float corr = prim::fast_exp2(row_max[mt][r] * mul - m_scaled);
        row_max[mt][r] = new_max;
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const float e = prim::fast_exp2(fmaf(s[mt][nt][2 * r + c], mul, -m_scaled));
            s[mt][nt][2 * r + c] = e;
            sum += e;
          }
        row_sum[mt][r] = row_sum[mt][r] * corr + sum;  // before dropout: lse is too
        if constexpr (kDrop) {
          // Linear Philox index of (b, h, i, j) with Sq* = seqlen_q, Sk* = seqlen_k (philox.h).
          const uint64_t row_n =
              ((static_cast<uint64_t>(b) * p.nheads + h) * static_cast<uint64_t>(p.seqlen_q) + i) *
              static_cast<uint64_t>(p.seqlen_k);
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt) {
            bool k0, k1;
            dropout_keep_pair(p, row_n + n0 + nt * 8 + 2 * t, &k0, &k1);
            if (!k0) s[mt][nt][2 * r] = 0.f;
            if (!k1) s[mt][nt][2 * r + 1] = 0.f;
          }
        }
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt) {
          acc_o[mt][dt][2 * r] *= corr;
          acc_o[mt][dt][2 * r + 1] *= corr;
        }
      }

    prim::cp_async_wait<1>();  // V(nb) has landed (K(nb+1) may still be in flight)
    __syncthreads();

    // ---- O += P V ----
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) prim::c_to_a<T>(a[mt], s[mt][2 * kk], s[mt][2 * kk + 1]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        //NOBREAK2
        uint32_t bf[4];
        prim::ldmatrix_x4_trans(bf, sV_base + kk * 16 * D * 2 + (v_off ^ (dp * 32)));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          prim::mma_16816<T>(acc_o[mt][2 * dp], a[mt], bf[0], bf[1]);
          prim::mma_16816<T>(acc_o[mt][2 * dp + 1], a[mt], bf[2], bf[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with sV
  }
  prim::cp_async_wait<0>();

  // ---- epilogue: normalise, write lse, stage O through shared memory for 16-byte stores ----
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float l = prim::quad_sum(row_sum[mt][r]);
      const float inv = l > 0.f ? (kDrop ? p.rp_dropout : 1.f) / l : 0.f;
      const int rr = warp * 16 * kMT + mt * 16 + g + 8 * r;
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        const uint32_t packed =
            prim::Elem<T>::pack(acc_o[mt][dt][2 * r] * inv, acc_o[mt][dt][2 * r + 1] * inv);
        *reinterpret_cast<uint32_t*>(sQ + TileQ::offset(rr, dt * 8 + 2 * t)) = packed;
      }
      if (lse_out && t == 0 && rr < rows_q) {
        const float m = row_max[mt][r] == -INFINITY ? 0.f : row_max[mt][r];
        lse_out[rr] = l > 0.f ? m * mul * prim::kLn2 + logf(l) : INFINITY;
      }
    }
  __syncthreads();
#pragma unroll
  for (int it = 0; it < BM * (D / 8) / kThreads; ++it) {
    const int c = it * kThreads + tid;
    const int r = c / (D / 8), ch = c % (D / 8);
    if (r < rows_q && ch < dchunks)
      *reinterpret_cast<uint4*>(out + r * p.out_stride.row + ch * 8) =
          *reinterpret_cast<const uint4*>(sQ + TileQ::offset(r, ch * 8));
  }
#endif  // FLASHPLUS_HAS_MMA_SYNC
}

template <typename T, int D, int BM, int BN, int NW, bool kVar, bool kDrop>
Status launch_fwd_tile(const AttnParams& p, gpuStream_t stream) {
  using Tr = FwdTraits<D, BM, BN, NW>;
  if (p.block_table != nullptr && p.page_block_size % BN != 0)
    return Status::NoInstance("fwd_tc: page_block_size " + std::to_string(p.page_block_size) +
                              " is not a multiple of the key tile " + std::to_string(BN));
  int dev = 0, max_smem = 0;
  FLASHPLUS_GPU_CHECK(cudaGetDevice(&dev));
  FLASHPLUS_GPU_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (Tr::kSmemBytes > max_smem)
    return Status::NoInstance("fwd_tc: tile needs more shared memory than this device has");
  auto kernel = fwd_tc_kernel<T, D, BM, BN, NW, kVar, kDrop>;
  FLASHPLUS_GPU_CHECK(gpuFuncSetAttribute(kernel, gpuFuncAttributeMaxDynamicSharedMemorySize,
                                          Tr::kSmemBytes));
  const dim3 grid((p.seqlen_q + BM - 1) / BM, p.nheads, p.batch);
  kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(p);
  FLASHPLUS_GPU_CHECK_LAUNCH("fwd_tc_kernel");
  return Status::Ok();
}

// Runs the compiled tile of bucket D that `cfg` names (0 fields = the bucket's default).
template <typename T, int D>
Status launch_fwd(const AttnParams& p, const KernelConfig& cfg, gpuStream_t stream) {
  if (cfg.num_splits > 1 || cfg.stages > 1)
    return Status::NoInstance("fwd_tc: split-KV and multi-stage pipelines are not compiled");
  if (p.seqlen_q == 0 || p.batch == 0 || p.nheads == 0) return Status::Ok();
  bool first = true;
  // Varlen and dropout are compiled for the bucket's default (first) tile only: it keeps the
  // instance count (and compile time) down; another tile answers no_instance and the backend
  // retries the default.
#define FLASHPLUS_FWD_TRY(DD, BM, BN, NW)                                                 \
  if constexpr (DD == D) {                                                                \
    if (tile_selected(cfg, BM, BN, NW, first)) {                                        \
      const bool var = p.is_varlen(), drop = p.has_dropout();                             \
      if (!var && !drop) return launch_fwd_tile<T, DD, BM, BN, NW, false, false>(p, stream); \
      if constexpr (is_default_fwd_tile(DD, BM, BN, NW)) {                                \
        if (!var) return launch_fwd_tile<T, DD, BM, BN, NW, false, true>(p, stream);      \
        if (!drop) return launch_fwd_tile<T, DD, BM, BN, NW, true, false>(p, stream);     \
        return launch_fwd_tile<T, DD, BM, BN, NW, true, true>(p, stream);                 \
      } else {                                                                            \
        return Status::NoInstance("fwd_tc: varlen and dropout are compiled for the default tile only"); \
      }                                                                                   \
    }                                                                                     \
    first = false;                                                                        \
  }
  FLASHPLUS_FWD_TILES_ALL(FLASHPLUS_FWD_TRY)
#undef FLASHPLUS_FWD_TRY
  (void)first;
  return Status::NoInstance("fwd_tc: no compiled tile m" + std::to_string(cfg.block_m) + "n" +
                            std::to_string(cfg.block_n) + "w" + std::to_string(cfg.num_warps) +
                            " for head-dim bucket " + std::to_string(D));
}

}  // namespace flashplus::gpu::tc
