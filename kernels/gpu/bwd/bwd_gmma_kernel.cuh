// Backward on Hopper warpgroup MMA (wgmma, sm_90a): the same algorithm as bwd_tc_kernel (one
// block per key block, dK/dV in registers, dQ by fp32 reductions or, in deterministic mode, by
// bwd_dq_kernel), with every product a wgmma that reads its shared-memory operands once per
// warpgroup instead of once per warp (bwd_tc_kernel's ldmatrix traffic was the limit, see
// docs/GPU_KERNELS.md "Backward on wgmma").
//
// Block: 128 keys, 2 warpgroups (8 warps); warpgroup wg owns keys [64wg, 64wg+64), warp w keys
// [16w, 16w+16) as in bwd_tc_kernel, so the per-element code (masks, softcap, ALiBi) is the same.
// Per (query head, query block of BM rows):
//   S^T  = K_wg Q^T     m64 n=BM,  A = K (smem, K-major), B = Q (smem, K-major)
//   dP^T = V_wg dO^T    m64 n=BM,  A = V,                 B = dO          (issued with S^T)
//   P^T  = exp(S^T - lse) -> 16-bit A fragments (registers)
//   dV  += P^T dO       m64 n=D,   A = P^T (registers),   B = dO (smem, MN-major)
//   dS^T = P^T (dP^T - Dsum)
//   dK  += dS^T Q       m64 n=D,   A = dS^T (registers),  B = Q (smem, MN-major)
//   dS^T -> smem; dQ_part = dS K   m64 n=64: A = dS (smem, MN-major), B = K (smem, MN-major);
//     warpgroup wg takes query rows [64wg, +64) when BM = 128, head-dim columns [64wg, +64)
//     when BM = 64; then red.global.add.v2.f32 into the fp32 accumulator.
#pragma once
#include <type_traits>

#include "gpu/bwd/bwd_gmma.h"
#include "flashplus_gen/tiles.h"  // the tile lists, generated from kernels/registry/spec.json

namespace flashplus::gpu::tc {

// Compiled wgmma backward tiles: FLASHPLUS_BWD_GMMA_TILES_D<D>(X), X(D, BN keys, BM queries,
// NW warps), generated from kernels/registry/spec.json (family "bwd_gmma"). First entry = default.
// On a device where this kernel runs (sm_90 with sm_90a code), a KernelConfig that matches one of
// these picks it before the mma.sync list (bwd_kernel.cuh) is consulted.

template <int D, int BN, int BM, int NW>
struct BwdGmmaTraits {
  static constexpr int kThreads = NW * 32;
  static constexpr int kQT = BM / 8;  // n8 tiles of S^T per thread row
  static constexpr int kDT = D / 8;   // n8 tiles of dK/dV
  using TileKV = GmmaTile<BN, D>;
  using TileQ = GmmaTile<BM, D>;
  using TileDS = GmmaTile<BN, BM>;  // dS^T: row = key, col = query
  static constexpr bool kDqSplitRows = BM == 128;  // dQ split over warpgroups by rows, else cols
  static constexpr int kDQN = kDqSplitRows ? D : D / 2;
  // fp32 dQ staging for the bulk reductions: BM rows of D floats, rows padded by 8 floats so that
  // the float2 stores of a half-warp (4 rows x 4 column pairs) hit 32 different banks.
  static constexpr int kDqStride = D + 8;
  static constexpr int kSmemBytes = 1024 + 2 * TileKV::kBytes + 4 * TileQ::kBytes +
                                    2 * TileDS::kBytes + BM * kDqStride * 4 + 4 * BM * 4;
  static_assert(BN == 128 && NW == 8, "two warpgroups of 64 keys");
  static_assert(BM == 64 || BM == 128, "wgmma n = BM");
  static_assert(D == 64 || D == 128, "wgmma n = D");
  static_assert(kDQN == 64, "dQ product per warpgroup is m64n64");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory over the per-block limit");
};

// kDet: deterministic mode (dq_accum == nullptr, dQ left to bwd_dq_kernel); a template
// parameter so that the wgmma pipeline below has no data-dependent issue. kVar, kDrop: varlen
// geometry and dropout as in bwd_tc_kernel (bwd_kernel.cuh).
template <typename T, int D, int BN, int BM, int NW, bool kDet, bool kVar = false,
          bool kDrop = false>
__global__ void __launch_bounds__(NW * 32, 1)
    bwd_gmma_kernel(const AttnParams p, const float* __restrict__ dsum, float* dq_accum) {
#if FLASHPLUS_HAS_WGMMA
  using Tr = BwdGmmaTraits<D, BN, BM, NW>;
  using TileKV = typename Tr::TileKV;
  using TileQ = typename Tr::TileQ;
  using TileDS = typename Tr::TileDS;
  constexpr int kQT = Tr::kQT, kDT = Tr::kDT, kThreads = Tr::kThreads;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  // Swizzle atoms need 1024-byte aligned tiles: round the base up (kSmemBytes has the slack).
  unsigned char* smem = smem_raw + ((1024u - (prim::smem_u32(smem_raw) & 1023u)) & 1023u);
  T* sK = reinterpret_cast<T*>(smem);
  T* sV = sK + TileKV::kElems;
  T* sQ = sV + TileKV::kElems;      // [2][BM][D]
  T* sdO = sQ + 2 * TileQ::kElems;  // [2][BM][D]
  T* sdS = sdO + 2 * TileQ::kElems;                              // [2][BN][BM]
  float* sdQ = reinterpret_cast<float*>(sdS + 2 * TileDS::kElems);  // [BM][kDqStride]
  float* sLse = sdQ + BM * Tr::kDqStride;                        // [2][BM] (natural log)
  float* sDs = sLse + 2 * BM;                                    // [2][BM]

  const int tid = threadIdx.x, lane = tid % 32, g = lane / 4, t = lane % 4;
  // Warp and warpgroup index through a shuffle, so the compiler knows they are warp-uniform and
  // keeps the descriptor arithmetic in uniform registers.
  const int warp = __shfl_sync(0xffffffffu, tid / 32, 0);
  const int wg = warp / 4, wi = warp % 4;
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
  const int n_iters = G * m_count;

  const T* kg = bwd_kv_ptr<kVar, T>(p, p.k, p.k_stride, b, hk, n0);
  const T* vg = bwd_kv_ptr<kVar, T>(p, p.v, p.v_stride, b, hk, n0);
  load_tile_async<TileKV, BN, D, kThreads>(sK, kg, p.k_stride.row, rows_k, dchunks, kg, tid);
  load_tile_async<TileKV, BN, D, kThreads>(sV, vg, p.v_stride.row, rows_k, dchunks, vg, tid);

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
    // lse and Dsum through cp.async as well (a plain load would stall the thread here); rows
    // past seqlen_q read as 0 and are zeroed explicitly on the general path of the loop.
    const int64_t row0 = kVar ? bwd_row<kVar>(p, b, hq, m0)
                              : (static_cast<int64_t>(b) * p.nheads + hq) * p.seqlen_q + m0;
    static_assert(2 * BM <= kThreads, "one thread per lse / Dsum value");
    if (tid < BM) {
      const bool ok = tid < rows_q;
      cp_async_4(prim::smem_u32(sLse + buf * BM + tid), p.softmax_lse + (ok ? row0 + tid : 0), ok);
    } else if (tid < 2 * BM) {
      const int r = tid - BM;
      const bool ok = r < rows_q;
      cp_async_4(prim::smem_u32(sDs + buf * BM + r), dsum + (ok ? row0 + r : 0), ok);
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
  const bool cap = p.softcap > 0.f;
  const float scale_log2 = p.softmax_scale * prim::kLog2e;
  const uint32_t sK_base = prim::smem_u32(sK), sV_base = prim::smem_u32(sV),
                 sdS_base = prim::smem_u32(sdS);
  const uint32_t kv_wg = wg * 64 * 128;  // this warpgroup's 64 key rows inside each column block
  // dQ product of this warpgroup: query rows [q_off, +64), head-dim columns [d_off, +64).
  const int dq_row0 = Tr::kDqSplitRows ? 64 * wg : 0;
  const int dq_col0 = Tr::kDqSplitRows ? 0 : 64 * wg;
  // Base descriptors; a k-step adds a compile-time byte offset / 16 to the low word.
  const uint64_t dK_kmaj = gmma_desc(sK_base + kv_wg, 16, 1024);
  const uint64_t dV_kmaj = gmma_desc(sV_base + kv_wg, 16, 1024);
  const uint64_t dQ_kmaj[2] = {gmma_desc(prim::smem_u32(sQ), 16, 1024),
                               gmma_desc(prim::smem_u32(sQ + TileQ::kElems), 16, 1024)};
  const uint64_t ddO_kmaj[2] = {gmma_desc(prim::smem_u32(sdO), 16, 1024),
                                gmma_desc(prim::smem_u32(sdO + TileQ::kElems), 16, 1024)};
  const uint64_t dQ_mn[2] = {gmma_desc(prim::smem_u32(sQ), TileQ::kBlockBytes, 1024),
                             gmma_desc(prim::smem_u32(sQ + TileQ::kElems), TileQ::kBlockBytes, 1024)};
  const uint64_t ddO_mn[2] = {
      gmma_desc(prim::smem_u32(sdO), TileQ::kBlockBytes, 1024),
      gmma_desc(prim::smem_u32(sdO + TileQ::kElems), TileQ::kBlockBytes, 1024)};
  const uint64_t ddS_mn[2] = {
      gmma_desc(sdS_base + (dq_row0 / 64) * TileDS::kBlockBytes, TileDS::kBlockBytes, 1024),
      gmma_desc(sdS_base + TileDS::kBytes + (dq_row0 / 64) * TileDS::kBlockBytes,
                TileDS::kBlockBytes, 1024)};
  const uint64_t dK_mn =
      gmma_desc(sK_base + (dq_col0 / 64) * TileKV::kBlockBytes, TileKV::kBlockBytes, 1024);
  const int wtid = tid % 128;  // thread inside the warpgroup
  const int key_r0 = n0 + warp * 16 + g;  // this thread's keys: key_r0, key_r0 + 8
  // key_range as a band of j - i: row i sees key j < seqlen_k iff band_lo <= j - i < band_hi
  // (the clamps of key_range to [0, seqlen_k] change nothing for 0 <= j < seqlen_k). Clamped to
  // +-2^30 so that the per-iteration differences below stay in int.
  int band_lo = -(1 << 30), band_hi = 1 << 30;
  if (p.has_window()) {
    const long long c = static_cast<long long>(FP_BWD_SK) - FP_BWD_SQ;  // varlen: sk - sq
    const long long lo = c - p.window_left, hi = c + p.window_right + 1;
    band_lo = static_cast<int>(lo < -(1 << 30) ? -(1 << 30) : lo > (1 << 30) ? (1 << 30) : lo);
    band_hi = static_cast<int>(hi < -(1 << 30) ? -(1 << 30) : hi > (1 << 30) ? (1 << 30) : hi);
  }

  // S^T (resp. dP^T) of the query block in buffer `qb`, one commit group each.
  auto issue_s = [&](float (&s)[kQT][4], int qb) {
    const uint64_t dq_k = qb ? dQ_kmaj[1] : dQ_kmaj[0];
    gmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t okv = ((kk / 4) * TileKV::kBlockBytes + (kk % 4) * 32) >> 4;
      const uint32_t oq = ((kk / 4) * TileQ::kBlockBytes + (kk % 4) * 32) >> 4;
      gmma_ss<T, 0, 0, BM>(s, dK_kmaj + okv, dq_k + oq, kk > 0);
    }
    gmma_commit();
  };
  auto issue_dp = [&](float (&dp)[kQT][4], int qb) {
    const uint64_t ddo_k = qb ? ddO_kmaj[1] : ddO_kmaj[0];
    gmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t okv = ((kk / 4) * TileKV::kBlockBytes + (kk % 4) * 32) >> 4;
      const uint32_t oq = ((kk / 4) * TileQ::kBlockBytes + (kk % 4) * 32) >> 4;
      gmma_ss<T, 0, 0, BM>(dp, dV_kmaj + okv, ddo_k + oq, kk > 0);
    }
    gmma_commit();
  };

  // dQ = dS K (64 x 64 per warpgroup) from dS^T buffer `db`; stage_dq: scale, stage in shared
  // memory, bulk-reduce into dq_accum (rows of iteration itp).
  auto issue_dq = [&](float (&acc)[8][4], int db) {
    gmma_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)
      gmma_ss<T, 1, 1, 64>(acc, ddS_mn[db] + kk * (2048 >> 4), dK_mn + kk * (2048 >> 4), kk > 0);
    gmma_commit();
  };
  auto stage_dq = [&](const float (&acc)[8][4], int itp) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float* row = sdQ + (dq_row0 + wi * 16 + g + 8 * r) * Tr::kDqStride + dq_col0 + 2 * t;
#pragma unroll
      for (int dt = 0; dt < 8; ++dt)
        *reinterpret_cast<float2*>(row + dt * 8) =
            make_float2(acc[dt][2 * r] * p.softmax_scale, acc[dt][2 * r + 1] * p.softmax_scale);
    }
    fence_proxy_async();
    named_barrier(1 + wg, 128);  // this warpgroup's 64 x 64 piece is staged
    if (wtid < 64) {             // one 256-byte row segment per thread
      const int hq_p = hk * G + itp / m_count;
      const int rl = dq_row0 + wtid, i = (m_first + itp % m_count) * BM + rl;
      if (i < FP_BWD_SQ) {
        float* dqa = dq_accum + (kVar ? bwd_row<kVar>(p, b, hq_p, i)
                                      : (static_cast<int64_t>(b) * p.nheads + hq_p) * p.seqlen_q + i) *
                                    D;
        bulk_reduce_add_f32(dqa + dq_col0, prim::smem_u32(sdQ + rl * Tr::kDqStride + dq_col0),
                            64 * 4);
      }
      bulk_commit();
    }
  };

  // Software pipeline over (head, query block) iterations, one block barrier each, at the end
  // of iteration it: it publishes dS^T(it) (both warpgroups' keys) and Q/dO(it+1). Iteration it
  // then starts dQ(it-1) and S^T(it) together, stages and bulk-reduces dQ(it-1) under S^T(it),
  // and issues dP^T(it) last (needed only at dS). Every product is waited for inside its
  // iteration, and none is issued conditionally (at it = 0 either a separate instance of the
  // body without the dQ product, kPeel below, or the dQ product runs on the unused dS^T buffer
  // and is dropped), which keeps ptxas from serializing the pipeline.
  // Buffers: Q/dO/lse/Dsum and dS^T are double-buffered by it % 2; whatever an iteration's
  // products read is complete before that iteration's barrier.
  prim::cp_async_wait<0>();
  fence_proxy_async();
  __syncthreads();

  // kPeel: the first iteration is a separate instance of the body (kFirst): it has no dQ(it-1)
  // to compute, and issuing none there (rather than a product on the unused dS^T buffer that is
  // dropped) lets S^T(0) start at once; two instances instead of a conditional issue, which made
  // ptxas serialize the wgmma pipeline. d64 only: +1-4% there, but at d128 the second instance
  // raised the spills from 28 to 92 bytes and lost 3-5% (H100, same-run A/B, docs/PERF.md).
  constexpr bool kPeel = D == 64 && !kDet;  // kDet has no dQ product: nothing to peel
  auto iteration = [&](const int it, auto first_c) {
    constexpr bool kFirst = decltype(first_c)::value;
    const int buf = it & 1;
    [[maybe_unused]] float acc_dq[8][4];
    float s[kQT][4], dp[kQT][4];
    if constexpr (!kDet && !kFirst) issue_dq(acc_dq, buf ^ 1);
    issue_s(s, buf);
    if constexpr (!kDet && !kFirst) {
      gmma_wait<1>();
      gmma_reg_fence(acc_dq);
      if (kPeel || it > 0) stage_dq(acc_dq, it - 1);
    }
    issue_dp(dp, buf);
    if (it + 1 < n_iters) load_q_block(it + 1, buf ^ 1);
    prim::cp_async_commit();

    const int hq = hk * G + it / m_count;
    const int m0 = (m_first + it % m_count) * BM;
    const uint64_t dq_m = buf ? dQ_mn[1] : dQ_mn[0], ddo_m = buf ? ddO_mn[1] : ddO_mn[0];
    gmma_wait<1>();  // S^T(it) done; dP^T(it) may still run
    gmma_reg_fence(s);

    const int q_last = min(m0 + BM, FP_BWD_SQ) - 1;
    bool full_tile = n0 + BN <= FP_BWD_SK && m0 + BM <= FP_BWD_SQ;
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
    // pP: P^T as A fragments (m = key, k = query). pS: P^T times the softcap derivative.
    // Dropout: pP is P * keep / (1 - p) (for dV), pS is P (no softcap with dropout).
    uint32_t pP[BM / 16][4], pS[BM / 16][4];
    [[maybe_unused]] const uint64_t drop_row = kDrop ? bwd_philox_row(p, b, hq, m0) : 0;
    // Three compiled versions of the element loop: the common case (no softcap/ALiBi, every key of
    // the block visible to every query row) without a branch per element; masks without
    // softcap/ALiBi (causal diagonal, windows, tile edges: one compare pair per element against
    // the band, no key_range per row); and the general one. Dropout takes the masked version
    // for full tiles too (the fast one shares one packed copy of P between pP and pS).
    auto scores_to_p_masked = [&]() {
      // Element (nt, r, c): j - i = dbase + 8r - 8nt - c, i - m0 = 8nt + 2t + c, j - n0 = ...
      const int dbase = key_r0 - m0 - 2 * t;
      const int lo_k = band_lo - dbase, hi_k = band_hi - dbase;  // visible: lo_k <= k < hi_k
      const int rows_left = FP_BWD_SQ - m0 - 2 * t;               // i < sq: 8nt + c < rows_left
      const int keys_left = FP_BWD_SK - key_r0;                   // j < sk: 8r < keys_left
#pragma unroll
      for (int nt = 0; nt < kQT; ++nt) {
        float lse2[2];
#pragma unroll
        for (int c = 0; c < 2; ++c) lse2[c] = lse_s[nt * 8 + 2 * t + c] * prim::kLog2e;
        [[maybe_unused]] uint32_t keep = 0;  // dropout keep bits, bit c + 2r
        if constexpr (kDrop)
          keep = bwd_dropout_keep4(p, drop_row + static_cast<uint64_t>(nt * 8 + 2 * t) * p.seqlen_k,
                                   key_r0, g);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float pv[2];
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int k = 8 * r - 8 * nt - c;
            const bool vis = k >= lo_k && k < hi_k && 8 * nt + c < rows_left && 8 * r < keys_left;
            const float v = prim::fast_exp2(fmaf(s[nt][2 * r + c], scale_log2, -lse2[c]));
            pv[c] = vis ? v : 0.f;
          }
          if constexpr (kDrop) {  // pS = P, pP = P * keep / (1 - p)
            pS[nt / 2][(nt % 2) * 2 + r] = prim::Elem<T>::pack(pv[0], pv[1]);
#pragma unroll
            for (int c = 0; c < 2; ++c) pv[c] = (keep >> (c + 2 * r)) & 1u ? pv[c] * p.rp_dropout : 0.f;
            pP[nt / 2][(nt % 2) * 2 + r] = prim::Elem<T>::pack(pv[0], pv[1]);
          } else {
            pP[nt / 2][(nt % 2) * 2 + r] = prim::Elem<T>::pack(pv[0], pv[1]);
            pS[nt / 2][(nt % 2) * 2 + r] = pP[nt / 2][(nt % 2) * 2 + r];
          }
        }
      }
    };
    auto scores_to_p = [&](auto fast_c) {
      constexpr bool kFast = decltype(fast_c)::value;
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
          lse2[c] = lse_s[ql] * prim::kLog2e;
          int l = 0, h = FP_BWD_SK;
          if (!kFast && !full_tile) {
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
            if (kFast || plain) {
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
            if (!kFast && !full_tile && (j < lo[c] || j >= hi[c] || i >= FP_BWD_SQ))
              pv[c] = pc[c] = 0.f;
            if constexpr (kDrop) pv[c] = (keep >> (c + 2 * r)) & 1u ? pv[c] * p.rp_dropout : 0.f;
          }
          pP[nt / 2][(nt % 2) * 2 + r] = prim::Elem<T>::pack(pv[0], pv[1]);
          pS[nt / 2][(nt % 2) * 2 + r] = kFast ? pP[nt / 2][(nt % 2) * 2 + r]
                                               : prim::Elem<T>::pack(pc[0], pc[1]);
        }
      }
    };
    if (!kDrop && plain && full_tile) scores_to_p(std::true_type{});
    else if (plain) scores_to_p_masked();
    else scores_to_p(std::false_type{});

    // ---- dV += P^T dO ----
    gmma_fence();
#pragma unroll
    for (int kq = 0; kq < BM / 16; ++kq)
      gmma_rs<T, 1, D>(acc_dv, pP[kq], ddo_m + kq * (2048 >> 4), 1);
    gmma_commit();
    gmma_wait<1>();  // dP^T done (dV may still run)
    gmma_reg_fence(dp);

    // ---- dS^T = P^T (dP^T - Dsum) ----
    bwd_ds_from_dp<T, kDrop>(dp, pS, pP, ds_s, t);

    // ---- dK += dS^T Q ----
    uint32_t ads[BM / 16][4];
#pragma unroll
    for (int kq = 0; kq < BM / 16; ++kq) prim::c_to_a<T>(ads[kq], dp[2 * kq], dp[2 * kq + 1]);
    gmma_fence();
#pragma unroll
    for (int kq = 0; kq < BM / 16; ++kq)
      gmma_rs<T, 1, D>(acc_dk, ads[kq], dq_m + kq * (2048 >> 4), 1);
    gmma_commit();

    if constexpr (!kDet) {
      // ---- dS^T -> shared memory (16-bit, as the dQ product consumes it) ----
      // ads[kq][e] holds rows g (+8 for e odd) x queries kq*16 + 2t (+8 for e >= 2): the four
      // 8x8 matrices of one stmatrix.x4, lane l addressing row l % 8 of matrix l / 8.
#pragma unroll
      for (int kq = 0; kq < BM / 16; ++kq) {
        const int kr = warp * 16 + (lane % 8) + 8 * ((lane / 8) % 2), qc = kq * 16 + 8 * (lane / 16);
        stmatrix_x4(sdS_base + buf * TileDS::kBytes + 2 * TileDS::offset(kr, qc), ads[kq]);
      }
    }
    gmma_wait<0>();
    gmma_reg_fence(acc_dv);
    gmma_reg_fence(acc_dk);

    // ---- iteration boundary ----
    if (!kDet && wtid < 64) bulk_wait_read();  // sdQ: the bulk reductions of it-1 have read it
    prim::cp_async_wait<0>();                  // Q/dO/lse/Dsum(it+1) landed (this thread's part)
    fence_proxy_async();                       // dS^T stores, cp.async data -> wgmma operands
    __syncthreads();
  };
  if constexpr (kPeel) {
    iteration(0, std::true_type{});
    for (int it = 1; it < n_iters; ++it) iteration(it, std::false_type{});
  } else {
    for (int it = 0; it < n_iters; ++it) iteration(it, std::false_type{});
  }
  // ---- epilogue: the last dQ product runs while dK (scaled) and dV go out through shared
  // memory. Staging in the Q / dO buffers (each 2 * TileQ >= TileKV bytes), which nothing reads
  // any more: the last iteration's products are complete and no load is in flight, and the dQ
  // product reads only dS^T and K.
  [[maybe_unused]] float acc_dq[8][4];
  if constexpr (!kDet) issue_dq(acc_dq, (n_iters - 1) & 1);
  static_assert(2 * TileQ::kBytes >= TileKV::kBytes, "dK / dV staging in the Q / dO buffers");
  T* sdK = sQ;
  T* sdV = sdO;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int kr = warp * 16 + g + 8 * r;
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
      *reinterpret_cast<uint32_t*>(sdK + TileKV::offset(kr, dt * 8 + 2 * t)) = prim::Elem<T>::pack(
          acc_dk[dt][2 * r] * p.softmax_scale, acc_dk[dt][2 * r + 1] * p.softmax_scale);
      *reinterpret_cast<uint32_t*>(sdV + TileKV::offset(kr, dt * 8 + 2 * t)) =
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
          *reinterpret_cast<const uint4*>(sdK + TileKV::offset(r, ch * 8));
      *reinterpret_cast<uint4*>(dv_out + r * p.dv_stride.row + ch * 8) =
          *reinterpret_cast<const uint4*>(sdV + TileKV::offset(r, ch * 8));
    }
  }
  if constexpr (!kDet) {
    gmma_wait<0>();
    gmma_reg_fence(acc_dq);
    stage_dq(acc_dq, n_iters - 1);
    // Only the shared-memory reads must finish before the block exits (its shared memory goes to
    // the next block); the reductions complete before the grid does, so bwd_convert_dq sees
    // them. Waiting for their completion here cost about 1 us per block.
    if (wtid < 64) bulk_wait_read();
  }
#else
  (void)p;
  (void)dsum;
  (void)dq_accum;
  __trap();  // never launched: bwd_gmma_compiled() says no sm_90a code was built
#endif  // FLASHPLUS_HAS_WGMMA
}

// 1 in the device code of an sm_90a pass, 0 in any other: the host reads the value of the image
// the driver loaded for the current device, so the wgmma kernel is only launched where it exists.
static __device__ int bwd_gmma_compiled_flag = FLASHPLUS_HAS_WGMMA;

}  // namespace flashplus::gpu::tc
