// FlashAttention-2-style forward on AMD matrix cores (CDNA, wave64, v_mfma_f32_16x16x16{f16,
// bf16_1k}, fp32 accumulation): the HIP build's run_fwd_tc. Same semantics and AttnParams as the
// NVIDIA kernel (fwd_kernel.cuh); the layouts and every index come from primitives/mfma_layout.h,
// whose comment explains the transposed formulation:
//
//   S^T = K Q^T    A = K (LDS), B = Q^T (registers, loaded once)
//   P^T            = exp2(...) of S^T's C registers, rounded to 16 bits: already a B fragment
//   O^T += V^T P^T A = V^T (LDS tile stored transposed), C = O^T (registers)
//
// Each lane owns one query row per m16 tile in every fragment, so the online softmax's row max
// and sum take two xor shuffles and the O rescale is lane-local.
//
// One block = BM query rows of one (batch, head), NW waves. Q goes to registers once. K and V of
// key tile n+1 are loaded into registers (16-byte global loads) while tile n is computed, then
// written to LDS: K row-major, V transposed. Key tiles outside every row's visible range are never
// visited; tiles strictly inside skip the element mask. Fully masked rows: out 0, lse +inf.
#pragma once
#include "platform/gpu_runtime.h"
#if !FLASHPLUS_VENDOR_HIP
#error "fwd_kernel_mfma.h is the AMD (MFMA) path; CUDA builds use fwd_kernel.cuh"
#endif
#include <cmath>
#include <cstdint>
#include <string>

#include "flashplus/params.h"
#include "flashplus/status.h"
#include "gpu/gpu_kernels.h"
#include "platform/arch.h"
#include "platform/types.h"
#include "primitives/attn_score.h"
#include "primitives/mfma_layout.h"
#include "primitives/tile_mma.h"
#include "flashplus_gen/tiles.h"  // the tile lists, generated from kernels/registry/spec.json

namespace flashplus::gpu::tc {

// Compiled MFMA forward tiles per head-dim bucket: FLASHPLUS_FWD_MFMA_TILES_D<D>(X),
// X(D, BM, BN, NW), NW waves of 64 lanes, generated from kernels/registry/spec.json (family
// "fwd_mfma"). The first entry of each bucket is its default. Host dispatch, fwd_tc_configs and
// instantiation all read these lists. Not tuned on hardware (nothing here has run on an AMD GPU
// yet): the defaults keep LDS <= 32 KB so that two blocks can share a CU's 64 KB.

template <int D, int BM, int BN, int NW>
struct FwdMfmaTraits : prim::mfma::FwdMfmaGeom<D, BM, BN, NW> {
  static_assert(prim::mfma::fwd_mfma_live_regs<D, BM, BN, NW>() <= 320,
                "tile keeps too many registers live (512 per lane on gfx90a, minus temporaries)");
};

// Register prefetch of one K/V tile: kCopyIters 16-byte chunks of K and of V per thread; rows
// past `rows_valid` and chunks past `dchunks` (head_dim / 8) are zero, so padded keys and head-dim
// columns contribute exact zeros (V must not be garbage: 0 * NaN = NaN).
template <typename G>
__device__ __forceinline__ void load_kv_regs(prim::U32x4 (&kr)[G::kCopyIters],
                                             prim::U32x4 (&vr)[G::kCopyIters],
                                             const uint16_t* k, const uint16_t* v,
                                             int64_t k_row_stride, int64_t v_row_stride,
                                             int rows_valid, int dchunks, int tid) {
#pragma unroll
  for (int it = 0; it < G::kCopyIters; ++it) {
    const int kr_row = G::k_copy_row(tid, it), kr_ch = G::k_copy_chunk(tid, it);
    const int vr_row = G::v_copy_row(tid, it), vr_ch = G::v_copy_chunk(tid, it);
    prim::U32x4 zk = {0u, 0u, 0u, 0u}, zv = {0u, 0u, 0u, 0u};
    if (kr_row < rows_valid && kr_ch < dchunks)
      zk = *reinterpret_cast<const prim::U32x4*>(k + kr_row * k_row_stride + kr_ch * 8);
    if (vr_row < rows_valid && vr_ch < dchunks)
      zv = *reinterpret_cast<const prim::U32x4*>(v + vr_row * v_row_stride + vr_ch * 8);
    kr[it] = zk;
    vr[it] = zv;
  }
}

// Registers -> LDS: K as two 8-byte stores per chunk, V transposed (8 two-byte stores).
template <typename G>
__device__ __forceinline__ void store_kv_lds(uint16_t* sK, uint16_t* sVt,
                                             const prim::U32x4 (&kr)[G::kCopyIters],
                                             const prim::U32x4 (&vr)[G::kCopyIters], int tid) {
#pragma unroll
  for (int it = 0; it < G::kCopyIters; ++it) {
    const int krow = G::k_copy_row(tid, it), kcol = G::k_copy_chunk(tid, it) * 8;
    prim::Frag4 lo, hi;
    lo.x = kr[it].x;
    lo.y = kr[it].y;
    hi.x = kr[it].z;
    hi.y = kr[it].w;
    prim::store_frag(sK + G::k_lds(krow, kcol), lo);
    prim::store_frag(sK + G::k_lds(krow, kcol + 4), hi);
    const int vkey = G::v_copy_row(tid, it), vcol = G::v_copy_chunk(tid, it) * 8;
#pragma unroll
    for (int e = 0; e < 8; ++e)
      sVt[G::vt_lds(vcol + e, vkey)] = static_cast<uint16_t>(vr[it][e / 2] >> (16 * (e % 2)));
  }
}

template <typename T, int D, int BM, int BN, int NW>
__global__ void __launch_bounds__(NW * 64) fwd_mfma_kernel(const AttnParams p) {
#if FLASHPLUS_HAS_MFMA
  using G = FwdMfmaTraits<D, BM, BN, NW>;
  constexpr int kMT = G::kMT, kNT = G::kNT, kDT = G::kDT, kThreads = G::kThreads;
  __shared__ __attribute__((aligned(16))) uint16_t sK[G::kKElems];
  __shared__ __attribute__((aligned(16))) uint16_t sVt[G::kVtElems];

  const int tid = threadIdx.x, wave = tid / 64, lane = tid % 64;
  // Masked problems have more work in later row blocks: start those first.
  const int m_block = p.has_window() ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, hk = h / p.group();
  const int m0 = m_block * BM;
  const int rows_q = min(BM, p.seqlen_q - m0);
  const int head_dim = p.head_dim, dchunks = head_dim / 8;

  uint16_t* out = static_cast<uint16_t*>(p.out) + b * p.out_stride.batch + h * p.out_stride.head +
                  static_cast<int64_t>(m0) * p.out_stride.row;
  float* lse_out = p.softmax_lse ? p.softmax_lse + (static_cast<int64_t>(b) * p.nheads + h) *
                                                       p.seqlen_q + m0
                                 : nullptr;

  // Key range seen by the block: key_range's bounds are non-decreasing in the row.
  int lo_first, hi_first, lo_last, hi_last;
  p.key_range(m0, &lo_first, &hi_first);
  p.key_range(m0 + rows_q - 1, &lo_last, &hi_last);
  const int n_lo = lo_first, n_hi = hi_last;

  if (n_lo >= n_hi) {  // no row of this block sees a key: out = 0, lse = +inf
    const int quads = head_dim / 4;
    for (int c = tid; c < rows_q * quads; c += kThreads) {
      const int r = c / quads, q4 = c % quads;
      prim::store_frag(out + r * p.out_stride.row + q4 * 4, prim::Frag4{0u, 0u});
    }
    if (lse_out)
      for (int r = tid; r < rows_q; r += kThreads) lse_out[r] = INFINITY;
    return;
  }

  const uint16_t* q = static_cast<const uint16_t*>(p.q) + b * p.q_stride.batch +
                      h * p.q_stride.head + static_cast<int64_t>(m0) * p.q_stride.row;
  const uint16_t* k = static_cast<const uint16_t*>(p.k) + b * p.k_stride.batch + hk * p.k_stride.head;
  const uint16_t* v = static_cast<const uint16_t*>(p.v) + b * p.v_stride.batch + hk * p.v_stride.head;

  const int n_first = n_lo / BN, n_last = (n_hi - 1) / BN;

  const bool plain = !(p.softcap > 0.f) && p.alibi_slopes == nullptr;
  // Scores are kept in units u with z * log2(e) = u * mul: raw accumulators on the plain path,
  // logits z on the general path (softcap / ALiBi), as in the NVIDIA kernel.
  const float mul = plain ? p.softmax_scale * prim::kLog2e : prim::kLog2e;
  const float slope = prim::alibi_slope(p, b, h);

  // Q^T fragments (B operand of S^T = K Q^T), straight from global memory, once.
  prim::Frag4 qf[kMT][kDT];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    const int r = G::tile_row0(wave, mt) + G::q_row(lane);
#pragma unroll
    for (int kk = 0; kk < kDT; ++kk) {
      const int c = G::q_col(lane, kk);
      prim::Frag4 f = {0u, 0u};
      if (r < rows_q && c < head_dim)  // head_dim % 8 == 0: the 4 columns are all in or all out
        f = prim::load_frag(q + r * p.q_stride.row + c);
      qf[mt][kk] = f;
    }
  }

  prim::Acc4 acc_o[kMT][kDT];
  float row_max[kMT], row_sum[kMT];  // of query row tile_row0(wave, mt) + o_query(lane)
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) acc_o[mt][dt] = prim::Acc4{0.f, 0.f, 0.f, 0.f};
    row_max[mt] = -INFINITY;
    row_sum[mt] = 0.f;
  }

  prim::U32x4 kr[G::kCopyIters], vr[G::kCopyIters];
  load_kv_regs<G>(kr, vr, k + static_cast<int64_t>(n_first) * BN * p.k_stride.row,
                  v + static_cast<int64_t>(n_first) * BN * p.v_stride.row, p.k_stride.row,
                  p.v_stride.row, p.seqlen_k - n_first * BN, dchunks, tid);

  for (int nb = n_first; nb <= n_last; ++nb) {
    const int n0 = nb * BN;
    if (nb > n_first) __syncthreads();  // every wave is done with the previous tile's LDS
    store_kv_lds<G>(sK, sVt, kr, vr, tid);
    __syncthreads();
    if (nb < n_last)  // next tile's K/V travel while this one is computed
      load_kv_regs<G>(kr, vr, k + static_cast<int64_t>(n0 + BN) * p.k_stride.row,
                      v + static_cast<int64_t>(n0 + BN) * p.v_stride.row, p.k_stride.row,
                      p.v_stride.row, p.seqlen_k - n0 - BN, dchunks, tid);

    // ---- S^T = K Q^T ----
    prim::Acc4 s[kMT][kNT];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) s[mt][nt] = prim::Acc4{0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int kk = 0; kk < kDT; ++kk) {
      if (kk * 16 < head_dim) {  // padded head-dim columns are zero: skip them (uniform branch)
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          const prim::Frag4 a = prim::load_frag(sK + G::k_frag(lane, nt, kk));
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) prim::mfma16<T>(s[mt][nt], a, qf[mt][kk]);
        }
      }
    }

    // ---- logits, mask, online softmax (lane-local row, 4 keys per key tile) ----
    const bool full_tile = n0 + BN <= p.seqlen_k && n0 >= lo_last && n0 + BN <= hi_first;
    prim::Frag4 pf[kMT][kNT];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      const int i = m0 + G::tile_row0(wave, mt) + G::s_query(lane);
      if (!plain) {
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float th;
            s[mt][nt][e] = prim::logit(p, s[mt][nt][e], slope, i, n0 + G::s_key(lane, nt, e), &th);
          }
      }
      if (!full_tile) {  // boundary tile: element mask
        int lo, hi;
        p.key_range(i, &lo, &hi);
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int j = n0 + G::s_key(lane, nt, e);
            if (j < lo || j >= hi) s[mt][nt][e] = -INFINITY;
          }
      }
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
        mx = fmaxf(mx, fmaxf(fmaxf(s[mt][nt][0], s[mt][nt][1]), fmaxf(s[mt][nt][2], s[mt][nt][3])));
      mx = prim::column_max(mx);
      const float new_max = fmaxf(row_max[mt], mx);
      // A row that has seen only masked keys keeps max -inf: use 0 so exp2 gives exact zeros.
      const float m_scaled = (new_max == -INFINITY ? 0.f : new_max) * mul;
      const float corr = prim::fast_exp2(row_max[mt] * mul - m_scaled);
      row_max[mt] = new_max;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float x = prim::fast_exp2(fmaf(s[mt][nt][e], mul, -m_scaled));
          s[mt][nt][e] = x;
          sum += x;
        }
      row_sum[mt] = row_sum[mt] * corr + sum;  // this lane's keys; summed over the row at the end
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) acc_o[mt][dt] *= corr;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) pf[mt][nt] = prim::pack4<T>(s[mt][nt]);
    }

    // ---- O^T += V^T P^T ----
#pragma unroll
    for (int kk = 0; kk < kNT; ++kk)
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        if (dt * 16 < head_dim) {
          const prim::Frag4 a = prim::load_frag(sVt + G::vt_frag(lane, dt, kk));
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) prim::mfma16<T>(acc_o[mt][dt], a, pf[mt][kk]);
        }
      }
  }

  // ---- epilogue: normalise, write O (4 consecutive columns per lane: 8-byte stores) and lse ----
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    const float l = prim::column_sum(row_sum[mt]);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int r = G::tile_row0(wave, mt) + G::o_query(lane);
    if (r < rows_q) {
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        const int d = G::o_d(lane, dt, 0);
        if (d < head_dim)
          prim::store_frag(out + r * p.out_stride.row + d, prim::pack4<T>(acc_o[mt][dt] * inv));
      }
      if (lse_out && G::writes_lse(lane)) {
        const float m = row_max[mt] == -INFINITY ? 0.f : row_max[mt];
        lse_out[r] = l > 0.f ? m * mul * prim::kLn2 + logf(l) : INFINITY;
      }
    }
  }
#endif  // FLASHPLUS_HAS_MFMA
}

template <typename T, int D, int BM, int BN, int NW>
Status launch_fwd_mfma_tile(const AttnParams& p, gpuStream_t stream) {
  using G = FwdMfmaTraits<D, BM, BN, NW>;
  const dim3 grid((p.seqlen_q + BM - 1) / BM, p.nheads, p.batch);
  fwd_mfma_kernel<T, D, BM, BN, NW><<<grid, G::kThreads, 0, stream>>>(p);
  FLASHPLUS_GPU_CHECK_LAUNCH("fwd_mfma_kernel");
  return Status::Ok();
}

// Runs the compiled tile of bucket D that `cfg` names (0 fields = the bucket's default); the same
// selection rules as the NVIDIA launch_fwd.
template <typename T, int D>
Status launch_fwd_mfma(const AttnParams& p, const KernelConfig& cfg, gpuStream_t stream) {
  if (cfg.num_splits > 1 || cfg.stages > 1)
    return Status::NoInstance("fwd_tc: split-KV and multi-stage pipelines are not compiled");
  if (p.seqlen_q == 0 || p.batch == 0 || p.nheads == 0) return Status::Ok();
  bool first = true;
#define FLASHPLUS_FWD_MFMA_TRY(DD, BM, BN, NW)                                            \
  if constexpr (DD == D) {                                                                \
    if (tile_selected(cfg, BM, BN, NW, first))                                          \
      return launch_fwd_mfma_tile<T, DD, BM, BN, NW>(p, stream);                          \
    first = false;                                                                        \
  }
  FLASHPLUS_FWD_MFMA_TILES_ALL(FLASHPLUS_FWD_MFMA_TRY)
#undef FLASHPLUS_FWD_MFMA_TRY
  (void)first;
  return Status::NoInstance("fwd_tc: no compiled MFMA tile m" + std::to_string(cfg.block_m) + "n" +
                            std::to_string(cfg.block_n) + "w" + std::to_string(cfg.num_warps) +
                            " for head-dim bucket " + std::to_string(D));
}

}  // namespace flashplus::gpu::tc
