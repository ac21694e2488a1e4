// FlashAttention-2-style backward on AMD matrix cores (CDNA, wave64, v_mfma_f32_16x16x16{f16,
// bf16_1k}, fp32 accumulation): the HIP build's run_bwd_tc. Same semantics as the NVIDIA backward
// (bwd_kernel.cuh) except the deterministic mode, which answers no_instance (fallback). Layouts and
// every index: primitives/mfma_layout.h (BwdMfmaGeom explains which operand comes from where).
//
// Three launches:
//   1. bwd_mfma_preprocess: Dsum_i = rowsum(dO_i * O_i) (into p.softmax_d when given, else the
//      workspace), zero the fp32 dQ accumulator.
//   2. bwd_mfma_kernel: one block per (key block of BN = 16 * NW keys, kv head, batch); wave w owns
//      16 keys: their K and V rows are B fragments in registers, their dK^T and dV^T accumulate
//      in registers. The block walks (query head of the group) x (query blocks of BM rows that see
//      its keys); per step: Q, dO -> LDS (row-major and transposed), then
//        S = Q K^T -> P; dV^T += dO^T P; dP = dO V^T -> dS = P (dP - Dsum); dK^T += Q^T dS;
//        dS -> LDS; dQ += dS K (all waves, global_atomic_add_f32 into the accumulator).
//   3. bwd_mfma_convert_dq: accumulator (pre-scaled) -> dtype, any dq strides.
#pragma once
#include "platform/gpu_runtime.h"
#if !FLASHPLUS_VENDOR_HIP
#error "bwd_kernel_mfma.h is the AMD (MFMA) path; CUDA builds use bwd_kernel.cuh"
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

// Compiled MFMA backward tiles: FLASHPLUS_BWD_MFMA_TILES_D<D>(X), X(D, BN keys, BM queries,
// NW waves = BN / 16), generated from kernels/registry/spec.json (family "bwd_mfma"); first =
// default. d256 is not compiled (as on NVIDIA): its LDS tiles exceed 64 KB with this layout.

// ---- 1. Dsum = rowsum(dO * O); zero the dQ accumulator (one wave per row) ----------------------
template <typename T, int D>
__global__ void __launch_bounds__(256) bwd_mfma_preprocess(const AttnParams p, float* dsum,
                                                           float* dq_accum) {
  const int wave = threadIdx.x / 64, lane = threadIdx.x % 64;
  const int i = blockIdx.x * 4 + wave, h = blockIdx.y, b = blockIdx.z;
  if (i >= p.seqlen_q) return;
  const int64_t row = (static_cast<int64_t>(b) * p.nheads + h) * p.seqlen_q + i;
  if (dq_accum)
    for (int x = lane; x < D; x += 64) dq_accum[row * D + x] = 0.f;
  const uint16_t* o = static_cast<const uint16_t*>(p.out) + b * p.out_stride.batch +
                      h * p.out_stride.head + static_cast<int64_t>(i) * p.out_stride.row;
  const uint16_t* dout = static_cast<const uint16_t*>(p.dout) + b * p.dout_stride.batch +
                         h * p.dout_stride.head + static_cast<int64_t>(i) * p.dout_stride.row;
  float s = 0.f;
  for (int x = lane; x < p.head_dim; x += 64)
    s += prim::Elem<T>::to_float(o[x]) * prim::Elem<T>::to_float(dout[x]);
  s = prim::wave_sum(s);
  if (lane == 0) {
    dsum[row] = s;
    if (p.softmax_d && p.softmax_d != dsum) p.softmax_d[row] = s;
  }
}

// ---- 3. dQ accumulator -> dtype ----------------------------------------------------------------
template <typename T, int D>
__global__ void __launch_bounds__(256) bwd_mfma_convert_dq(const AttnParams p, const float* dq_accum) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // element
  const int64_t rows = static_cast<int64_t>(p.batch) * p.nheads * p.seqlen_q;
  if (c >= rows * p.head_dim) return;
  const int64_t row = c / p.head_dim;
  const int d = static_cast<int>(c % p.head_dim);
  const int i = static_cast<int>(row % p.seqlen_q);
  const int h = static_cast<int>((row / p.seqlen_q) % p.nheads);
  const int b = static_cast<int>(row / (static_cast<int64_t>(p.seqlen_q) * p.nheads));
  uint16_t* dq = static_cast<uint16_t*>(p.dq) + b * p.dq_stride.batch + h * p.dq_stride.head +
                 static_cast<int64_t>(i) * p.dq_stride.row + d;
  *dq = prim::Elem<T>::bits(dq_accum[row * D + d]);
}

// ---- 2. main kernel ------------------------------------------------------------------------------
template <typename T, int D, int BN, int BM, int NW>
__global__ void __launch_bounds__(NW * 64)
    bwd_mfma_kernel(const AttnParams p, const float* __restrict__ dsum, float* dq_accum) {
#if FLASHPLUS_HAS_MFMA
  using G = prim::mfma::BwdMfmaGeom<D, BN, BM, NW>;
  constexpr int kQT = G::kQT, kDT = G::kDT, kKT = G::kKT, kThreads = G::kThreads;
  __shared__ __attribute__((aligned(16))) uint16_t sQ[G::kRowElems];
  __shared__ __attribute__((aligned(16))) uint16_t sdO[G::kRowElems];
  __shared__ __attribute__((aligned(16))) uint16_t sQt[G::kTElems];
  __shared__ __attribute__((aligned(16))) uint16_t sdOt[G::kTElems];
  __shared__ __attribute__((aligned(16))) uint16_t sdS[G::kDsElems];
  __shared__ __attribute__((aligned(16))) uint16_t sKt[G::kKtElems];
  __shared__ float sLse[BM], sDs[BM];  // lse * log2(e), Dsum of the step's rows

  const int tid = threadIdx.x, wave = tid / 64, lane = tid % 64;
  const int n_block = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int group = p.group();
  const int n0 = n_block * BN;
  const int rows_k = min(BN, p.seqlen_k - n0);
  const int head_dim = p.head_dim, dchunks = head_dim / 8;

  uint16_t* dk_out = static_cast<uint16_t*>(p.dk) + b * p.dk_stride.batch +
                     hk * p.dk_stride.head + static_cast<int64_t>(n0) * p.dk_stride.row;
  uint16_t* dv_out = static_cast<uint16_t*>(p.dv) + b * p.dv_stride.batch +
                     hk * p.dv_stride.head + static_cast<int64_t>(n0) * p.dv_stride.row;

  // Query rows that see any key of this block (API.md §2.3, solved for i).
  int i_min, i_max;
  p.query_range(n0, n0 + rows_k, &i_min, &i_max);
  if (i_min > i_max) {  // no query sees these keys: dK = dV = 0
    const int quads = head_dim / 4;
    for (int c = tid; c < rows_k * quads; c += kThreads) {
      const int r = c / quads, q4 = c % quads;
      prim::store_frag(dk_out + r * p.dk_stride.row + q4 * 4, prim::Frag4{0u, 0u});
      prim::store_frag(dv_out + r * p.dv_stride.row + q4 * 4, prim::Frag4{0u, 0u});
    }
    return;
  }
  const int m_first = i_min / BM, m_count = i_max / BM - m_first + 1;
  const int n_iters = group * m_count;  // (query head, query block) pairs, flattened

  const uint16_t* kg = static_cast<const uint16_t*>(p.k) + b * p.k_stride.batch +
                       hk * p.k_stride.head + static_cast<int64_t>(n0) * p.k_stride.row;
  const uint16_t* vg = static_cast<const uint16_t*>(p.v) + b * p.v_stride.batch +
                       hk * p.v_stride.head + static_cast<int64_t>(n0) * p.v_stride.row;

  // This wave's K and V rows as B fragments (K^T, V^T of S = Q K^T and dP = dO V^T).
  prim::Frag4 kf[kDT], vf[kDT];
  {
    const int r = wave * 16 + G::kv_row(lane);
#pragma unroll
    for (int kk = 0; kk < kDT; ++kk) {
      const int c = G::kv_col(lane, kk);
      const bool ok = r < rows_k && c < head_dim;
      kf[kk] = ok ? prim::load_frag(kg + r * p.k_stride.row + c) : prim::Frag4{0u, 0u};
      vf[kk] = ok ? prim::load_frag(vg + r * p.v_stride.row + c) : prim::Frag4{0u, 0u};
    }
  }
  // K^T tile of the whole block for dQ = dS K (zero past seqlen_k and head_dim).
  for (int c = tid; c < BN * G::kChunks; c += kThreads) {
    const int key = G::kt_copy_key(c), ch = G::kt_copy_chunk(c);
    prim::U32x4 x = {0u, 0u, 0u, 0u};
    if (key < rows_k && ch < dchunks)
      x = *reinterpret_cast<const prim::U32x4*>(kg + key * p.k_stride.row + ch * 8);
#pragma unroll
    for (int e = 0; e < 8; ++e)
      sKt[G::kt_lds(ch * 8 + e, key)] = static_cast<uint16_t>(x[e / 2] >> (16 * (e % 2)));
  }

  prim::Acc4 acc_dk[kDT], acc_dv[kDT];  // dK^T, dV^T of the wave's 16 keys
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt) acc_dk[dt] = acc_dv[dt] = prim::Acc4{0.f, 0.f, 0.f, 0.f};

  const bool plain = !(p.softcap > 0.f) && p.alibi_slopes == nullptr;
  const bool cap = p.softcap > 0.f;
  const float scale_log2 = p.softmax_scale * prim::kLog2e;
  const int j = n0 + wave * 16 + G::sc_key(lane);  // this lane's key in S, dP, dS

  for (int it = 0; it < n_iters; ++it) {
    const int hq = hk * group + it / m_count;
    const int m0 = (m_first + it % m_count) * BM;
    const int rows_q = min(BM, p.seqlen_q - m0);
    __syncthreads();  // every wave is done with the previous step's LDS (and sKt is written)
    {
      const uint16_t* qg = static_cast<const uint16_t*>(p.q) + b * p.q_stride.batch +
                           hq * p.q_stride.head + static_cast<int64_t>(m0) * p.q_stride.row;
      const uint16_t* dog = static_cast<const uint16_t*>(p.dout) + b * p.dout_stride.batch +
                            hq * p.dout_stride.head + static_cast<int64_t>(m0) * p.dout_stride.row;
      for (int c = tid; c < BM * G::kChunks; c += kThreads) {
        const int r = G::q_copy_row(c), ch = G::q_copy_chunk(c);
        prim::U32x4 xq = {0u, 0u, 0u, 0u}, xd = {0u, 0u, 0u, 0u};
        if (r < rows_q && ch < dchunks) {
          xq = *reinterpret_cast<const prim::U32x4*>(qg + r * p.q_stride.row + ch * 8);
          xd = *reinterpret_cast<const prim::U32x4*>(dog + r * p.dout_stride.row + ch * 8);
        }
        prim::store_frag(sQ + G::row_lds(r, ch * 8), prim::Frag4{xq.x, xq.y});
        prim::store_frag(sQ + G::row_lds(r, ch * 8 + 4), prim::Frag4{xq.z, xq.w});
        prim::store_frag(sdO + G::row_lds(r, ch * 8), prim::Frag4{xd.x, xd.y});
        prim::store_frag(sdO + G::row_lds(r, ch * 8 + 4), prim::Frag4{xd.z, xd.w});
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          sQt[G::t_lds(ch * 8 + e, r)] = static_cast<uint16_t>(xq[e / 2] >> (16 * (e % 2)));
          sdOt[G::t_lds(ch * 8 + e, r)] = static_cast<uint16_t>(xd[e / 2] >> (16 * (e % 2)));
        }
      }
      const int64_t row0 = (static_cast<int64_t>(b) * p.nheads + hq) * p.seqlen_q + m0;
      for (int r = tid; r < BM; r += kThreads) {
        // Rows past seqlen_q: lse = +inf makes P = 0 there, so they contribute nothing.
        sLse[r] = r < rows_q ? p.softmax_lse[row0 + r] * prim::kLog2e : INFINITY;
        sDs[r] = r < rows_q ? dsum[row0 + r] : 0.f;
      }
    }
    __syncthreads();

    const int q_last = m0 + rows_q - 1;
    bool full_tile = n0 + BN <= p.seqlen_k;
    if (p.has_window()) {
      int lo_a, hi_a, lo_b, hi_b;
      p.key_range(m0, &lo_a, &hi_a);
      p.key_range(q_last, &lo_b, &hi_b);
      full_tile = full_tile && lo_b <= n0 && hi_a >= n0 + BN;
    }
    const float slope = prim::alibi_slope(p, b, hq);

    // ---- S = Q K^T -> P (fp32 for dS, 16-bit B fragments for dV), Pc = P (1 - tanh^2) ----
    prim::Acc4 pc[kQT];
    prim::Frag4 pf[kQT];
#pragma unroll
    for (int qt = 0; qt < kQT; ++qt) {
      prim::Acc4 s = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int kk = 0; kk < kDT; ++kk)
        if (kk * 16 < head_dim)
          prim::mfma16<T>(s, prim::load_frag(sQ + G::row_frag(lane, qt, kk)), kf[kk]);
      prim::Acc4 pv;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int ql = qt * 16 + G::sc_query(lane, e), i = m0 + ql;
        float x, c;
        if (plain) {
          x = prim::fast_exp2(fmaf(s[e], scale_log2, -sLse[ql]));
          c = x;
        } else {
          float th;
          const float z = prim::logit(p, s[e], slope, i, j, &th);
          x = prim::fast_exp2(fmaf(z, prim::kLog2e, -sLse[ql]));
          c = cap ? x * (1.f - th * th) : x;
        }
        if (!full_tile) {
          int lo, hi;
          p.key_range(i, &lo, &hi);
          if (j < lo || j >= hi) x = c = 0.f;
        }
        pv[e] = x;
        pc[qt][e] = c;
      }
      pf[qt] = prim::pack4<T>(pv);
    }

    // ---- dV^T += dO^T P ----
#pragma unroll
    for (int qt = 0; qt < kQT; ++qt)
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt)
        if (dt * 16 < head_dim)
          prim::mfma16<T>(acc_dv[dt], prim::load_frag(sdOt + G::t_frag(lane, dt, qt)), pf[qt]);

    // ---- dP = dO V^T -> dS = Pc (dP - Dsum); dK^T += Q^T dS; dS -> LDS ----
#pragma unroll
    for (int qt = 0; qt < kQT; ++qt) {
      prim::Acc4 dp = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int kk = 0; kk < kDT; ++kk)
        if (kk * 16 < head_dim)
          prim::mfma16<T>(dp, prim::load_frag(sdO + G::row_frag(lane, qt, kk)), vf[kk]);
#pragma unroll
      for (int e = 0; e < 4; ++e) dp[e] = pc[qt][e] * (dp[e] - sDs[qt * 16 + G::sc_query(lane, e)]);
      const prim::Frag4 dsf = prim::pack4<T>(dp);
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt)
        if (dt * 16 < head_dim)
          prim::mfma16<T>(acc_dk[dt], prim::load_frag(sQt + G::t_frag(lane, dt, qt)), dsf);
#pragma unroll
      for (int e = 0; e < 4; ++e)
        sdS[G::ds_lds(qt * 16 + G::sc_query(lane, e), wave * 16 + G::sc_key(lane))] =
            static_cast<uint16_t>(dsf[e / 2] >> (16 * (e % 2)));
    }
    if (dq_accum == nullptr) continue;
    __syncthreads();

    // ---- dQ += dS K (scaled), fp32 atomics ----
    float* dqa = dq_accum + ((static_cast<int64_t>(b) * p.nheads + hq) * p.seqlen_q + m0) * D;
#pragma unroll
    for (int x = 0; x < G::kDqTiles; ++x) {
      const int qt = G::dq_qt(wave, x), dt = G::dq_dt(wave, x);
      if (dt * 16 >= head_dim) continue;
      prim::Acc4 acc = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int kk = 0; kk < kKT; ++kk)
        prim::mfma16<T>(acc, prim::load_frag(sdS + G::ds_frag(lane, qt, kk)),
                        prim::load_frag(sKt + G::kt_frag(lane, dt, kk)));
      const int d = dt * 16 + G::dq_d(lane);
      if (d < head_dim)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int ql = qt * 16 + G::dq_query(lane, e);
          // The accumulator is our hipMalloc workspace (coarse-grained memory), where gfx90a's
          // global_atomic_add_f32 is valid; atomicAdd would be a compare-and-swap loop.
          if (ql < rows_q)
            unsafeAtomicAdd(dqa + static_cast<int64_t>(ql) * D + d, acc[e] * p.softmax_scale);
        }
    }
  }

  // ---- epilogue: dK (scaled), dV; 4 consecutive columns per lane ----
  const int kr = wave * 16 + G::acc_key(lane);
  if (kr < rows_k) {
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
      const int d = G::acc_d(lane, dt, 0);
      if (d < head_dim) {
        prim::store_frag(dk_out + kr * p.dk_stride.row + d, prim::pack4<T>(acc_dk[dt] * p.softmax_scale));
        prim::store_frag(dv_out + kr * p.dv_stride.row + d, prim::pack4<T>(acc_dv[dt]));
      }
    }
  }
#endif  // FLASHPLUS_HAS_MFMA
}

template <typename T, int D, int BN, int BM, int NW>
Status launch_bwd_mfma_tile(const AttnParams& p, gpuStream_t stream) {
  const int64_t rows = static_cast<int64_t>(p.batch) * p.nheads * p.seqlen_q;
  // Workspace: fp32 dQ accumulator (rows x D) and Dsum (rows) unless p.softmax_d holds it.
  // hipMalloc/hipFree rather than the stream-ordered pair, which ROCm 5.2 still calls beta.
  float* ws = nullptr;
  const size_t ws_bytes = (rows * D + (p.softmax_d ? 0 : rows)) * sizeof(float);
  FLASHPLUS_GPU_CHECK(hipMalloc(reinterpret_cast<void**>(&ws), ws_bytes));
  float* dq_accum = ws;
  float* dsum = p.softmax_d ? p.softmax_d : ws + rows * D;
  auto fail = [&](hipError_t e, const char* what) {
    (void)hipFree(ws);
    return platform::gpu_status(e, what);
  };
  {
    const dim3 grid((p.seqlen_q + 3) / 4, p.nheads, p.batch);
    bwd_mfma_preprocess<T, D><<<grid, 256, 0, stream>>>(p, dsum, dq_accum);
    const hipError_t e = hipGetLastError();
    if (e != hipSuccess) return fail(e, "launch of bwd_mfma_preprocess");
  }
  {
    const dim3 grid((p.seqlen_k + BN - 1) / BN, p.nheads_k, p.batch);
    bwd_mfma_kernel<T, D, BN, BM, NW><<<grid, NW * 64, 0, stream>>>(p, dsum, dq_accum);
    const hipError_t e = hipGetLastError();
    if (e != hipSuccess) return fail(e, "launch of bwd_mfma_kernel");
  }
  {
    const int64_t elems = rows * p.head_dim;
    bwd_mfma_convert_dq<T, D><<<static_cast<unsigned>((elems + 255) / 256), 256, 0, stream>>>(p, dq_accum);
    const hipError_t e = hipGetLastError();
    if (e != hipSuccess) return fail(e, "launch of bwd_mfma_convert_dq");
  }
  // hipFree waits for the device: the kernels above are done with the workspace before it goes.
  FLASHPLUS_GPU_CHECK(hipFree(ws));
  return Status::Ok();
}

template <typename T, int D>
Status launch_bwd_mfma(const AttnParams& p, const KernelConfig& cfg, gpuStream_t stream) {
  if (cfg.num_splits > 1 || cfg.stages > 2)
    return Status::NoInstance("bwd_tc: no such pipeline compiled");
  if (p.batch == 0 || p.nheads == 0 || p.seqlen_k == 0 || p.seqlen_q == 0)
    return Status::NoInstance("bwd_tc: empty problem (left to the fallback)");
  if (p.deterministic)
    return Status::NoInstance("bwd_tc: the MFMA backward has no deterministic mode (fallback)");
  bool first = true;
  // KernelConfig for the backward: block_n = keys per block, block_m = queries per step.
#define FLASHPLUS_BWD_MFMA_TRY(DD, BN, BM, NW)                                            \
  if constexpr (DD == D) {                                                                \
    if (tile_selected(cfg, BM, BN, NW, first))                                          \
      return launch_bwd_mfma_tile<T, DD, BN, BM, NW>(p, stream);                          \
    first = false;                                                                        \
  }
  FLASHPLUS_BWD_MFMA_TILES_ALL(FLASHPLUS_BWD_MFMA_TRY)
#undef FLASHPLUS_BWD_MFMA_TRY
  (void)first;
  (void)p;
  (void)stream;
  return Status::NoInstance("bwd_tc: no compiled MFMA tile m" + std::to_string(cfg.block_m) + "n" +
                            std::to_string(cfg.block_n) + "w" + std::to_string(cfg.num_warps) +
                            " for head-dim bucket " + std::to_string(D));
}

}  // namespace flashplus::gpu::tc
