// Hopper forward (sm_90a): warpgroup MMA (wgmma) with operands in shared memory, loaded by the
// bulk tensor copy engine (TMA) into a multi-stage pipeline.
//
// One thread block = 128 query rows of one (batch, head), 3 warpgroups:
//   warpgroup 0  producer: one thread issues the TMA copies (Q once, then K(n), V(n) per key tile
//                into STAGES ring buffers), gated by "empty" mbarriers, completing on "full"
//                mbarriers (transaction bytes). It gives its registers away (setmaxnreg.dec).
//   warpgroups 1, 2  consumers, 64 query rows each: S = Q K^T as wgmma SS (m64 n=BN k16, both
//                operands K-major), the online softmax in registers, O += P V as wgmma RS (P from
//                registers, V MN-major through the descriptor, no transpose copy). K(n) is released
//                as soon as S is computed, V(n) after the PV product.
// The two consumers run their loops independently, so one's softmax overlaps the other's MMAs;
// with OVERLAP (the compiled default) each consumer also runs the softmax of tile n+1 while its
// own PV(n) is in flight.
// kVar: packed variable-length batches (cu_seqlens_q/k, seqused_k; no block_table): the grid lays
// the sequences' row blocks out along x (see the kernel's prologue); masks
// and ALiBi use the sequence's own lengths; TMA reads the packed (total, heads, d) tensors from the
// sequence's first row (rows past its end belong to the next sequence: keys there are masked like
// keys past seqlen_k, query rows there are computed and never stored); O and lse are written row
// by row, within the sequence. kVar = false compiles the dense kernel unchanged.
// No kv cache / dropout / paged varlen: the mma.sync family serves those.
// Masks (causal, window: AttnParams::key_range), softcap and ALiBi (primitives/attn_score.h),
// lse, fully masked rows (out 0, lse +inf) as in the mma.sync kernel; global offsets are 64-bit
// (TMA coordinates are per dimension).
#pragma once
#include "platform/gpu_runtime.h"
#if FLASHPLUS_VENDOR_HIP
#error "fwd_sm90_kernel.cuh is the NVIDIA Hopper path"
#endif
#include <cuda.h>          // CUtensorMap and its enums (types only: no -lcuda)
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled (called through the driver entry point)

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "flashplus/params.h"
#include "flashplus/status.h"
#include "gpu/fwd_sm90/sm90_mma.h"
#include "gpu/gpu_kernels.h"
#include "platform/arch.h"
#include "platform/types.h"
#include "primitives/attn_score.h"
#include "primitives/tile_mma.h"
#include "flashplus_gen/tiles.h"  // the tile lists, generated from kernels/registry/spec.json

namespace flashplus::gpu::sm90fwd {

// Compiled tiles per head-dim bucket: FLASHPLUS_FWD_SM90_TILES_D<D>(X), X(D, BM, BN, STAGES,
// OVERLAP), generated from kernels/registry/spec.json (family "fwd_sm90"). OVERLAP: the softmax of
// tile n+1 overlaps the MMAs (see the consumer loop). BM is fixed by the warpgroup layout
// (2 consumers x 64 rows); the first entry of a bucket is its default. Host dispatch, the
// autotune candidate list and instantiation all read these lists.
constexpr int kSm90Warps = 12;  // KernelConfig::num_warps of this family (3 warpgroups)

template <int D, int BN, int STAGES>
struct Sm90Traits {
  static constexpr int kBM = 128;
  static constexpr int kThreads = 384;
  static constexpr int kPanels = D / 64;           // 64-column (128-byte) panels of a row
  static constexpr int kQPanel = kBM * 128;        // bytes of one Q panel
  static constexpr int kKVPanel = BN * 128;        // bytes of one K or V panel
  static constexpr int kQBytes = kPanels * kQPanel;
  static constexpr int kKVBytes = kPanels * kKVPanel;
  static constexpr int kBarOffset = kQBytes + 2 * STAGES * kKVBytes;
  static constexpr int kNumBars = 1 + 4 * STAGES;
  static constexpr int kSmemBytes = kBarOffset + 8 * kNumBars + 1024;  // + 1024-byte alignment
  static_assert(D % 64 == 0 && BN % 64 == 0 && BN <= 256, "tile shape");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory over the sm_90 per-block limit");
};

// Kernel argument: the tensor maps must live in parameter space (__grid_constant__).
struct Sm90Args {
  CUtensorMap tq, tk, tv;
  AttnParams p;
};

template <typename T, int D, int BN, int STAGES, bool OVERLAP, bool kVar = false>
__global__ void __launch_bounds__(384, 1) fwd_sm90_kernel(const __grid_constant__ Sm90Args args) {
#if FLASHPLUS_HAS_WGMMA
  using Tr = Sm90Traits<D, BN, STAGES>;
  constexpr int kBM = Tr::kBM, kPanels = Tr::kPanels;
  const AttnParams& p = args.p;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw = prim::smem_u32(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;  // swizzle atoms need 1024-byte alignment
  unsigned char* const gbase = smem_raw + (base - raw);
  const uint32_t sQ = base;
  const uint32_t sK0 = base + Tr::kQBytes;
  const uint32_t sV0 = sK0 + STAGES * Tr::kKVBytes;
  const uint32_t bar0 = base + Tr::kBarOffset;
  const uint32_t full_q = bar0;
  auto full_k = [&](int s) { return bar0 + 8u * (1 + s); };
  auto full_v = [&](int s) { return bar0 + 8u * (1 + STAGES + s); };
  auto empty_k = [&](int s) { return bar0 + 8u * (1 + 2 * STAGES + s); };
  auto empty_v = [&](int s) { return bar0 + 8u * (1 + 3 * STAGES + s); };

  const int tid = threadIdx.x;
  int m_block, b;
  if constexpr (kVar) {
    // Varlen, flattened grid (no block per max_seqlen_q row block of every sequence): sequence b
    // owns blocks [start(b), start(b + 1)) of x, start(b) = cu_seqlens_q[b] / kBM + b, i.e. its
    // ceil(len / kBM) row blocks and at most one spare (which exits). Each warp finds b with one
    // round of loads per 32 sequences (start is strictly increasing: count the starts <= x).
    const int slot = blockIdx.x, lane = tid % 32;
    int cnt = 0;
    for (int base = 1; base < p.batch; base += 32) {
      const int i = base + lane;
      const bool le = i < p.batch && p.cu_seqlens_q[i] / kBM + i <= slot;
      const unsigned m = __ballot_sync(0xffffffffu, le);
      cnt += __popc(m);
      if (m != 0xffffffffu) break;
    }
    b = cnt;
    const int start = p.cu_seqlens_q[b] / kBM + b;
    const int nslots = p.cu_seqlens_q[b + 1] / kBM + b + 1 - start;
    const int local = slot - start;
    if (local >= nslots) return;
    // Masked problems have more work in later row blocks: start those first.
    m_block = p.has_window() ? nslots - 1 - local : local;
  } else {
    // Masked problems have more work in later row blocks: start those first.
    m_block = p.has_window() ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
    b = blockIdx.z;
  }
  const int h = blockIdx.y, hk = h / p.group();
  const int m0 = m_block * kBM;
  // This sequence's lengths (dense: seqlen_q/k); varlen grids cover the longest sequence.
  const int sq = kVar ? p.actual_seqlen_q(b) : p.seqlen_q;
  if (kVar && m0 >= sq) return;
  const int sk = kVar ? p.actual_seqlen_k(b) : p.seqlen_k;
  const int rows_q = min(kBM, sq - m0);
  const int dchunks = p.head_dim / 8;
  // Visible keys [lo, hi) of query row i of this sequence.
  auto krange = [&](int i, int* lo, int* hi) {
    if constexpr (kVar)
      p.key_range(i, sq, sk, lo, hi);
    else
      p.key_range(i, lo, hi);
  };

  T* out;
  float* lse_out;
  if constexpr (kVar) {
    out = static_cast<T*>(p.out) + p.q_offset(p.out_stride, b, m0) + h * p.out_stride.head;
    lse_out = p.softmax_lse ? p.softmax_lse + p.lse_offset(b, h, m0) : nullptr;
  } else {
    out = static_cast<T*>(p.out) + b * p.out_stride.batch + h * p.out_stride.head +
          static_cast<int64_t>(m0) * p.out_stride.row;
    lse_out =
        p.softmax_lse ? p.softmax_lse + (static_cast<int64_t>(b) * p.nheads + h) * p.seqlen_q + m0
                      : nullptr;
  }

  // Key range seen by the block (key_range's bounds are non-decreasing in the row).
  int lo_first, hi_first, lo_last, hi_last;
  krange(m0, &lo_first, &hi_first);
  krange(m0 + rows_q - 1, &lo_last, &hi_last);
  if (lo_first >= hi_last) {  // no row of this block sees a key: out = 0, lse = +inf
    for (int c = tid; c < rows_q * dchunks; c += Tr::kThreads) {
      const int r = c / dchunks, ch = c % dchunks;
      *reinterpret_cast<uint4*>(out + r * p.out_stride.row + ch * 8) = make_uint4(0, 0, 0, 0);
    }
    if (lse_out)
      for (int r = tid; r < rows_q; r += Tr::kThreads) lse_out[r] = INFINITY;
    return;
  }
  const int n_first = lo_first / BN, n_last = (hi_last - 1) / BN;
  const int n_tiles = n_last - n_first + 1;

  if (tid == 0) {
    sm90::mbar_init(full_q, 1);
    for (int s = 0; s < STAGES; ++s) {
      sm90::mbar_init(full_k(s), 1);
      sm90::mbar_init(full_v(s), 1);
      sm90::mbar_init(empty_k(s), 8);  // one arrival per consumer warp
      sm90::mbar_init(empty_v(s), 8);
    }
    sm90::mbar_init_fence();
  }
  __syncthreads();

  // setmaxnreg applies only when each warpgroup role is one branch of a single if/else.
  const int wg = tid / 128;
  if (wg == 0) {
    // ---------------- producer ----------------
    sm90::setmaxnreg_dec<40>();
    if (tid == 0) {
      // TMA row coordinates: dense (row, b); varlen rows of the packed tensor, batch 0.
      const int q_row = kVar ? p.cu_seqlens_q[b] + m0 : m0;
      const int k_row = kVar ? p.cu_seqlens_k[b] : 0;
      const int tb = kVar ? 0 : b;
      sm90::mbar_expect_tx(full_q, Tr::kQBytes);
#pragma unroll
      for (int pn = 0; pn < kPanels; ++pn)
        sm90::tma_load_4d(sQ + pn * Tr::kQPanel, &args.tq, full_q, pn * 64, q_row, h, tb);
      for (int it = 0; it < n_tiles; ++it) {
        const int s = it % STAGES;
        const uint32_t ph = (it / STAGES) & 1;
        const int n0 = k_row + (n_first + it) * BN;
        sm90::mbar_wait(empty_k(s), ph ^ 1);
        sm90::mbar_expect_tx(full_k(s), Tr::kKVBytes);
#pragma unroll
        for (int pn = 0; pn < kPanels; ++pn)
          sm90::tma_load_4d(sK0 + s * Tr::kKVBytes + pn * Tr::kKVPanel, &args.tk, full_k(s),
                            pn * 64, n0, hk, tb);
        sm90::mbar_wait(empty_v(s), ph ^ 1);
        sm90::mbar_expect_tx(full_v(s), Tr::kKVBytes);
#pragma unroll
        for (int pn = 0; pn < kPanels; ++pn)
          sm90::tma_load_4d(sV0 + s * Tr::kKVBytes + pn * Tr::kKVPanel, &args.tv, full_v(s),
                            pn * 64, n0, hk, tb);
      }
    }
  } else {
    // ---------------- consumers ----------------
    sm90::setmaxnreg_inc<232>();
    const int c = wg - 1;
    const int warp4 = (tid / 32) % 4, lane = tid % 32, g = lane / 4, t = lane % 4;
    const int row_wg = 64 * c;                    // first row of this warpgroup in the block
    const int rl0 = row_wg + 16 * warp4 + g;      // this thread's rows: rl0, rl0 + 8 (local)
    const int wg_rows = min(64, sq - (m0 + row_wg));
    // Visible keys of this warpgroup's valid rows: [wlo, whi); tiles outside are skipped.
    int wlo = 0, whi = 0, wlo_last = 0, whi_first = 0;
    if (wg_rows > 0) {
      krange(m0 + row_wg, &wlo, &whi_first);
      krange(m0 + row_wg + wg_rows - 1, &wlo_last, &whi);
    }

    const bool plain = !(p.softcap > 0.f) && p.alibi_slopes == nullptr;
    // Scores are kept in units u with z * log2(e) = u * mul: raw accumulators on the plain path
    // (one FFMA per exponential), logits z on the general path.
    const float mul = plain ? p.softmax_scale * prim::kLog2e : prim::kLog2e;
    const float slope = prim::alibi_slope(p, b, h);

    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};

    // S = Q K^T of the K tile at sK, issued and committed (not waited for).
    auto issue_s = [&](float (&sc)[BN / 2], uint32_t sK) {
      sm90::wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const uint64_t da =
            sm90::desc_sw128(sQ + (kk / 4) * Tr::kQPanel + row_wg * 128 + (kk % 4) * 32, 16, 1024);
        const uint64_t db = sm90::desc_sw128(sK + (kk / 4) * Tr::kKVPanel + (kk % 4) * 32, 16, 1024);
        sm90::wgmma_ss<T, BN>(sc, da, db, kk > 0 ? 1 : 0);
      }
      sm90::wgmma_commit();
    };
    // O += P V of the V tile at sV, issued and committed.
    auto issue_o = [&](uint32_t (&pa)[BN / 16][4], uint32_t sV) {
      sm90::wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        const uint64_t dv = sm90::desc_sw128(sV + kk * 16 * 128, Tr::kKVPanel, 1024);
        sm90::wgmma_rs<T, D>(o, pa[kk], dv, 1);
      }
      sm90::wgmma_commit();
    };
    // Logits, mask and online softmax of the scores of key tile n0 (in place: sc becomes the
    // unnormalised probabilities); corr receives the factor O must be rescaled by.
    auto softmax = [&](float (&sc)[BN / 2], int n0, float (&corr)[2]) {
      const bool full_tile = n0 >= wlo_last && n0 + BN <= whi_first;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int i = m0 + rl0 + 8 * r;
        if (!plain) {
#pragma unroll
          for (int jb = 0; jb < BN / 8; ++jb)
#pragma unroll
            for (int cc = 0; cc < 2; ++cc) {
              float th;
              const int j = n0 + 8 * jb + 2 * t + cc;
              // Varlen: ALiBi aligns with this sequence's own lengths (sk - sq).
              if constexpr (kVar)
                sc[4 * jb + 2 * r + cc] =
                    prim::logit_off(p, sc[4 * jb + 2 * r + cc], slope, i, j, sk - sq, &th);
              else
                sc[4 * jb + 2 * r + cc] = prim::logit(p, sc[4 * jb + 2 * r + cc], slope, i, j, &th);
            }
        }
        if (!full_tile) {
          int lo, hi;
          krange(i, &lo, &hi);
#pragma unroll
          for (int jb = 0; jb < BN / 8; ++jb)
#pragma unroll
            for (int cc = 0; cc < 2; ++cc) {
              const int j = n0 + 8 * jb + 2 * t + cc;
              if (j < lo || j >= hi) sc[4 * jb + 2 * r + cc] = -INFINITY;
            }
        }
        float mx = -INFINITY;
#pragma unroll
        for (int jb = 0; jb < BN / 8; ++jb)
          mx = fmaxf(mx, fmaxf(sc[4 * jb + 2 * r], sc[4 * jb + 2 * r + 1]));
        mx = prim::quad_max(mx);
        const float new_max = fmaxf(row_max[r], mx);
        // A row that has seen only masked keys keeps max -inf: use 0 so exp2 gives exact zeros.
        const float m_scaled = (new_max == -INFINITY ? 0.f : new_max) * mul;
        corr[r] = prim::fast_exp2(row_max[r] * mul - m_scaled);
        row_max[r] = new_max;
        float sum = 0.f;
#pragma unroll
        for (int jb = 0; jb < BN / 8; ++jb)
#pragma unroll
          for (int cc = 0; cc < 2; ++cc) {
            const float e = prim::fast_exp2(fmaf(sc[4 * jb + 2 * r + cc], mul, -m_scaled));
            sc[4 * jb + 2 * r + cc] = e;
            sum += e;
          }
        row_sum[r] = row_sum[r] * corr[r] + sum;
      }
    };
    auto rescale_o = [&](const float (&corr)[2]) {
#pragma unroll
      for (int db = 0; db < D / 8; ++db) {
        o[4 * db + 0] *= corr[0];
        o[4 * db + 1] *= corr[0];
        o[4 * db + 2] *= corr[1];
        o[4 * db + 3] *= corr[1];
      }
    };
    auto pack_p = [&](const float (&sc)[BN / 2], uint32_t (&pa)[BN / 16][4]) {
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        pa[kk][0] = prim::Elem<T>::pack(sc[8 * kk + 0], sc[8 * kk + 1]);
        pa[kk][1] = prim::Elem<T>::pack(sc[8 * kk + 2], sc[8 * kk + 3]);
        pa[kk][2] = prim::Elem<T>::pack(sc[8 * kk + 4], sc[8 * kk + 5]);
        pa[kk][3] = prim::Elem<T>::pack(sc[8 * kk + 6], sc[8 * kk + 7]);
      }
    };
    // Varlen: the V tile of keys n0.. (sequence-local) may hold rows past this sequence's keys
    // (the next sequence's, or ones past seqused_k) where P = 0: zero them in shared memory so
    // a non-finite value there cannot make 0 * V a NaN. Only the block's last key tile can have
    // any (key_range stops at sk), so the pipelined loop checks only that one.
    // Generic stores, then the async-proxy fence and a warpgroup barrier before wgmma reads V.
    auto clear_v_tail = [&](uint32_t sV, int n0) {
      if constexpr (kVar) {
        const int r0 = sk - n0;  // uniform over the block
        if (r0 < BN) {
          const int tl = tid - 128 * wg;
          for (int idx = tl; idx < (BN - r0) * kPanels * 8; idx += 128) {
            const int row = r0 + idx / (kPanels * 8), pn = (idx / 8) % kPanels, ch = idx % 8;
            *reinterpret_cast<uint4*>(gbase + (sV - base) + pn * Tr::kKVPanel + row * 128 + ch * 16) =
                make_uint4(0, 0, 0, 0);
          }
          sm90::fence_proxy_async();
          sm90::named_sync(1 + c, 128);
        }
      } else {
        (void)sV;
        (void)n0;
      }
    };
    auto release = [&](uint32_t bar) {
      __syncwarp();
      if (lane == 0) sm90::mbar_arrive(bar);
    };

    sm90::mbar_wait(full_q, 0);

    if constexpr (!OVERLAP) {
      // One tile at a time: S, softmax, PV, each waited for; tiles no row of this warpgroup sees
      // are skipped (still waited for and released, the pipeline is shared).
      for (int it = 0; it < n_tiles; ++it) {
        const int s = it % STAGES;
        const uint32_t ph = (it / STAGES) & 1;
        const int n0 = (n_first + it) * BN;
        const bool active = n0 < whi && n0 + BN > wlo;  // uniform over the warpgroup
        float sacc[BN / 2];
        uint32_t pa[BN / 16][4];
        sm90::mbar_wait(full_k(s), ph);
        if (active) {
          issue_s(sacc, sK0 + s * Tr::kKVBytes);
          sm90::wgmma_wait<0>();
          sm90::reg_fence(sacc);
        }
        release(empty_k(s));
        if (active) {
          float corr[2];
          softmax(sacc, n0, corr);
          rescale_o(corr);
          pack_p(sacc, pa);
        }
        sm90::mbar_wait(full_v(s), ph);
        if (active) {
          clear_v_tail(sV0 + s * Tr::kKVBytes, n0);
          issue_o(pa, sV0 + s * Tr::kKVBytes);
          sm90::wgmma_wait<0>();
          sm90::reg_fence(o);
        }
        release(empty_v(s));
      }
    } else {
      // Software-pipelined (FlashAttention-3's intra-warpgroup overlap): S(n+1) = Q K(n+1)^T and
      // O += P(n) V(n) are in flight while the softmax of S(n+1) runs; O is rescaled once the PV
      // product has landed. Every tile of the block is processed (fully masked ones give P = 0).
      if (wg_rows > 0) {
        float sacc[BN / 2];
        uint32_t pa[BN / 16][4];
        {
          float corr[2];
          sm90::mbar_wait(full_k(0), 0);
          issue_s(sacc, sK0);
          sm90::wgmma_wait<0>();
          sm90::reg_fence(sacc);
          release(empty_k(0));
          softmax(sacc, n_first * BN, corr);
          pack_p(sacc, pa);
        }
        for (int it = 1; it < n_tiles; ++it) {
          const int s = it % STAGES, sp = (it - 1) % STAGES;
          const uint32_t ph = (it / STAGES) & 1, php = ((it - 1) / STAGES) & 1;
          sm90::mbar_wait(full_k(s), ph);
          sm90::mbar_wait(full_v(sp), php);
          issue_s(sacc, sK0 + s * Tr::kKVBytes);
          issue_o(pa, sV0 + sp * Tr::kKVBytes);
          sm90::wgmma_wait<1>();  // S(it) has landed; PV(it - 1) may still run
          sm90::reg_fence(sacc);
          release(empty_k(s));
          float corr[2];
          softmax(sacc, (n_first + it) * BN, corr);
          sm90::wgmma_wait<0>();  // PV(it - 1) has landed: O and P are free
          sm90::reg_fence(o);
          sm90::reg_fence(pa);
          release(empty_v(sp));
          rescale_o(corr);
          pack_p(sacc, pa);
        }
        const int sl = (n_tiles - 1) % STAGES;
        sm90::mbar_wait(full_v(sl), ((n_tiles - 1) / STAGES) & 1);
        clear_v_tail(sV0 + sl * Tr::kKVBytes, (n_first + n_tiles - 1) * BN);
        issue_o(pa, sV0 + sl * Tr::kKVBytes);
        sm90::wgmma_wait<0>();
        sm90::reg_fence(o);
        release(empty_v(sl));
      } else {  // no valid row here: keep the shared pipeline moving
        for (int it = 0; it < n_tiles; ++it) {
          const int s = it % STAGES;
          const uint32_t ph = (it / STAGES) & 1;
          sm90::mbar_wait(full_k(s), ph);
          release(empty_k(s));
          sm90::mbar_wait(full_v(s), ph);
          release(empty_v(s));
        }
      }
    }

    // ---- epilogue: normalise, lse, stage O in this warpgroup's (dead) Q rows, 16-byte stores ----
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float l = prim::quad_sum(row_sum[r]);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int rl = rl0 + 8 * r;
#pragma unroll
      for (int db = 0; db < D / 8; ++db) {
        const int col = 8 * db + 2 * t;
        const int off = (col / 64) * Tr::kQPanel + rl * 128 + ((((col % 64) / 8) ^ (rl % 8)) * 16) +
                        (col % 8) * 2;
        *reinterpret_cast<uint32_t*>(gbase + off) =
            prim::Elem<T>::pack(o[4 * db + 2 * r] * inv, o[4 * db + 2 * r + 1] * inv);
      }
      if (lse_out && t == 0 && rl < rows_q) {
        const float m = row_max[r] == -INFINITY ? 0.f : row_max[r];
        lse_out[rl] = l > 0.f ? m * mul * prim::kLn2 + logf(l) : INFINITY;
      }
    }
    sm90::named_sync(1 + c, 128);
    const int tl = tid - 128 * wg;
#pragma unroll
    for (int k2 = 0; k2 < 64 * (D / 8) / 128; ++k2) {
      const int idx = k2 * 128 + tl;
      const int rl = row_wg + idx / (D / 8), ch = idx % (D / 8);
      if (rl < rows_q && ch < dchunks) {
        const int off = (ch / 8) * Tr::kQPanel + rl * 128 + (((ch % 8) ^ (rl % 8)) * 16);
        *reinterpret_cast<uint4*>(out + rl * p.out_stride.row + ch * 8) =
            *reinterpret_cast<const uint4*>(gbase + off);
      }
    }
  }
#endif  // FLASHPLUS_HAS_WGMMA
}

// ---- host side -------------------------------------------------------------------------------

// cuTensorMapEncodeTiled through the runtime's driver entry point (no libcuda link), once.
inline PFN_cuTensorMapEncodeTiled_v12000 encode_tiled_fn() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// Tensor map of a (batch, rows, heads, head_dim) tensor with element strides `st`, read in boxes
// of 64 columns x box_rows rows with the 128-byte swizzle; out-of-range elements read as zeros.
template <typename T>
Status make_tensor_map(CUtensorMap* map, const void* ptr, int head_dim, int rows, int heads,
                       int batch, const Strides3& st, int box_rows) {
  const auto encode = encode_tiled_fn();
  if (!encode) return Status::NoInstance("fwd_sm90: cuTensorMapEncodeTiled is not available");
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0)
    return Status::NoInstance("fwd_sm90: tensors must be 16-byte aligned");
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(rows),
                              static_cast<cuuint64_t>(heads), static_cast<cuuint64_t>(batch)};
  int64_t str[3] = {st.row, st.head, st.batch};
  int64_t extent = head_dim;  // a packed stride for dimensions of size 1 (never stepped over)
  for (int i = 0; i < 3; ++i) {
    if (dims[i + 1] == 1 && (str[i] <= 0 || str[i] % 8 != 0)) str[i] = (extent + 7) / 8 * 8;
    if (str[i] <= 0 || str[i] % 8 != 0 || str[i] * 2 >= (int64_t{1} << 40))
      return Status::NoInstance("fwd_sm90: strides must be positive multiples of 8 elements");
    extent = str[i] * static_cast<int64_t>(dims[i + 1]);
  }
  const cuuint64_t gstr[3] = {static_cast<cuuint64_t>(str[0] * 2),
                              static_cast<cuuint64_t>(str[1] * 2),
                              static_cast<cuuint64_t>(str[2] * 2)};
  const cuuint32_t box[4] = {64, static_cast<cuuint32_t>(box_rows), 1, 1};
  const cuuint32_t estr[4] = {1, 1, 1, 1};
  const CUtensorMapDataType dt = sizeof(T) == 2 && std::is_same_v<T, platform::bf16_t>
                                     ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                     : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const CUresult r = encode(map, dt, 4, const_cast<void*>(ptr), dims, gstr, box, estr,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    return Status::NoInstance("fwd_sm90: cuTensorMapEncodeTiled failed (" + std::to_string(r) + ")");
  return Status::Ok();
}

// What this family cannot take (the mma.sync family serves it). kVar: the packed varlen
// instances (cu_seqlens without block_table), which the dense instances never take.
template <bool kVar = false>
inline Status sm90_supports(const AttnParams& p) {
  if (p.is_kvcache) return Status::NoInstance("fwd_sm90: kv-cache layouts are not compiled");
  if (p.is_varlen() != kVar)
    return Status::NoInstance(kVar ? "fwd_sm90: varlen instance, dense call"
                                   : "fwd_sm90: dense instance, varlen call");
  if (kVar && (p.block_table != nullptr || p.total_k <= 0))
    return Status::NoInstance("fwd_sm90: paged varlen is not compiled");
  if (p.has_dropout()) return Status::NoInstance("fwd_sm90: dropout is not compiled");
  if (p.seqlen_k == 0) return Status::NoInstance("fwd_sm90: seqlen_k == 0");
  // Varlen lse is (nheads, total_q) by construction (lse_offset); dense must be contiguous.
  const bool lse_contiguous =
      kVar || (p.lse_batch_stride == 0 && p.lse_head_stride == 0) ||
      (p.lse_head_stride == p.seqlen_q &&
       p.lse_batch_stride == static_cast<int64_t>(p.nheads) * p.seqlen_q);
  if (!lse_contiguous) return Status::NoInstance("fwd_sm90: softmax_lse must be contiguous");
  if (reinterpret_cast<uintptr_t>(p.out) % 16 != 0 || p.out_stride.row % 8 != 0 ||
      p.out_stride.head % 8 != 0 || p.out_stride.batch % 8 != 0)
    return Status::NoInstance("fwd_sm90: out must allow 16-byte stores");
  return Status::Ok();
}

template <typename T, int D, int BN, int STAGES, bool OVERLAP, bool kVar = false>
Status launch_fwd_sm90_tile(const AttnParams& p, gpuStream_t stream) {
  using Tr = Sm90Traits<D, BN, STAGES>;
  FLASHPLUS_RETURN_IF_ERROR(sm90_supports<kVar>(p));
  if (p.seqlen_q == 0 || p.batch == 0 || p.nheads == 0) return Status::Ok();
  if (kVar && p.total_q == 0) return Status::Ok();
  Sm90Args a;
  a.p = p;
  // Varlen: maps over the packed (total, heads, d) tensors (batch 1); the kernel adds the
  // sequence's first row to the row coordinate.
  const int rows_q = kVar ? p.total_q : p.seqlen_q, rows_k = kVar ? p.total_k : p.seqlen_k;
  const int nb = kVar ? 1 : p.batch;
  FLASHPLUS_RETURN_IF_ERROR(make_tensor_map<T>(&a.tq, p.q, p.head_dim, rows_q, p.nheads, nb,
                                               p.q_stride, Tr::kBM));
  FLASHPLUS_RETURN_IF_ERROR(make_tensor_map<T>(&a.tk, p.k, p.head_dim, rows_k, p.nheads_k, nb,
                                               p.k_stride, BN));
  FLASHPLUS_RETURN_IF_ERROR(make_tensor_map<T>(&a.tv, p.v, p.head_dim, rows_k, p.nheads_k, nb,
                                               p.v_stride, BN));
  auto kernel = fwd_sm90_kernel<T, D, BN, STAGES, OVERLAP, kVar>;
  FLASHPLUS_GPU_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           Tr::kSmemBytes));
  // Varlen: total_q / kBM + batch blocks per head (see the kernel); dense: one block per row
  // block.
  const dim3 grid = kVar ? dim3(p.total_q / Tr::kBM + p.batch, p.nheads, 1)
                         : dim3((p.seqlen_q + Tr::kBM - 1) / Tr::kBM, p.nheads, p.batch);
  kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(a);
  FLASHPLUS_GPU_CHECK_LAUNCH("fwd_sm90_kernel");
  return Status::Ok();
}

// Runs the compiled tile of bucket D that `cfg` names (0 fields = the bucket's default).
// kVar: the packed varlen instance (own .cu files: fwd_sm90_var_*.cu).
template <typename T, int D, bool kVar = false>
Status launch_fwd_sm90(const AttnParams& p, const KernelConfig& cfg, gpuStream_t stream) {
  if (cfg.num_splits > 1) return Status::NoInstance("fwd_sm90: split-KV is not compiled");
  const bool is_default = cfg.block_m == 0 && cfg.block_n == 0 && cfg.num_warps == 0 &&
                          cfg.stages == 0;
  bool first = true;
#define FLASHPLUS_FWD_SM90_TRY(DD, BM, BN, ST, OV)                                              \
  if constexpr (DD == D) {                                                                  \
    if ((is_default && first) ||                                                            \
        (cfg.block_m == BM && cfg.block_n == BN && cfg.num_warps == kSm90Warps &&           \
         (cfg.stages == ST || cfg.stages == 0)))                                            \
      return launch_fwd_sm90_tile<T, DD, BN, ST, OV, kVar>(p, stream);                       \
    first = false;                                                                          \
  }
  FLASHPLUS_FWD_SM90_TILES_ALL(FLASHPLUS_FWD_SM90_TRY)
#undef FLASHPLUS_FWD_SM90_TRY
  (void)first;
  return Status::NoInstance("fwd_sm90: no compiled tile m" + std::to_string(cfg.block_m) + "n" +
                            std::to_string(cfg.block_n) + "w" + std::to_string(cfg.num_warps) +
                            "s" + std::to_string(cfg.stages) + " for head-dim bucket " +
                            std::to_string(D));
}

}  // namespace flashplus::gpu::sm90fwd
