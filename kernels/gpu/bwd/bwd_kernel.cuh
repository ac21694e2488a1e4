// FlashAttention-2-style backward on tensor cores (mma.sync m16n8k16, fp32 accumulation).
//
// Three launches (run_bwd_tc):
//   1. bwd_preprocess: Dsum_i = rowsum(dO_i * O_i) (also into p.softmax_d when given) and zero
//      the fp32 dQ accumulator.
//   2. bwd_tc_kernel: one block per (key block of BN rows, kv head, batch); warp w owns keys
//      [16w, 16w+16) of the block, so dK and dV stay in its registers for the whole block. The
//      block walks the query blocks that can see its keys, for every query head of its kv head
//      (GQA: dK/dV summed over the group in registers, no workspace). Per query block, in this
//      order so that only one fp32 16 x BM score tile is live next to dK/dV:
//        S^T = K Q^T -> P^T = exp(S^T - lse)    (A = K rows, B = Q rows; P^T packed to 16-bit A
//                                               fragments right away)
//        dV += P^T dO
//        dP^T = V dO^T -> dS^T = P^T (dP^T - Dsum)   (softcap derivative folded into a second
//                                               packed copy of P^T when on)
//        dK += dS^T Q                           (dS^T repacked from C to A fragments)
//        dS^T -> shared memory; dQ += dS K      (all warps; fp32 reductions into the accumulator,
//                                               red.global.add.v2.f32 on sm_90)
//      Q/dO/lse/Dsum of the next query block load (cp.async, double buffer) during the iteration.
//   3. bwd_convert_dq: accumulator (pre-scaled) -> dtype, any dq strides.
// Deterministic mode (p.deterministic): the main kernel skips dQ and bwd_dq_kernel computes it
// per query block (recomputing P and dS), so every dQ element has one writer: bit-identical runs.
//
// Template flags of every kernel here (the plain instances have both off and are the code as it
// was before the flags existed):
//   kVar:  per-sequence geometry through AttnParams' helpers (varlen: packed rows at
//          cu_seqlens_q/k[b], seqused_k, masks and ALiBi aligned with the sequence's own lengths,
//          lse / softmax_d / workspaces (nheads, total_q)); grids cover the longest sequence and
//          blocks past their sequence's end leave. Also right for fixed length (the helpers fall
//          back to the fixed-length layout without cu_seqlens), so dropout instances have it on.
//   kDrop: dropout with the forward's Philox keep (flashplus/philox.h): dV += P_d^T dO with
//          P_d = P * keep / (1 - p), dS = P * (dP * keep / (1 - p) - Dsum), computed as
//          P_d * dP - P * Dsum from the two packed copies of P the kernels keep anyway.
// Compiled for the default tile of each bucket only (bwd_var_<dtype>_d<D>.cu, launch_bwd_var).
#pragma once
#include "platform/gpu_runtime.h"
#if FLASHPLUS_VENDOR_HIP
#error "bwd_kernel.cuh is the NVIDIA (mma.sync) path; HIP builds use the no_instance stubs"
#endif
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <mutex>

#include "flashplus/params.h"
#include "flashplus/status.h"
#include "gpu/fwd/fwd_kernel.cuh"  // load_tile_async
#include "gpu/gpu_kernels.h"
#include "gpu/workspace_pool.h"
#include "platform/gpu_runtime.h"
#include "platform/types.h"
#include "primitives/attn_score.h"
#include "primitives/tile_mma.h"
#include "flashplus_gen/tiles.h"  // the tile lists, generated from kernels/registry/spec.json

namespace flashplus::gpu::tc {

// ---- backward-local helpers (kept here rather than in primitives/tile_mma.h) --------------------
// A value the compiler cannot see through: re-materialised once per loop iteration, so ptxas does
// not hoist per-k-step address tables (offset ^ kk*32 for every kk) into registers that stay live
// across the whole loop.
__device__ __forceinline__ uint32_t bwd_opaque(uint32_t x) {
  uint32_t y;
  asm volatile("mov.b32 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}
// Two packed 16-bit values (as Elem<T>::pack made them) back to fp32: lo -> .x, hi -> .y.
template <typename T> __device__ __forceinline__ float2 bwd_unpack(uint32_t v);
template <> __device__ __forceinline__ float2 bwd_unpack<platform::half_t>(uint32_t v) {
  return __half22float2(*reinterpret_cast<const __half2*>(&v));
}
template <> __device__ __forceinline__ float2 bwd_unpack<platform::bf16_t>(uint32_t v) {
  // bf16 -> fp32 is a 16-bit shift: exact, two integer ops.
  return make_float2(__uint_as_float(v << 16), __uint_as_float(v & 0xffff0000u));
}

// In the kernels below, sq / sk are this sequence's lengths (kVar only); the fixed-length
// instances read p.seqlen_q / p.seqlen_k where they always did, so their code is unchanged.
#define FP_BWD_SQ (kVar ? sq : p.seqlen_q)
#define FP_BWD_SK (kVar ? sk : p.seqlen_k)

// Row (b, h, i) of the fp32 workspaces (dQ accumulator, Dsum) and of softmax_lse / softmax_d,
// which tc_supports requires contiguous: (batch, nheads, seqlen_q), varlen (nheads, total_q).
template <bool kVar>
__device__ __forceinline__ int64_t bwd_row(const AttnParams& p, int b, int h, int i) {
  if (kVar && p.cu_seqlens_q != nullptr)
    return static_cast<int64_t>(h) * p.total_q + p.cu_seqlens_q[b] + i;
  return (static_cast<int64_t>(b) * p.nheads + h) * p.seqlen_q + i;
}
// Row i of head h, sequence b in a q-like tensor (q, out, dout) or, bwd_kv_ptr, key j in a k-like
// one (k, v): the packed varlen layout (AttnParams::q_offset / kv_offset) when kVar, else the
// batch and row strides.
template <bool kVar, typename T>
__device__ __forceinline__ const T* bwd_q_ptr(const AttnParams& p, const void* base,
                                             const Strides3& st, int b, int h, int i) {
  return kVar ? static_cast<const T*>(base) + h * st.head + p.q_offset(st, b, i)
              : static_cast<const T*>(base) + b * st.batch + h * st.head +
                    static_cast<int64_t>(i) * st.row;
}
template <bool kVar, typename T>
__device__ __forceinline__ const T* bwd_kv_ptr(const AttnParams& p, const void* base,
                                              const Strides3& st, int b, int h, int j) {
  return kVar ? static_cast<const T*>(base) + h * st.head + p.kv_offset(st, b, j)
              : static_cast<const T*>(base) + b * st.batch + h * st.head +
                    static_cast<int64_t>(j) * st.row;
}
// The key block n_block of (b, kv head hk) a backward block owns (bwd_tc_kernel, bwd_gmma_kernel):
// its sequence's lengths (kVar; 0 otherwise: FP_BWD_SQ / FP_BWD_SK read p.seqlen_*), its keys, its
// dK / dV rows and the query blocks of BM rows that see any of its keys (API.md §2.3, solved for
// i). bwd_key_block returns false when the block has nothing left to do: past the end of a varlen
// sequence, or no query sees its keys (dK = dV = 0 written by the block's nthreads threads).
template <typename T>
struct BwdKeyBlock {
  int n0, sk, sq, rows_k, dchunks, m_first, m_count;
  T* dk_out;
  T* dv_out;
};
template <bool kVar, typename T, int BN, int BM>
__device__ __forceinline__ bool bwd_key_block(const AttnParams& p, int b, int hk, int n_block,
                                              int tid, int nthreads, BwdKeyBlock<T>* kb) {
  const int n0 = n_block * BN;
  const int sk = kVar ? p.actual_seqlen_k(b) : 0;
  if (kVar && n0 >= sk) return false;
  const int sq = kVar ? p.actual_seqlen_q(b) : 0;
  const int rows_k = min(BN, FP_BWD_SK - n0);
  const int dchunks = p.head_dim / 8;
  // (Each kVar ? a : b below keeps b, the fixed-length expression, exactly as it was.)
  T* dk_out = kVar ? static_cast<T*>(p.dk) + hk * p.dk_stride.head + p.kv_offset(p.dk_stride, b, n0)
                   : static_cast<T*>(p.dk) + b * p.dk_stride.batch + hk * p.dk_stride.head +
                         static_cast<int64_t>(n0) * p.dk_stride.row;
  T* dv_out = kVar ? static_cast<T*>(p.dv) + hk * p.dv_stride.head + p.kv_offset(p.dv_stride, b, n0)
                   : static_cast<T*>(p.dv) + b * p.dv_stride.batch + hk * p.dv_stride.head +
                         static_cast<int64_t>(n0) * p.dv_stride.row;
  int i_min, i_max;
  if (kVar)
    p.query_range(n0, n0 + rows_k, sq, sk, &i_min, &i_max);
  else
    p.query_range(n0, n0 + rows_k, &i_min, &i_max);
  if (i_min > i_max) {  // no query sees these keys: dK = dV = 0
    for (int c = tid; c < rows_k * dchunks; c += nthreads) {
      const int r = c / dchunks, ch = c % dchunks;
      *reinterpret_cast<uint4*>(dk_out + r * p.dk_stride.row + ch * 8) = make_uint4(0, 0, 0, 0);
      *reinterpret_cast<uint4*>(dv_out + r * p.dv_stride.row + ch * 8) = make_uint4(0, 0, 0, 0);
    }
    return false;
  }
  *kb = BwdKeyBlock<T>{n0, sk, sq, rows_k, dchunks, i_min / BM, i_max / BM - i_min / BM + 1,
                       dk_out, dv_out};
  return true;
}

// dS^T = P^T (dP^T - Dsum), in place over one thread's dP^T fragments (kQT n8 tiles of queries;
// thread (g, t) of the quad layout): pS holds P (times the softcap derivative when there is one)
// and, with dropout, pP the dropped and rescaled P_d, giving dS = P_d dP - P Dsum; ds_s = Dsum of
// the block's query rows. Shared by bwd_tc_kernel and bwd_gmma_kernel (same fragment layout).
template <typename T, bool kDrop, int kQT, int kQB>
__device__ __forceinline__ void bwd_ds_from_dp(float (&dp)[kQT][4], const uint32_t (&pS)[kQB][4],
                                               const uint32_t (&pP)[kQB][4], const float* ds_s,
                                               int t) {
  static_assert(kQB * 2 == kQT, "two n8 tiles per k16 step of P");
#pragma unroll
  for (int nt = 0; nt < kQT; ++nt) {
    const float d0 = ds_s[nt * 8 + 2 * t], d1 = ds_s[nt * 8 + 2 * t + 1];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float2 pc = bwd_unpack<T>(pS[nt / 2][(nt % 2) * 2 + r]);
      if constexpr (kDrop) {  // dS = P_d dP - P Dsum
        const float2 pd = bwd_unpack<T>(pP[nt / 2][(nt % 2) * 2 + r]);
        dp[nt][2 * r] = fmaf(pd.x, dp[nt][2 * r], -pc.x * d0);
        dp[nt][2 * r + 1] = fmaf(pd.y, dp[nt][2 * r + 1], -pc.y * d1);
      } else {
        dp[nt][2 * r] = pc.x * (dp[nt][2 * r] - d0);
        dp[nt][2 * r + 1] = pc.y * (dp[nt][2 * r + 1] - d1);
      }
    }
  }
}

// Rows bwd_row spans.
__host__ __device__ inline int64_t bwd_rows(const AttnParams& p) {
  return p.is_varlen() ? static_cast<int64_t>(p.nheads) * p.total_q
                       : static_cast<int64_t>(p.batch) * p.nheads * p.seqlen_q;
}
// Dropout keep bit of the element whose linear Philox index (philox.h) is n: one Philox call per
// element (the backward's fragments hold query pairs of one key, which are Sk* apart).
__device__ __forceinline__ bool bwd_dropout_keep(const AttnParams& p, uint64_t n) {
  const uint64_t blk = n >> 2;
  const Philox4 r = philox4x32_10(
      Philox4{{static_cast<uint32_t>(blk), static_cast<uint32_t>(blk >> 32),
               static_cast<uint32_t>(p.philox_offset), static_cast<uint32_t>(p.philox_offset >> 32)}},
      static_cast<uint32_t>(p.philox_seed), static_cast<uint32_t>(p.philox_seed >> 32));
  const int w = static_cast<int>(n & 3);
  const uint32_t d = w == 0 ? r.x[0] : w == 1 ? r.x[1] : w == 2 ? r.x[2] : r.x[3];
  return d < p.dropout_threshold;
}
// Keep bits of one thread's four elements of the transposed fragments (bit c + 2r: query
// i0 + c, key key_r0 + 8r; n_i0 = Philox index of (i0, key 0); g = lane / 4, key_r0 ≡ g mod 8).
// Where Sk* % 4 == 0 the four lanes g & 3 = 0..3 of a quad column hold four keys 4a..4a+3 of the
// same queries, i.e. the four words of one Philox counter: lane k computes the counter of
// element q = k (c = k & 1, r = k >> 1) for all four, the four 4-bit keep masks meet in a 16-bit
// word through two shuffles (bit 4q + w: lane w's element q), and each lane takes bits k + 4q.
// One Philox call per four elements instead of one per element; the keep bits are those of
// bwd_dropout_keep (the forward's and the reference's) bit for bit. Otherwise one call each.
// The condition is uniform, so all 32 lanes reach the shuffles.
__device__ __forceinline__ uint32_t bwd_dropout_keep4(const AttnParams& p, uint64_t n_i0,
                                                      int key_r0, int g) {
  const uint64_t sks = static_cast<uint64_t>(p.seqlen_k);
  if ((p.seqlen_k & 3) == 0) {
    const int k = g & 3;
    const uint64_t n = n_i0 + static_cast<uint64_t>(k & 1) * sks +
                       static_cast<uint64_t>(key_r0 - k + 8 * (k >> 1));  // word 0 of the counter
    const uint64_t blk = n >> 2;
    const Philox4 r = philox4x32_10(
        Philox4{{static_cast<uint32_t>(blk), static_cast<uint32_t>(blk >> 32),
                 static_cast<uint32_t>(p.philox_offset), static_cast<uint32_t>(p.philox_offset >> 32)}},
        static_cast<uint32_t>(p.philox_seed), static_cast<uint32_t>(p.philox_seed >> 32));
    uint32_t m = static_cast<uint32_t>(r.x[0] < p.dropout_threshold) |
                 static_cast<uint32_t>(r.x[1] < p.dropout_threshold) << 1 |
                 static_cast<uint32_t>(r.x[2] < p.dropout_threshold) << 2 |
                 static_cast<uint32_t>(r.x[3] < p.dropout_threshold) << 3;
    m <<= 4 * k;
    m |= __shfl_xor_sync(0xffffffffu, m, 4);  // lane 4g + t: g ^ 1
    m |= __shfl_xor_sync(0xffffffffu, m, 8);  // g ^ 2
    m >>= k;
    return (m & 1u) | ((m >> 3) & 2u) | ((m >> 6) & 4u) | ((m >> 9) & 8u);
  }
  uint32_t m = 0;
#pragma unroll
  for (int q = 0; q < 4; ++q)
    m |= static_cast<uint32_t>(bwd_dropout_keep(p, n_i0 + static_cast<uint64_t>(q & 1) * sks +
                                                       static_cast<uint64_t>(key_r0 + 8 * (q >> 1))))
         << q;
  return m;
}
// Linear Philox index of (b, h, i, j = 0): Sq* = seqlen_q, Sk* = seqlen_k as the forward.
__device__ __forceinline__ uint64_t bwd_philox_row(const AttnParams& p, int b, int h, int i) {
  return ((static_cast<uint64_t>(b) * p.nheads + h) * static_cast<uint64_t>(p.seqlen_q) + i) *
         static_cast<uint64_t>(p.seqlen_k);
}

// Compiled backward tiles per head-dim bucket: FLASHPLUS_BWD_TILES_D<D>(X), X(D, BN keys,
// BM queries, NW warps = BN/16), generated from kernels/registry/spec.json (family "bwd").
// First entry = default.

// Whether (d, bn, bm, nw) is the first (default) mma.sync tile of its bucket: the one the
// varlen / dropout instances are compiled for.
struct BwdTileDesc {
  int d, bn, bm, nw;
};
#define FLASHPLUS_BWD_TILE_DESC(D, BN, BM, NW) BwdTileDesc{D, BN, BM, NW},
inline constexpr BwdTileDesc kBwdTileList[] = {
    FLASHPLUS_BWD_TILES_ALL(FLASHPLUS_BWD_TILE_DESC)
    BwdTileDesc{0, 0, 0, 0}};  // end (never empty)
#undef FLASHPLUS_BWD_TILE_DESC
constexpr bool is_default_bwd_tile(int d, int bn, int bm, int nw) {
  for (const BwdTileDesc& t : kBwdTileList)
    if (t.d == d) return t.bn == bn && t.bm == bm && t.nw == nw;
  return false;
}

template <int D, int BN, int BM, int NW>
struct BwdTraits {
  static constexpr int kThreads = NW * 32;
  static constexpr int kQT = BM / 8;   // n8 tiles of S^T (queries) per warp
  static constexpr int kDT = D / 8;    // n8 tiles of dK/dV per warp
  static constexpr int kWarpsM = BM / 16;            // dQ = dS K: warps along queries
  static constexpr int kWarpsN = NW / kWarpsM;       //            warps along head dim
  static constexpr int kDQT = D / kWarpsN / 8;       //            n8 tiles per warp
  using TileKV = prim::SwizzledTile<BN, D>;
  using TileQ = prim::SwizzledTile<BM, D>;
  using TileDS = prim::SwizzledTile<BN, BM>;  // dS^T: row = key, col = query
  static constexpr int kSmemBytes =
      2 * TileKV::kBytes + 4 * TileQ::kBytes + TileDS::kBytes + 4 * BM * 4;
  static constexpr int kAccRegs = 2 * kDT * 4 + 2 * kQT * 4;  // dK, dV, S^T, dP^T
  static_assert(NW * 16 == BN, "one warp per 16 keys");
  static_assert(BM % 16 == 0 && NW % kWarpsM == 0 && (D / kWarpsN) % 16 == 0, "dQ warp tiling");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory over the per-block limit");
  static_assert(kAccRegs <= 200, "accumulators leave too few of the 255 registers");
};

// ---- 1. Dsum = rowsum(dO * O); zero the dQ accumulator -----------------------------------------
// D/8 threads per row (one 16-byte chunk of O and dO each, two float4 of the accumulator), so a
// 128-thread block takes 128 / (D/8) rows: at d64 one warp per row left 24 of its 32 lanes idle
// (109 us for the fa-bench shapes on the H100, 2.5 TB/s).
template <int D> struct BwdPre { static constexpr int kRows = 128 / (D / 8); };

template <typename T, int D, bool kVar = false>
__global__ void __launch_bounds__(128) bwd_preprocess(const AttnParams p, float* dsum, float* dq_accum) {
  constexpr int kTpr = D / 8;  // threads per row
  static_assert(kTpr <= 32 && 32 % kTpr == 0, "a row's threads inside one warp");
  const int sub = threadIdx.x % kTpr, x = sub * 8;
  const int i = blockIdx.x * BwdPre<D>::kRows + threadIdx.x / kTpr, h = blockIdx.y, b = blockIdx.z;
  // No early return: the shuffles below need the whole group.
  const bool row_ok = i < (kVar ? p.actual_seqlen_q(b) : p.seqlen_q);
  const int64_t row = kVar ? bwd_row<kVar>(p, b, h, i)
                           : (static_cast<int64_t>(b) * p.nheads + h) * p.seqlen_q + i;
  float s = 0.f;
  if (row_ok) {
    if (dq_accum) {
      float4* acc = reinterpret_cast<float4*>(dq_accum + row * D + x);
      acc[0] = make_float4(0, 0, 0, 0);
      acc[1] = make_float4(0, 0, 0, 0);
    }
    if (x < p.head_dim) {
      const T* o = bwd_q_ptr<kVar, T>(p, p.out, p.out_stride, b, h, i) + x;
      const T* dout = bwd_q_ptr<kVar, T>(p, p.dout, p.dout_stride, b, h, i) + x;
      const uint4 ov = *reinterpret_cast<const uint4*>(o);
      const uint4 dv = *reinterpret_cast<const uint4*>(dout);
      const T* oe = reinterpret_cast<const T*>(&ov);
      const T* de = reinterpret_cast<const T*>(&dv);
#pragma unroll
      for (int e = 0; e < 8; ++e)
        s += prim::Elem<T>::to_float(oe[e]) * prim::Elem<T>::to_float(de[e]);
    }
  }
#pragma unroll
  for (int m = kTpr / 2; m > 0; m /= 2) s += __shfl_xor_sync(0xffffffffu, s, m);
  if (row_ok && sub == 0) {
    dsum[row] = s;
    if (p.softmax_d && p.softmax_d != dsum) p.softmax_d[row] = s;
  }
}

// ---- 3. dQ accumulator -> dtype --------------------------------------------------------------
// Eight fp32 of the dQ accumulator (16-byte aligned) as eight T in one 16-byte store.
template <typename T>
__device__ __forceinline__ uint4 bwd_pack8(const float* a) {
  const float4 x0 = *reinterpret_cast<const float4*>(a), x1 = *reinterpret_cast<const float4*>(a + 4);
  uint4 out;
  out.x = prim::Elem<T>::pack(x0.x, x0.y);
  out.y = prim::Elem<T>::pack(x0.z, x0.w);
  out.z = prim::Elem<T>::pack(x1.x, x1.y);
  out.w = prim::Elem<T>::pack(x1.z, x1.w);
  return out;
}

template <typename T, int D, bool kVar = false>
__global__ void bwd_convert_dq(const AttnParams p, const float* dq_accum) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // 8-elem chunk
  const int dchunks = p.head_dim / 8;
  if constexpr (kVar) {
    if (p.is_varlen()) {
      // Row h * total_q + token (bwd_row); tokens no sequence covers keep what dq held.
      if (c >= bwd_rows(p) * dchunks) return;
      const int64_t row = c / dchunks;
      const int ch = static_cast<int>(c % dchunks);
      const int tok = static_cast<int>(row % p.total_q), h = static_cast<int>(row / p.total_q);
      if (tok < p.cu_seqlens_q[0] || tok >= p.cu_seqlens_q[p.batch]) return;
      const float* a = dq_accum + row * D + ch * 8;
      const uint4 out = bwd_pack8<T>(a);
      T* dq = static_cast<T*>(p.dq) + h * p.dq_stride.head +
              static_cast<int64_t>(tok) * p.dq_stride.row + ch * 8;
      *reinterpret_cast<uint4*>(dq) = out;
      return;
    }
  }
  const int64_t rows = static_cast<int64_t>(p.batch) * p.nheads * p.seqlen_q;
  if (c >= rows * dchunks) return;
  const int64_t row = c / dchunks;
  const int ch = static_cast<int>(c % dchunks);
  const int i = static_cast<int>(row % p.seqlen_q);
  const int h = static_cast<int>((row / p.seqlen_q) % p.nheads);
  const int b = static_cast<int>(row / (static_cast<int64_t>(p.seqlen_q) * p.nheads));
  const float* a = dq_accum + row * D + ch * 8;
  const uint4 out = bwd_pack8<T>(a);
  T* dq = static_cast<T*>(p.dq) + b * p.dq_stride.batch + h * p.dq_stride.head +
          static_cast<int64_t>(i) * p.dq_stride.row + ch * 8;
  *reinterpret_cast<uint4*>(dq) = out;
}

// ---- 2. main kernel ------------------------------------------------------------------------------
// d64 with 32 queries per step fits in 128 registers (ptxas: 36/60 bytes spilled, bf16) and
// 56.5 KB of shared memory, so two blocks (16 warps) share an SM: 1.36x n128m64w8 (H100, s=4096).
// d128 cannot: dK + dV alone are 128 fp32 registers per thread.
template <typename T, int D, int BN, int BM, int NW, bool kVar = false, bool kDrop = false>
__global__ void __launch_bounds__(NW * 32, (D <= 64 && BM <= 32) ? 2 : 1)
    bwd_tc_kernel(const AttnParams p, const float* __restrict__ dsum, float* dq_accum) {
  // dq_accum == nullptr: deterministic mode, dQ is left to bwd_dq_kernel.
#if FLASHPLUS_HAS_MMA_SYNC
  using Tr = BwdTraits<D, BN, BM, NW>;
  using TileKV = typename Tr::TileKV;
  using TileQ = typename Tr::TileQ;
  using TileDS = typename Tr::TileDS;
  constexpr int kQT = Tr::kQT, kDT = Tr::kDT, kThreads = Tr::kThreads;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + TileKV::kElems;
  T* sQ = sV + TileKV::kElems;     // [2][BM][D]
  T* sdO = sQ + 2 * TileQ::kElems;  // [2][BM][D]
  T* sdS = sdO + 2 * TileQ::kElems;
  float* sLse = reinterpret_cast<float*>(sdS + TileDS::kElems);  // [2][BM], lse * log2(e)
  float* sDs = sLse + 2 * BM;                                    // [2][BM]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int lrow = lane % 8, lsel1 = (lane / 8) % 2, lsel2 = lane / 16;
  const int n_block = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int G = p.group();
  // This sequence's lengths (fixed length: seqlen_q/k; varlen grids cover the longest sequence),
  // the block's keys and the query blocks that see them.
  BwdKeyBlock<T> kb;
  if (!bwd_key_block<kVar, T, BN, BM>(p, b, hk, n_block, tid, kThreads, &kb)) return;
  const int n0 = kb.n0, sk = kb.sk, sq = kb.sq, rows_k = kb.rows_k, dchunks = kb.dchunks;
  T* const dk_out = kb.dk_out;
  T* const dv_out = kb.dv_out;
  const int m_first = kb.m_first, m_count = kb.m_count;
  const int n_iters = G * m_count;  // (query head, query block) pairs, flattened

  const T* kg = bwd_kv_ptr<kVar, T>(p, p.k, p.k_stride, b, hk, n0);
  const T* vg = bwd_kv_ptr<kVar, T>(p, p.v, p.v_stride, b, hk, n0);
  load_tile_async<TileKV, BN, D, kThreads>(sK, kg, p.k_stride.row, rows_k, dchunks, kg, tid);
  load_tile_async<TileKV, BN, D, kThreads>(sV, vg, p.v_stride.row, rows_k, dchunks, vg, tid);

  // Loads of iteration `it` into buffer `buf`: Q, dO (async), lse, Dsum (plain).
  auto load_q_block = [&](int it, int buf) {
    const int hq = hk * G + it / m_count;
    const int m0 = (m_first + it % m_count) * BM;
    const int rows_q = min(BM, FP_BWD_SQ - m0);
    const T* qg = bwd_q_ptr<kVar, T>(p, p.q, p.q_stride, b, hq, m0);
    const T* dog = bwd_q_ptr<kVar, T>(p, p.dout, p.dout_stride, b, hq, m0);
    load_tile_async<TileQ, BM, D, kThreads>(sQ + buf * TileQ::kElems, qg, p.q_stride.row, rows_q,
                                            dchunks, qg, tid);
    load_tile_async<TileQ, BM, D, kThreads>(sdO + buf * TileQ::kElems, dog, p.dout_stride.row,
                                            rows_q, dchunks, dog, tid);
    const int64_t row0 = kVar ? bwd_row<kVar>(p, b, hq, m0)
                              : (static_cast<int64_t>(b) * p.nheads + hq) * p.seqlen_q + m0;
    for (int r = tid; r < BM; r += kThreads) {
      // Rows past seqlen_q: lse = +inf makes P = 0 there, so they contribute nothing.
      sLse[buf * BM + r] = r < rows_q ? p.softmax_lse[row0 + r] * prim::kLog2e : INFINITY;
      sDs[buf * BM + r] = r < rows_q ? dsum[row0 + r] : 0.f;
    }
  };
  load_q_block(0, 0);
  prim::cp_async_commit();

  float acc_dk[kDT][4], acc_dv[kDT][4];
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_dk[dt][e] = acc_dv[dt][e] = 0.f;

  const bool plain = !(p.softcap > 0.f) && p.alibi_slopes == nullptr;
  const float scale_log2 = p.softmax_scale * prim::kLog2e;
  const uint32_t sK_base = prim::smem_u32(sK), sV_base = prim::smem_u32(sV),
                 sdS_base = prim::smem_u32(sdS);
  // ldmatrix lane offsets (bytes) at k-step 0; later k-steps XOR in kk * 32 (see fwd kernel).
  const uint32_t a_off0 = 2 * TileKV::offset(warp * 16 + lsel1 * 8 + lrow, lsel2 * 8);  // K, V as A
  const uint32_t b_off0 = 2 * TileQ::offset(lsel2 * 8 + lrow, lsel1 * 8);        // Q, dO as B
  const uint32_t bt_off0 = 2 * TileQ::offset(lsel1 * 8 + lrow, lsel2 * 8);       // Q, dO as B^T
  constexpr int kWarpsM = Tr::kWarpsM, kDQT = Tr::kDQT;
  const int wm = warp % kWarpsM, wn = warp / kWarpsM;
  const uint32_t ds_off0 = 2 * TileDS::offset(lsel2 * 8 + lrow, wm * 16 + lsel1 * 8);  // dS as A^T
  const uint32_t kt_off0 = 2 * TileKV::offset(lsel1 * 8 + lrow, wn * (D / Tr::kWarpsN) + lsel2 * 8);

  const int key_r0 = n0 + warp * 16 + g;  // this thread's keys: key_r0, key_r0 + 8

  for (int it = 0; it < n_iters; ++it) {
    const int buf = it & 1;
    const int hq = hk * G + it / m_count;
    const int m0 = (m_first + it % m_count) * BM;
    prim::cp_async_wait<0>();
    __syncthreads();
    // Prefetch the next (head, query block) into the other buffer now, so that the load overlaps
    // this whole iteration: its last readers (the GEMMs of iteration it-1) are behind the barrier.
    if (it + 1 < n_iters) load_q_block(it + 1, buf ^ 1);
    prim::cp_async_commit();
    const uint32_t sQ_base = prim::smem_u32(sQ + buf * TileQ::kElems);
    const uint32_t sdO_base = prim::smem_u32(sdO + buf * TileQ::kElems);
    const uint32_t a_off = bwd_opaque(a_off0), b_off = bwd_opaque(b_off0),
                   bt_off = bwd_opaque(bt_off0), ds_off = bwd_opaque(ds_off0),
                   kt_off = bwd_opaque(kt_off0);

    // The two score-sized products run one after the other so that only one fp32 16 x BM tile
    // is live next to dK/dV (P^T is kept as packed 16-bit A fragments in between): this keeps
    // the kernel within 255 registers with room for the compiler to pipeline ldmatrix.
    // ---- S^T = K Q^T (16 keys x BM queries per warp) -> P^T ----
    float s[kQT][4];
#pragma unroll
    for (int nt = 0; nt < kQT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t ak[4];
      prim::ldmatrix_x4(ak, sK_base + (a_off ^ (kk * 32)));
#pragma unroll
      for (int np = 0; np < kQT / 2; ++np) {
        uint32_t bq[4];
        prim::ldmatrix_x4(bq, sQ_base + np * 16 * D * 2 + (b_off ^ (kk * 32)));
        prim::mma_16816<T>(s[2 * np], ak, bq[0], bq[1]);
        prim::mma_16816<T>(s[2 * np + 1], ak, bq[2], bq[3]);
      }
    }
    const int q_last = min(m0 + BM, FP_BWD_SQ) - 1;
    bool full_tile = n0 + BN <= FP_BWD_SK;
    if (p.has_window()) {
      int lo_a, hi_a, lo_b, hi_b;
      if (kVar) {
        p.key_range(m0, sq, sk, &lo_a, &hi_a);
        p.key_range(q_last, sq, sk, &lo_b, &hi_b);
      } else {
        p.key_range(m0, &lo_a, &hi_a);
        p.key_range(q_last, &lo_b, &hi_b);
      }
      full_tile = full_tile && lo_b <= n0 && hi_a >= n0 + BN;
    }
    const float slope = prim::alibi_slope(p, b, hq);
    const float* lse_s = sLse + buf * BM;
    const float* ds_s = sDs + buf * BM;
    // pP: P^T as A fragments (m = key, k = query). pS: P^T times the softcap derivative
    // (1 - tanh^2), the factor dS needs; identical to pP without softcap. Dropout: pP is
    // P * keep / (1 - p) (what dV needs), pS is P (no softcap with dropout, API.md 2.7).
    uint32_t pP[BM / 16][4], pS[BM / 16][4];
    const bool cap = p.softcap > 0.f;
    const uint64_t drop_row = kDrop ? bwd_philox_row(p, b, hq, m0) : 0;
#pragma unroll
    for (int nt = 0; nt < kQT; ++nt) {
      float lse2[2];
      int lo[2], hi[2];
      [[maybe_unused]] uint32_t keep = 0;  // dropout keep bits, bit c + 2r
      if constexpr (kDrop)
        keep = bwd_dropout_keep4(p, drop_row + static_cast<uint64_t>(nt * 8 + 2 * t) * p.seqlen_k,
                                 key_r0, g);
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int ql = nt * 8 + 2 * t + c;
        lse2[c] = lse_s[ql];
        int l = 0, h = FP_BWD_SK;
        if (!full_tile) {
          if (kVar)
            p.key_range(m0 + ql, sq, sk, &l, &h);
          else
            p.key_range(m0 + ql, &l, &h);
        }
        lo[c] = l;
        hi[c] = h;
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int j = key_r0 + 8 * r;
        float pv[2], pc[2];
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int i = m0 + nt * 8 + 2 * t + c;
          if (plain) {
            pv[c] = prim::fast_exp2(fmaf(s[nt][2 * r + c], scale_log2, -lse2[c]));
            pc[c] = pv[c];
          } else {
            float th;
            // Varlen: ALiBi aligns with this sequence's own lengths (sk - sq).
            const float z = kVar ? prim::logit_off(p, s[nt][2 * r + c], slope, i, j, sk - sq, &th)
                                 : prim::logit(p, s[nt][2 * r + c], slope, i, j, &th);
            pv[c] = prim::fast_exp2(fmaf(z, prim::kLog2e, -lse2[c]));
            pc[c] = cap ? pv[c] * (1.f - th * th) : pv[c];
          }
          if (!full_tile && (j < lo[c] || j >= hi[c])) pv[c] = pc[c] = 0.f;
          if constexpr (kDrop) pv[c] = (keep >> (c + 2 * r)) & 1u ? pv[c] * p.rp_dropout : 0.f;
        }
        pP[nt / 2][(nt % 2) * 2 + r] = prim::Elem<T>::pack(pv[0], pv[1]);
        pS[nt / 2][(nt % 2) * 2 + r] = prim::Elem<T>::pack(pc[0], pc[1]);
      }
    }

    // ---- dV += P^T dO ----
#pragma unroll
    for (int kq = 0; kq < BM / 16; ++kq) {
#pragma unroll
      for (int dq2 = 0; dq2 < D / 16; ++dq2) {
        uint32_t bo[4];
        prim::ldmatrix_x4_trans(bo, sdO_base + kq * 16 * D * 2 + (bt_off ^ (dq2 * 32)));
        prim::mma_16816<T>(acc_dv[2 * dq2], pP[kq], bo[0], bo[1]);
        prim::mma_16816<T>(acc_dv[2 * dq2 + 1], pP[kq], bo[2], bo[3]);
      }
    }

    // ---- dP^T = V dO^T, then dS^T = P^T (dP^T - Dsum) (softcap factor inside pS) ----
    float dp[kQT][4];
#pragma unroll
    for (int nt = 0; nt < kQT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) dp[nt][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t av[4];
      prim::ldmatrix_x4(av, sV_base + (a_off ^ (kk * 32)));
#pragma unroll
      for (int np = 0; np < kQT / 2; ++np) {
        uint32_t bd[4];
        prim::ldmatrix_x4(bd, sdO_base + np * 16 * D * 2 + (b_off ^ (kk * 32)));
        prim::mma_16816<T>(dp[2 * np], av, bd[0], bd[1]);
        prim::mma_16816<T>(dp[2 * np + 1], av, bd[2], bd[3]);
      }
    }
    bwd_ds_from_dp<T, kDrop>(dp, pS, pP, ds_s, t);

    // ---- dK += dS^T Q ----
#pragma unroll
    for (int kq = 0; kq < BM / 16; ++kq) {
      uint32_t ads[4];
      prim::c_to_a<T>(ads, dp[2 * kq], dp[2 * kq + 1]);
#pragma unroll
      for (int dq2 = 0; dq2 < D / 16; ++dq2) {
        uint32_t bq[4];
        prim::ldmatrix_x4_trans(bq, sQ_base + kq * 16 * D * 2 + (bt_off ^ (dq2 * 32)));
        prim::mma_16816<T>(acc_dk[2 * dq2], ads, bq[0], bq[1]);
        prim::mma_16816<T>(acc_dk[2 * dq2 + 1], ads, bq[2], bq[3]);
      }
    }

    if (dq_accum == nullptr) continue;  // deterministic mode: bwd_dq_kernel computes dQ
    // ---- dS^T -> shared memory (16-bit, as the MMA consumes it) ----
#pragma unroll
    for (int nt = 0; nt < kQT; ++nt)
#pragma unroll
      for (int r = 0; r < 2; ++r)
        *reinterpret_cast<uint32_t*>(sdS + TileDS::offset(warp * 16 + g + 8 * r, nt * 8 + 2 * t)) =
            prim::Elem<T>::pack(dp[nt][2 * r], dp[nt][2 * r + 1]);
    __syncthreads();

    // ---- dQ += dS K, straight into the fp32 accumulator ----
    float acc_dq[kDQT][4];
#pragma unroll
    for (int dt = 0; dt < kDQT; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_dq[dt][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[4];
      prim::ldmatrix_x4_trans(a, sdS_base + kk * 16 * BM * 2 + ds_off);
#pragma unroll
      for (int dp2 = 0; dp2 < kDQT / 2; ++dp2) {
        uint32_t bk[4];
        prim::ldmatrix_x4_trans(bk, sK_base + kk * 16 * D * 2 + (kt_off ^ (dp2 * 32)));
        prim::mma_16816<T>(acc_dq[2 * dp2], a, bk[0], bk[1]);
        prim::mma_16816<T>(acc_dq[2 * dp2 + 1], a, bk[2], bk[3]);
      }
    }
    float* dqa = dq_accum + (kVar ? bwd_row<kVar>(p, b, hq, 0)
                                  : (static_cast<int64_t>(b) * p.nheads + hq) * p.seqlen_q) * D;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int i = m0 + wm * 16 + g + 8 * r;
      if (i < FP_BWD_SQ) {
#pragma unroll
        for (int dt = 0; dt < kDQT; ++dt) {
          const int col = wn * (D / Tr::kWarpsN) + dt * 8 + 2 * t;
          if (col < p.head_dim) {
            float* dst = dqa + static_cast<int64_t>(i) * D + col;  // col even: 8-byte aligned
            const float v0 = acc_dq[dt][2 * r] * p.softmax_scale;
            const float v1 = acc_dq[dt][2 * r + 1] * p.softmax_scale;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
            // sm_90: one vector reduction for the two neighbouring columns (half the RED count).
            asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(dst), "f"(v0), "f"(v1));
#else
            atomicAdd(dst, v0);
            atomicAdd(dst + 1, v1);
#endif
          }
        }
      }
    }
  }
  prim::cp_async_wait<0>();
  __syncthreads();  // all warps are done with sK/sV: reuse them to stage dK/dV

  // ---- epilogue: dK (scaled), dV -> shared -> 16-byte stores ----
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int kr = warp * 16 + g + 8 * r;
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
      *reinterpret_cast<uint32_t*>(sK + TileKV::offset(kr, dt * 8 + 2 * t)) = prim::Elem<T>::pack(
          acc_dk[dt][2 * r] * p.softmax_scale, acc_dk[dt][2 * r + 1] * p.softmax_scale);
      *reinterpret_cast<uint32_t*>(sV + TileKV::offset(kr, dt * 8 + 2 * t)) =
          prim::Elem<T>::pack(acc_dv[dt][2 * r], acc_dv[dt][2 * r + 1]);
    }
  }
  __syncthreads();
#pragma unroll
  for (int itc = 0; itc < BN * (D / 8) / kThreads; ++itc) {
    const int c = itc * kThreads + tid;
    const int r = c / (D / 8), ch = c % (D / 8);
    if (r < rows_k && ch < dchunks) {
      *reinterpret_cast<uint4*>(dk_out + r * p.dk_stride.row + ch * 8) =
          *reinterpret_cast<const uint4*>(sK + TileKV::offset(r, ch * 8));
      *reinterpret_cast<uint4*>(dv_out + r * p.dv_stride.row + ch * 8) =
          *reinterpret_cast<const uint4*>(sV + TileKV::offset(r, ch * 8));
    }
  }
#endif  // FLASHPLUS_HAS_MMA_SYNC
}

// ---- deterministic dQ: one block per (query block, head, batch), recomputing P and dS -----------
// Each warp owns 16 query rows; the block walks its visible key tiles (as the forward does) and
// accumulates dQ = dS K in registers, so no two blocks ever write the same dQ element.
template <int D> struct DqTile { static constexpr int BM = 64, BN = 64, NW = 4; };

template <typename T, int D, bool kVar = false, bool kDrop = false>
__global__ void __launch_bounds__(DqTile<D>::NW * 32)
    bwd_dq_kernel(const AttnParams p, const float* __restrict__ dsum) {
#if FLASHPLUS_HAS_MMA_SYNC
  constexpr int BM = DqTile<D>::BM, BN = DqTile<D>::BN, NW = DqTile<D>::NW, kThreads = NW * 32;
  static_assert(BM == 16 * NW, "one warp per 16 query rows");
  using TileQ = prim::SwizzledTile<BM, D>;
  using TileKV = prim::SwizzledTile<BN, D>;
  constexpr int kNT = BN / 8, kDT = D / 8;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sdO = sQ + TileQ::kElems;
  T* sK = sdO + TileQ::kElems;
  T* sV = sK + TileKV::kElems;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int lrow = lane % 8, lsel1 = (lane / 8) % 2, lsel2 = lane / 16;
  const int m_block = blockIdx.x, h = blockIdx.y, b = blockIdx.z, hk = h / p.group();
  const int m0 = m_block * BM;
  const int sq = kVar ? p.actual_seqlen_q(b) : 0;
  if (kVar && m0 >= sq) return;
  const int sk = kVar ? p.actual_seqlen_k(b) : 0;
  const int rows_q = min(BM, FP_BWD_SQ - m0);
  const int dchunks = p.head_dim / 8;
  T* dq = kVar ? static_cast<T*>(p.dq) + h * p.dq_stride.head + p.q_offset(p.dq_stride, b, m0)
               : static_cast<T*>(p.dq) + b * p.dq_stride.batch + h * p.dq_stride.head +
                     static_cast<int64_t>(m0) * p.dq_stride.row;
  int lo_first, hi_first, lo_last, hi_last;
  if (kVar) {
    p.key_range(m0, sq, sk, &lo_first, &hi_first);
    p.key_range(m0 + rows_q - 1, sq, sk, &lo_last, &hi_last);
  } else {
    p.key_range(m0, &lo_first, &hi_first);
    p.key_range(m0 + rows_q - 1, &lo_last, &hi_last);
  }
  const int n_lo = lo_first, n_hi = hi_last;
  if (n_lo >= n_hi) {
    for (int c = tid; c < rows_q * dchunks; c += kThreads) {
      const int r = c / dchunks, ch = c % dchunks;
      *reinterpret_cast<uint4*>(dq + r * p.dq_stride.row + ch * 8) = make_uint4(0, 0, 0, 0);
    }
    return;
  }
  const T* qg = bwd_q_ptr<kVar, T>(p, p.q, p.q_stride, b, h, m0);
  const T* dog = bwd_q_ptr<kVar, T>(p, p.dout, p.dout_stride, b, h, m0);
  const T* kg = bwd_kv_ptr<kVar, T>(p, p.k, p.k_stride, b, hk, 0);
  const T* vg = bwd_kv_ptr<kVar, T>(p, p.v, p.v_stride, b, hk, 0);
  load_tile_async<TileQ, BM, D, kThreads>(sQ, qg, p.q_stride.row, rows_q, dchunks, qg, tid);
  load_tile_async<TileQ, BM, D, kThreads>(sdO, dog, p.dout_stride.row, rows_q, dchunks, dog, tid);
  prim::cp_async_commit();

  // This thread's two rows: lse (log2 units) and Dsum.
  float lse2[2], dsr[2];
  const int64_t row0 = kVar ? bwd_row<kVar>(p, b, h, m0)
                            : (static_cast<int64_t>(b) * p.nheads + h) * p.seqlen_q + m0;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int rl = warp * 16 + g + 8 * r;
    lse2[r] = rl < rows_q ? p.softmax_lse[row0 + rl] * prim::kLog2e : INFINITY;
    dsr[r] = rl < rows_q ? dsum[row0 + rl] : 0.f;
  }
  const bool plain = !(p.softcap > 0.f) && p.alibi_slopes == nullptr;
  const float scale_log2 = p.softmax_scale * prim::kLog2e;
  const float slope = prim::alibi_slope(p, b, h);
  const uint32_t sQ_base = prim::smem_u32(sQ), sdO_base = prim::smem_u32(sdO),
                 sK_base = prim::smem_u32(sK), sV_base = prim::smem_u32(sV);
  const uint32_t a_off = 2 * TileQ::offset(warp * 16 + lsel1 * 8 + lrow, lsel2 * 8);
  const uint32_t b_off = 2 * TileKV::offset(lsel2 * 8 + lrow, lsel1 * 8);
  const uint32_t bt_off = 2 * TileKV::offset(lsel1 * 8 + lrow, lsel2 * 8);

  float acc[kDT][4];
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[dt][e] = 0.f;

  for (int nb = n_lo / BN; nb <= (n_hi - 1) / BN; ++nb) {
    const int n0 = nb * BN;
    __syncthreads();  // previous tile fully consumed
    load_tile_async<TileKV, BN, D, kThreads>(sK, kg + static_cast<int64_t>(n0) * p.k_stride.row,
                                             p.k_stride.row, FP_BWD_SK - n0, dchunks, kg, tid);
    load_tile_async<TileKV, BN, D, kThreads>(sV, vg + static_cast<int64_t>(n0) * p.v_stride.row,
                                             p.v_stride.row, FP_BWD_SK - n0, dchunks, vg, tid);
    prim::cp_async_commit();
    prim::cp_async_wait<0>();
    __syncthreads();
    float s[kNT][4], dp[kNT][4];
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t aq[4], ado[4];
      prim::ldmatrix_x4(aq, sQ_base + (a_off ^ (kk * 32)));
      prim::ldmatrix_x4(ado, sdO_base + (a_off ^ (kk * 32)));
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        uint32_t bk[4], bv[4];
        prim::ldmatrix_x4(bk, sK_base + np * 16 * D * 2 + (b_off ^ (kk * 32)));
        prim::ldmatrix_x4(bv, sV_base + np * 16 * D * 2 + (b_off ^ (kk * 32)));
        prim::mma_16816<T>(s[2 * np], aq, bk[0], bk[1]);
        prim::mma_16816<T>(s[2 * np + 1], aq, bk[2], bk[3]);
        prim::mma_16816<T>(dp[2 * np], ado, bv[0], bv[1]);
        prim::mma_16816<T>(dp[2 * np + 1], ado, bv[2], bv[3]);
      }
    }
    const bool full_tile = n0 + BN <= FP_BWD_SK && n0 >= lo_last && n0 + BN <= hi_first;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int i = m0 + warp * 16 + g + 8 * r;
      int lo = 0, hi = FP_BWD_SK;
      if (!full_tile) {
        if (kVar)
          p.key_range(i, sq, sk, &lo, &hi);
        else
          p.key_range(i, &lo, &hi);
      }
      const uint64_t drop_row = kDrop ? bwd_philox_row(p, b, h, i) : 0;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int j = n0 + nt * 8 + 2 * t + c;
          float pv, dsv;
          // Dropout: dS = P (dP keep / (1 - p) - Dsum).
          const float dpv = !kDrop ? dp[nt][2 * r + c]
                            : bwd_dropout_keep(p, drop_row + j) ? dp[nt][2 * r + c] * p.rp_dropout
                                                                : 0.f;
          if (plain) {
            pv = prim::fast_exp2(fmaf(s[nt][2 * r + c], scale_log2, -lse2[r]));
            dsv = pv * (dpv - dsr[r]);
          } else {
            float th;
            const float z = kVar ? prim::logit_off(p, s[nt][2 * r + c], slope, i, j, sk - sq, &th)
                                 : prim::logit(p, s[nt][2 * r + c], slope, i, j, &th);
            pv = prim::fast_exp2(fmaf(z, prim::kLog2e, -lse2[r]));
            dsv = pv * (dpv - dsr[r]);
            if (p.softcap > 0.f) dsv *= 1.f - th * th;
          }
          if (!full_tile && (j < lo || j >= hi)) dsv = 0.f;
          dp[nt][2 * r + c] = dsv;
        }
    }
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[4];
      prim::c_to_a<T>(a, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
      for (int dp2 = 0; dp2 < D / 16; ++dp2) {
        uint32_t bk[4];
        prim::ldmatrix_x4_trans(bk, sK_base + kk * 16 * D * 2 + (bt_off ^ (dp2 * 32)));
        prim::mma_16816<T>(acc[2 * dp2], a, bk[0], bk[1]);
        prim::mma_16816<T>(acc[2 * dp2 + 1], a, bk[2], bk[3]);
      }
    }
  }
  // Epilogue: scale, stage through sQ (free now), 16-byte stores.
  __syncthreads();
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt)
      *reinterpret_cast<uint32_t*>(sQ + TileQ::offset(warp * 16 + g + 8 * r, dt * 8 + 2 * t)) =
          prim::Elem<T>::pack(acc[dt][2 * r] * p.softmax_scale, acc[dt][2 * r + 1] * p.softmax_scale);
  __syncthreads();
  for (int c = tid; c < BM * (D / 8); c += kThreads) {
    const int r = c / (D / 8), ch = c % (D / 8);
    if (r < rows_q && ch < dchunks)
      *reinterpret_cast<uint4*>(dq + r * p.dq_stride.row + ch * 8) =
          *reinterpret_cast<const uint4*>(sQ + TileQ::offset(r, ch * 8));
  }
#endif  // FLASHPLUS_HAS_MMA_SYNC
}

// Largest dynamic shared memory a block may opt into on the current device.
inline int max_smem_optin() {
  int dev = 0, v = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
    return 0;
  return v;
}

}  // namespace flashplus::gpu::tc

#include "gpu/bwd/bwd_gmma_kernel.cuh"

namespace flashplus::gpu::tc {

// The backward's workspace pool (gpu/workspace_pool.h), the current device's.
inline Status bwd_workspace_pool(cudaMemPool_t* pool) {
  int dev = 0;
  FLASHPLUS_GPU_CHECK(cudaGetDevice(&dev));
  return workspace_pool(dev, pool);
}

// The three (four in deterministic mode) launches around one main kernel: `main_kernel` is
// bwd_tc_kernel or bwd_gmma_kernel, BN keys per block, `threads` and `smem` bytes per block.
// kVar, kDrop: the flags `main_kernel` was instantiated with (the auxiliary kernels follow them).
template <typename T, int D, int BN, bool kVar = false, bool kDrop = false>
Status launch_bwd_main(const AttnParams& p, gpuStream_t stream,
                       void (*main_kernel)(const AttnParams, const float*, float*), int threads,
                       int smem) {
  using DT = DqTile<D>;
  constexpr int kDqSmem = 2 * (DT::BM + DT::BN) * D * 2;
  const bool det = p.deterministic;
  if (smem > max_smem_optin() || (det && kDqSmem > max_smem_optin()))
    return Status::NoInstance("bwd_tc: tile needs more shared memory than this device has");
  const int64_t rows = kVar ? bwd_rows(p) : static_cast<int64_t>(p.batch) * p.nheads * p.seqlen_q;
  // Workspace: fp32 dQ accumulator (rows x D; not in deterministic mode) and Dsum (rows) unless
  // p.softmax_d holds it. Stream-ordered, so no device-wide synchronisation.
  float* ws = nullptr;
  const size_t ws_bytes = ((det ? 0 : rows * D) + (p.softmax_d ? 0 : rows)) * sizeof(float);
  cudaMemPool_t pool = nullptr;
  FLASHPLUS_RETURN_IF_ERROR(bwd_workspace_pool(&pool));
  FLASHPLUS_GPU_CHECK(cudaMallocFromPoolAsync(reinterpret_cast<void**>(&ws), ws_bytes, pool, stream));
  float* dq_accum = det ? nullptr : ws;
  float* dsum = p.softmax_d ? p.softmax_d : ws + (det ? 0 : rows * D);
  auto fail = [&](cudaError_t e, const char* what) {
    (void)cudaFreeAsync(ws, stream);
    return platform::gpu_status(e, what);
  };
  {
    constexpr int kRows = BwdPre<D>::kRows;
    const dim3 grid((p.seqlen_q + kRows - 1) / kRows, p.nheads, p.batch);
    bwd_preprocess<T, D, kVar><<<grid, 128, 0, stream>>>(p, dsum, dq_accum);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return fail(e, "launch of bwd_preprocess");
  }
  {
    cudaError_t e =
        cudaFuncSetAttribute(main_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e == cudaSuccess) {
      const dim3 grid((p.seqlen_k + BN - 1) / BN, p.nheads_k, p.batch);
      main_kernel<<<grid, threads, smem, stream>>>(p, dsum, dq_accum);
      e = cudaGetLastError();
    }
    if (e != cudaSuccess) return fail(e, "launch of the backward main kernel");
  }
  if (det) {
    auto kernel = bwd_dq_kernel<T, D, kVar, kDrop>;
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kDqSmem);
    if (e == cudaSuccess) {
      const dim3 grid((p.seqlen_q + DT::BM - 1) / DT::BM, p.nheads, p.batch);
      kernel<<<grid, DT::NW * 32, kDqSmem, stream>>>(p, dsum);
      e = cudaGetLastError();
    }
    if (e != cudaSuccess) return fail(e, "launch of bwd_dq_kernel");
  } else {
    const int64_t chunks = rows * (p.head_dim / 8);
    bwd_convert_dq<T, D, kVar>
        <<<static_cast<unsigned>((chunks + 255) / 256), 256, 0, stream>>>(p, dq_accum);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return fail(e, "launch of bwd_convert_dq");
  }
  FLASHPLUS_GPU_CHECK(cudaFreeAsync(ws, stream));
  return Status::Ok();
}

template <typename T, int D, int BN, int BM, int NW, bool kVar = false, bool kDrop = false>
Status launch_bwd_tile(const AttnParams& p, gpuStream_t stream) {
  using Tr = BwdTraits<D, BN, BM, NW>;
  return launch_bwd_main<T, D, BN, kVar, kDrop>(
      p, stream, bwd_tc_kernel<T, D, BN, BM, NW, kVar, kDrop>, Tr::kThreads, Tr::kSmemBytes);
}

template <typename T, int D, int BN, int BM, int NW>
Status launch_bwd_gmma_tile(const AttnParams& p, gpuStream_t stream) {
  using Tr = BwdGmmaTraits<D, BN, BM, NW>;
  return launch_bwd_main<T, D, BN>(p, stream,
                                   p.deterministic ? bwd_gmma_kernel<T, D, BN, BM, NW, true>
                                                   : bwd_gmma_kernel<T, D, BN, BM, NW, false>,
                                   Tr::kThreads, Tr::kSmemBytes);
}

// Varlen / dropout on the wgmma kernel: not deterministic (that runs the mma.sync kernel with
// bwd_dq_kernel), so one instance per flag pair.
template <typename T, int D, int BN, int BM, int NW, bool kVar, bool kDrop>
Status launch_bwd_gmma_var_tile(const AttnParams& p, gpuStream_t stream) {
  using Tr = BwdGmmaTraits<D, BN, BM, NW>;
  return launch_bwd_main<T, D, BN, kVar, kDrop>(
      p, stream, bwd_gmma_kernel<T, D, BN, BM, NW, false, kVar, kDrop>, Tr::kThreads,
      Tr::kSmemBytes);
}

// Whether this translation unit's wgmma kernels exist in the image loaded for the current device
// (an sm_90a pass built them and the device is sm_90). Read once per device, by a synchronous
// copy: while `stream` is being captured into a graph that copy is not allowed, so such a call
// answers no (mma.sync kernel) and leaves the question for the next call.
static bool bwd_gmma_usable(gpuStream_t stream) {
  constexpr int kMaxDevices = 64;
  static int cached[kMaxDevices];  // 0 unknown, 1 yes, 2 no
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) return false;
  if (cached[dev] == 0) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    if (capture != cudaStreamCaptureStatusNone) return false;
    int flag = 0;
    const cudaError_t e = cudaMemcpyFromSymbol(&flag, bwd_gmma_compiled_flag, sizeof(int));
    if (e != cudaSuccess) (void)cudaGetLastError();
    cached[dev] = (e == cudaSuccess && flag == 1) ? 1 : 2;
  }
  return cached[dev] == 1;
}

template <typename T, int D>
Status launch_bwd(const AttnParams& p, const KernelConfig& cfg, gpuStream_t stream) {
  if (cfg.num_splits > 1 || cfg.stages > 2)
    return Status::NoInstance("bwd_tc: no such pipeline compiled");
  if (p.batch == 0 || p.nheads == 0 || p.seqlen_k == 0 || p.seqlen_q == 0)
    return Status::NoInstance("bwd_tc: empty problem (left to the fallback)");
  // KernelConfig for the backward: block_n = keys per block, block_m = queries per step.
  if (bwd_gmma_usable(stream)) {
    bool gfirst = true;
#define FLASHPLUS_BWD_GMMA_TRY(DD, BN, BM, NW)                                            \
  if constexpr (DD == D) {                                                                \
    if (tile_selected(cfg, BM, BN, NW, gfirst))                                         \
      return launch_bwd_gmma_tile<T, DD, BN, BM, NW>(p, stream);                          \
    gfirst = false;                                                                       \
  }
    FLASHPLUS_BWD_GMMA_TILES_ALL(FLASHPLUS_BWD_GMMA_TRY)
#undef FLASHPLUS_BWD_GMMA_TRY
    (void)gfirst;
  }
  bool first = true;
#define FLASHPLUS_BWD_TRY(DD, BN, BM, NW)                                                 \
  if constexpr (DD == D) {                                                                \
    if (tile_selected(cfg, BM, BN, NW, first))                                          \
      return launch_bwd_tile<T, DD, BN, BM, NW>(p, stream);                               \
    first = false;                                                                        \
  }
  FLASHPLUS_BWD_TILES_ALL(FLASHPLUS_BWD_TRY)
#undef FLASHPLUS_BWD_TRY
  (void)first;
  (void)p;
  (void)stream;
  return Status::NoInstance("bwd_tc: no compiled tile m" + std::to_string(cfg.block_m) + "n" +
                            std::to_string(cfg.block_n) + "w" + std::to_string(cfg.num_warps) +
                            " for head-dim bucket " + std::to_string(D));
}

}  // namespace flashplus::gpu::tc

namespace flashplus::gpu::tc {

// Variable-length batches and dropout (kernels/gpu/bwd/bwd_var_<dtype>_d<D>.cu): the bucket's
// default tile only, as the forward, with kVar on (it also serves fixed-length dropout) and kDrop
// when dropout is on. Where the wgmma kernel runs it takes the non-deterministic calls; the
// mma.sync kernel (with bwd_dq_kernel) the rest. A config naming another tile answers
// no_instance and the backend retries the default.
template <typename T, int D>
Status launch_bwd_var(const AttnParams& p, const KernelConfig& cfg, gpuStream_t stream) {
  if (cfg.num_splits > 1 || cfg.stages > 2)
    return Status::NoInstance("bwd_tc: no such pipeline compiled");
  if (p.batch == 0 || p.nheads == 0 || p.seqlen_k == 0 || p.seqlen_q == 0)
    return Status::NoInstance("bwd_tc: empty problem (left to the fallback)");
  const bool drop = p.has_dropout();
  if (bwd_gmma_usable(stream) && !p.deterministic) {
#define FLASHPLUS_BWD_GMMA_VAR(DD, BN, BM, NW)                                             \
  if constexpr (DD == D) {                                                                 \
    if (tile_selected(cfg, BM, BN, NW, true))                                              \
      return drop ? launch_bwd_gmma_var_tile<T, DD, BN, BM, NW, true, true>(p, stream)     \
                  : launch_bwd_gmma_var_tile<T, DD, BN, BM, NW, true, false>(p, stream);   \
  }
    FLASHPLUS_BWD_GMMA_TILES_ALL(FLASHPLUS_BWD_GMMA_VAR)
#undef FLASHPLUS_BWD_GMMA_VAR
    return Status::NoInstance("bwd_tc: varlen and dropout are compiled for the default tile only");
  }
  // The bucket's first (default) mma.sync tile.
#define FLASHPLUS_BWD_TC_VAR(DD, BN, BM, NW)                                               \
  if constexpr (DD == D && is_default_bwd_tile(DD, BN, BM, NW)) {                          \
    if (tile_selected(cfg, BM, BN, NW, true))                                              \
      return drop ? launch_bwd_tile<T, DD, BN, BM, NW, true, true>(p, stream)              \
                  : launch_bwd_tile<T, DD, BN, BM, NW, true, false>(p, stream);            \
  }
  FLASHPLUS_BWD_TILES_ALL(FLASHPLUS_BWD_TC_VAR)
#undef FLASHPLUS_BWD_TC_VAR
  return Status::NoInstance("bwd_tc: varlen and dropout are compiled for the default tile only");
}

}  // namespace flashplus::gpu::tc
