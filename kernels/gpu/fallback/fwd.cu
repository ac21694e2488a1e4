// Portable fallback forward: one thread block per (query tile of kFwdBm rows, head, batch).
// Q tile, one K/V tile and the score tile live in shared memory as fp32; the output accumulator
// lives in registers (kFwdAccPerThread per thread, compile-time indexed); the running row max and
// row sum (online softmax) in shared memory. K and V reuse one buffer: V is loaded while the row
// softmax runs on the score tile.
// Every geometry goes through AttnParams' per-sequence helpers: fixed length, varlen (packed rows,
// seqused_k, zero-length sequences, lse (nheads, total_q)), paged varlen (block_table) and kv-cache
// reads (cache slots from leftpad, actual_seqlen_k(b)). Dropout (the Philox keep of philox.h, as
// the CPU backend) zeroes dropped probabilities after the row sum, so lse is taken before dropout.
#include <cmath>

#include "gpu/fallback/common.h"
#include "gpu/gpu_kernels.h"
#include "platform/gpu_runtime.h"

namespace flashplus::gpu {
namespace fallback {
namespace {

template <class T, int BN>
__global__ void __launch_bounds__(kThreads) fwd_kernel(const AttnParams p) {
  constexpr int BM = kFwdBm;
  const int d = p.head_dim;
  const int m0 = blockIdx.x * BM, h = blockIdx.y, b = blockIdx.z;
  // The sequence's own lengths (varlen: from cu_seqlens / seqused_k; kv cache: cache_seqlens);
  // the grid covers the longest sequence, so blocks past this one's end leave at once.
  const int sq = p.actual_seqlen_q(b);
  if (m0 >= sq) return;
  const int sk = p.actual_seqlen_k(b);
  const int off = sk - sq;
  const int hk = h / p.group();
  const int rows = min(BM, sq - m0);

  extern __shared__ float smem[];
  float* sQ = smem;                    // [BM][d + 1]
  float* sKV = sQ + BM * (d + 1);      // [BN][d + 1]: K, then V
  float* sS = sKV + BN * (d + 1);      // [BM][BN + 1]: logits, then probabilities
  float* sM = sS + BM * (BN + 1);      // [BM] running max
  float* sL = sM + BM;                 // [BM] running sum
  float* sA = sL + BM;                 // [BM] rescale factor of this step

  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const QRows qrows{&p, &p.q_stride, b};
  const KRows krows{&p, &p.k_stride, b}, vrows{&p, &p.v_stride, b};
  load_tile(sQ, q, qrows, p.q_stride.head, m0, BM, sq, h, d);
  if (threadIdx.x < BM) {
    sM[threadIdx.x] = -INFINITY;
    sL[threadIdx.x] = 0.f;
  }
  float acc[kFwdAccPerThread];
#pragma unroll
  for (int t = 0; t < kFwdAccPerThread; ++t) acc[t] = 0.f;

  const float slope = alibi_slope(p, b, h);
  const bool dropout = p.has_dropout();
  // Keys any row of this tile may see: key_range's bounds are non-decreasing in the row.
  int nlo, nhi, lo_last, hi_first;
  p.key_range(m0, sq, sk, &nlo, &hi_first);
  p.key_range(m0 + rows - 1, sq, sk, &lo_last, &nhi);

  for (int n0 = nlo; n0 < nhi; n0 += BN) {
    __syncthreads();  // the previous step's reads of sKV / sS are done (and sQ is loaded)
    load_tile(sKV, k, krows, p.k_stride.head, n0, BN, nhi, hk, d);
    __syncthreads();
    for (int e = threadIdx.x; e < BM * BN; e += kThreads) {
      const int r = e / BN, c = e % BN;
      const int i = m0 + r, j = n0 + c;
      float z = -INFINITY;
      if (r < rows) {
        int lo, hi;
        p.key_range(i, sq, sk, &lo, &hi);
        if (j >= lo && j < hi) {
          const float* qr = sQ + r * (d + 1);
          const float* kr = sKV + c * (d + 1);
          float s = 0.f;
          for (int x = 0; x < d; ++x) s += qr[x] * kr[x];
          float t;
          z = logit(p, slope, i, j, off, s * p.softmax_scale, &t);
        }
      }
      sS[r * (BN + 1) + c] = z;
    }
    __syncthreads();
    load_tile(sKV, v, vrows, p.v_stride.head, n0, BN, nhi, hk, d);
    if (threadIdx.x < BM) {
      float* srow = sS + threadIdx.x * (BN + 1);
      const float m_old = sM[threadIdx.x];
      float mx = m_old;
      for (int c = 0; c < BN; ++c) mx = fmaxf(mx, srow[c]);
      // Nothing visible yet: keep everything at zero (exp(-inf - -inf) would be NaN).
      const bool none = mx == -INFINITY;
      const float alpha = none ? 1.f : expf(m_old - mx);
      float sum = 0.f;
      for (int c = 0; c < BN; ++c) {
        const float pr = none ? 0.f : expf(srow[c] - mx);
        srow[c] = pr;
        sum += pr;
      }
      sL[threadIdx.x] = sL[threadIdx.x] * alpha + sum;
      sM[threadIdx.x] = mx;
      sA[threadIdx.x] = alpha;
    }
    if (dropout) {  // the sum (and lse) above is before dropout; P V sees the kept entries only
      __syncthreads();
      for (int e = threadIdx.x; e < rows * BN; e += kThreads) {
        const int r = e / BN, c = e % BN;
        float* pr = sS + r * (BN + 1) + c;
        if (*pr != 0.f && !p.dropout_keep(b, h, m0 + r, n0 + c)) *pr = 0.f;
      }
    }
    __syncthreads();
#pragma unroll
    for (int t = 0; t < kFwdAccPerThread; ++t) {
      const int e = threadIdx.x + t * kThreads;
      if (e < BM * d) {
        const int r = e / d, c = e % d;
        const float* prow = sS + r * (BN + 1);
        float a = acc[t] * sA[r];
        for (int cc = 0; cc < BN; ++cc) a += prow[cc] * sKV[cc * (d + 1) + c];
        acc[t] = a;
      }
    }
  }
  __syncthreads();

  T* out = static_cast<T*>(p.out);
  const float keep_scale = dropout ? p.rp_dropout : 1.f;  // kept probabilities / (1 - p), once
#pragma unroll
  for (int t = 0; t < kFwdAccPerThread; ++t) {
    const int e = threadIdx.x + t * kThreads;
    if (e < BM * d) {
      const int r = e / d, c = e % d;
      if (r < rows) {
        const float l = sL[r];
        const float o = l > 0.f ? acc[t] * keep_scale / l : 0.f;
        out[p.q_offset(p.out_stride, b, m0 + r) + h * p.out_stride.head + c] =
            platform::from_float<T>(o);
      }
    }
  }
  if (threadIdx.x < rows && p.softmax_lse != nullptr) {
    const float l = sL[threadIdx.x];
    p.softmax_lse[p.lse_offset(b, h, m0 + threadIdx.x)] =
        l > 0.f ? sM[threadIdx.x] + logf(l) : INFINITY;
  }
}

template <class T, int BN>
Status launch_fwd(const AttnParams& p, gpuStream_t stream) {
  const int d = p.head_dim;
  const size_t smem =
      sizeof(float) * (kFwdBm * (d + 1) + BN * (d + 1) + kFwdBm * (BN + 1) + 3 * kFwdBm);
  const dim3 grid((p.seqlen_q + kFwdBm - 1) / kFwdBm, p.nheads, p.batch);
  fwd_kernel<T, BN><<<grid, kThreads, smem, stream>>>(p);
  FLASHPLUS_GPU_CHECK_LAUNCH("fallback fwd_kernel");
  return Status::Ok();
}

}  // namespace
}  // namespace fallback

Status zero_fwd_outputs(const AttnParams& p, void* stream_ptr) {
  using namespace fallback;
  const auto stream = static_cast<gpuStream_t>(stream_ptr);
  const bool packed = p.is_varlen();
  FLASHPLUS_RETURN_IF_ERROR(zero_tensor(p.dtype, p.out, p.out_stride, packed ? 1 : p.batch,
                                        packed ? p.total_q : p.seqlen_q, p.nheads, p.head_dim,
                                        stream));
  return fill_f32(p.softmax_lse, p.lse_size(), -INFINITY, stream);
}

Status run_fwd_fallback(const AttnParams& p, void* stream_ptr) {
  using namespace fallback;
  if (p.head_dim < 1 || p.head_dim > kMaxHeadDim)
    return Status::NoInstance("fallback fwd: head_dim " + std::to_string(p.head_dim));
  if (p.batch == 0 || p.nheads == 0 || p.seqlen_q == 0) return Status::Ok();
  const auto stream = static_cast<gpuStream_t>(stream_ptr);
  const int bn = fwd_tile(p.head_dim).bn;
  switch (p.dtype) {
    case DType::f32:
      return bn == 32 ? launch_fwd<float, 32>(p, stream) : launch_fwd<float, 16>(p, stream);
    case DType::f16:
      return bn == 32 ? launch_fwd<platform::half_t, 32>(p, stream)
                      : launch_fwd<platform::half_t, 16>(p, stream);
    case DType::bf16:
      return bn == 32 ? launch_fwd<platform::bf16_t, 32>(p, stream)
                      : launch_fwd<platform::bf16_t, 16>(p, stream);
    default: break;
  }
  return Status::NoInstance("fallback fwd: dtype " + std::string(dtype_name(p.dtype)));
}

}  // namespace flashplus::gpu
