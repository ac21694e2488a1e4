// Portable fallback backward, deterministic by construction (no atomics; every output element is
// written by exactly one thread, and sums run in a fixed order):
//   1. dot_do_o_kernel: D_i = rowsum(dout_i * out_i), one warp per row -> softmax_d or workspace.
//   2. dkdv_kernel: one block per (key tile, kv head, batch); loops over the G query heads of the
//      kv head and over the query tiles that can see the key tile; dk, dv in registers.
//   3. dq_kernel: one block per (query tile, query head, batch); loops over visible key tiles.
// Both 2 and 3 recompute P = exp(z - lse) and dS = P * (dP - D) (times the softcap derivative
// 1 - tanh^2, times softmax_scale) on a bt x bt tile in shared memory; with dropout P and dP go
// through the forward's Philox keep (philox.h). Grids cover the longest sequence; every index
// goes through AttnParams' per-sequence helpers (fixed length and varlen alike).
#include <cmath>

#include "gpu/fallback/common.h"
#include "gpu/gpu_kernels.h"
#include "platform/gpu_runtime.h"
#include "platform/warp.h"

namespace flashplus::gpu {
namespace fallback {
namespace {

template <class T>
__global__ void __launch_bounds__(kThreads) dot_do_o_kernel(const AttnParams p, float* dvec) {
  constexpr int kWarps = kThreads / platform::warp_size();
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + platform::warp_id();
  const int64_t nrows = static_cast<int64_t>(p.batch) * p.nheads * p.seqlen_q;
  if (row >= nrows) return;  // whole warp leaves together
  const int i = static_cast<int>(row % p.seqlen_q);
  const int64_t bh = row / p.seqlen_q;
  const int h = static_cast<int>(bh % p.nheads), b = static_cast<int>(bh / p.nheads);
  if (i >= p.actual_seqlen_q(b)) return;  // past this sequence's end (varlen)
  const T* dout = static_cast<const T*>(p.dout);
  const T* out = static_cast<const T*>(p.out);
  const int64_t od = p.q_offset(p.dout_stride, b, i) + h * p.dout_stride.head;
  const int64_t oo = p.q_offset(p.out_stride, b, i) + h * p.out_stride.head;
  float s = 0.f;
  for (int c = platform::lane_id(); c < p.head_dim; c += platform::warp_size())
    s += platform::to_float(dout[od + c]) * platform::to_float(out[oo + c]);
  s = platform::warp_reduce_sum(s);
  if (platform::lane_id() == 0) dvec[p.lse_offset(b, h, i)] = s;
}

// Fills sP (if non-null) and sdS ([bt][bt + 1], query row r, key column c) for query rows
// [m0, m0 + bt) (valid below m_end) and key rows [n0, n0 + bt) (valid below n_end) of sequence b,
// head h, whose actual lengths are sq, sk. With dropout, O = P_d V with P_d = P * keep / (1 - p):
// sP gets P_d (for dV) and dS = P * (dP * keep / (1 - p) - D), as the CPU backend.
__device__ __forceinline__ void p_ds_tile(const AttnParams& p, int b, int h, int sq, int sk,
                                          float slope, int bt, int m0, int m_end, int n0,
                                          int n_end, const float* sQ, const float* sdO,
                                          const float* sK, const float* sV, const float* sLse,
                                          const float* sD, float* sP, float* sdS) {
  const int d = p.head_dim;
  const bool dropout = p.has_dropout();
  for (int e = threadIdx.x; e < bt * bt; e += kThreads) {
    const int r = e / bt, c = e % bt;
    const int i = m0 + r, j = n0 + c;
    float pr = 0.f, ds = 0.f;
    if (i < m_end && j < n_end) {
      int lo, hi;
      p.key_range(i, sq, sk, &lo, &hi);
      if (j >= lo && j < hi) {
        const float* qr = sQ + r * (d + 1);
        const float* dor = sdO + r * (d + 1);
        const float* kr = sK + c * (d + 1);
        const float* vr = sV + c * (d + 1);
        float s = 0.f, dp = 0.f;
        for (int x = 0; x < d; ++x) {
          s += qr[x] * kr[x];
          dp += dor[x] * vr[x];
        }
        float t;
        const float z = logit(p, slope, i, j, sk - sq, s * p.softmax_scale, &t);
        pr = expf(z - sLse[r]);  // lse = +inf (empty row) gives 0
        if (dropout) {
          const bool keep = p.dropout_keep(b, h, i, j);
          ds = pr * ((keep ? dp * p.rp_dropout : 0.f) - sD[r]);
          pr = keep ? pr * p.rp_dropout : 0.f;
        } else {
          ds = pr * (dp - sD[r]);
        }
        if (p.softcap > 0.f) ds *= 1.f - t * t;
        ds *= p.softmax_scale;
      }
    }
    if (sP != nullptr) sP[r * (bt + 1) + c] = pr;
    sdS[r * (bt + 1) + c] = ds;
  }
}

// Rows [m0, m0 + bt) of (b, h) of softmax_lse or D (both in the lse layout); `fill` past m_end.
__device__ __forceinline__ void load_rowvec(float* dst, const float* src, const AttnParams& p,
                                            int b, int h, int m0, int m_end, int bt,
                                            float fill) {
  if (threadIdx.x < bt) {
    const int i = m0 + threadIdx.x;
    dst[threadIdx.x] = i < m_end ? src[p.lse_offset(b, h, i)] : fill;
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads) dkdv_kernel(const AttnParams p, const float* dvec) {
  const int d = p.head_dim, bt = bwd_tile(d);
  const int n0 = blockIdx.x * bt, hk = blockIdx.y, b = blockIdx.z;
  const int sq = p.actual_seqlen_q(b), sk = p.actual_seqlen_k(b);
  if (n0 >= sk) return;  // past this sequence's keys (varlen)
  const int n_end = sk;
  extern __shared__ float smem[];
  float* sK = smem;
  float* sV = sK + bt * (d + 1);
  float* sQ = sV + bt * (d + 1);
  float* sdO = sQ + bt * (d + 1);
  float* sP = sdO + bt * (d + 1);
  float* sdS = sP + bt * (bt + 1);
  float* sLse = sdS + bt * (bt + 1);
  float* sD = sLse + bt;

  const QRows qrows{&p, &p.q_stride, b}, dorows{&p, &p.dout_stride, b};
  load_tile(sK, static_cast<const T*>(p.k), KRows{&p, &p.k_stride, b}, p.k_stride.head, n0, bt,
            n_end, hk, d);
  load_tile(sV, static_cast<const T*>(p.v), KRows{&p, &p.v_stride, b}, p.v_stride.head, n0, bt,
            n_end, hk, d);
  float dk[kBwdAccPerThread], dv[kBwdAccPerThread];
#pragma unroll
  for (int t = 0; t < kBwdAccPerThread; ++t) dk[t] = dv[t] = 0.f;

  // Query rows that can see some key of [n0, n1): from the window definition
  // j - off - wr <= i <= j - off + wl with off = sk - sq.
  const int n1 = min(n0 + bt, n_end);
  long long ilo = 0, ihi = sq;
  if (p.has_window()) {
    const long long off = static_cast<long long>(sk) - sq;
    const long long a = n0 - off - p.window_right, z = (n1 - 1) - off + p.window_left + 1;
    ilo = a > ilo ? a : ilo;
    ihi = z < ihi ? z : ihi;
  }
  const int G = p.group();
  for (int g = 0; g < G; ++g) {
    const int h = hk * G + g;
    const float slope = alibi_slope(p, b, h);
    for (long long m0l = ilo; m0l < ihi; m0l += bt) {
      const int m0 = static_cast<int>(m0l), m_end = static_cast<int>(ihi);
      __syncthreads();  // previous tile's reads done (and sK/sV loaded)
      load_tile(sQ, static_cast<const T*>(p.q), qrows, p.q_stride.head, m0, bt, m_end, h, d);
      load_tile(sdO, static_cast<const T*>(p.dout), dorows, p.dout_stride.head, m0, bt, m_end, h,
                d);
      load_rowvec(sLse, p.softmax_lse, p, b, h, m0, m_end, bt, INFINITY);
      load_rowvec(sD, dvec, p, b, h, m0, m_end, bt, 0.f);
      __syncthreads();
      p_ds_tile(p, b, h, sq, sk, slope, bt, m0, m_end, n0, n_end, sQ, sdO, sK, sV, sLse, sD, sP,
                sdS);
      __syncthreads();
#pragma unroll
      for (int t = 0; t < kBwdAccPerThread; ++t) {
        const int e = threadIdx.x + t * kThreads;
        if (e < bt * d) {
          const int c = e / d, x = e % d;  // key row c, column x
          float a = dv[t], bk = dk[t];
          for (int r = 0; r < bt; ++r) {
            a += sP[r * (bt + 1) + c] * sdO[r * (d + 1) + x];
            bk += sdS[r * (bt + 1) + c] * sQ[r * (d + 1) + x];
          }
          dv[t] = a;
          dk[t] = bk;
        }
      }
    }
  }
  T* dkp = static_cast<T*>(p.dk);
  T* dvp = static_cast<T*>(p.dv);
#pragma unroll
  for (int t = 0; t < kBwdAccPerThread; ++t) {
    const int e = threadIdx.x + t * kThreads;
    if (e < bt * d) {
      const int c = e / d, x = e % d;
      if (n0 + c < n_end) {
        dkp[p.kv_offset(p.dk_stride, b, n0 + c) + hk * p.dk_stride.head + x] =
            platform::from_float<T>(dk[t]);
        dvp[p.kv_offset(p.dv_stride, b, n0 + c) + hk * p.dv_stride.head + x] =
            platform::from_float<T>(dv[t]);
      }
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads) dq_kernel(const AttnParams p, const float* dvec) {
  const int d = p.head_dim, bt = bwd_tile(d);
  const int m0 = blockIdx.x * bt, h = blockIdx.y, b = blockIdx.z;
  const int sq = p.actual_seqlen_q(b);
  if (m0 >= sq) return;  // past this sequence's queries (varlen)
  const int sk = p.actual_seqlen_k(b);
  const int hk = h / p.group();
  const int m_end = sq;
  const int rows = min(bt, m_end - m0);
  extern __shared__ float smem[];
  float* sQ = smem;
  float* sdO = sQ + bt * (d + 1);
  float* sK = sdO + bt * (d + 1);
  float* sV = sK + bt * (d + 1);
  float* sdS = sV + bt * (d + 1);
  float* sLse = sdS + bt * (bt + 1);
  float* sD = sLse + bt;

  load_tile(sQ, static_cast<const T*>(p.q), QRows{&p, &p.q_stride, b}, p.q_stride.head, m0, bt,
            m_end, h, d);
  load_tile(sdO, static_cast<const T*>(p.dout), QRows{&p, &p.dout_stride, b}, p.dout_stride.head,
            m0, bt, m_end, h, d);
  load_rowvec(sLse, p.softmax_lse, p, b, h, m0, m_end, bt, INFINITY);
  load_rowvec(sD, dvec, p, b, h, m0, m_end, bt, 0.f);
  float dq[kBwdAccPerThread];
#pragma unroll
  for (int t = 0; t < kBwdAccPerThread; ++t) dq[t] = 0.f;

  const KRows krows{&p, &p.k_stride, b}, vrows{&p, &p.v_stride, b};
  const float slope = alibi_slope(p, b, h);
  int nlo, nhi, lo_last, hi_first;
  p.key_range(m0, sq, sk, &nlo, &hi_first);
  p.key_range(m0 + rows - 1, sq, sk, &lo_last, &nhi);
  for (int n0 = nlo; n0 < nhi; n0 += bt) {
    __syncthreads();
    load_tile(sK, static_cast<const T*>(p.k), krows, p.k_stride.head, n0, bt, nhi, hk, d);
    load_tile(sV, static_cast<const T*>(p.v), vrows, p.v_stride.head, n0, bt, nhi, hk, d);
    __syncthreads();
    p_ds_tile(p, b, h, sq, sk, slope, bt, m0, m_end, n0, nhi, sQ, sdO, sK, sV, sLse, sD, nullptr,
              sdS);
    __syncthreads();
#pragma unroll
    for (int t = 0; t < kBwdAccPerThread; ++t) {
      const int e = threadIdx.x + t * kThreads;
      if (e < bt * d) {
        const int r = e / d, x = e % d;
        float a = dq[t];
        for (int c = 0; c < bt; ++c) a += sdS[r * (bt + 1) + c] * sK[c * (d + 1) + x];
        dq[t] = a;
      }
    }
  }
  T* dqp = static_cast<T*>(p.dq);
#pragma unroll
  for (int t = 0; t < kBwdAccPerThread; ++t) {
    const int e = threadIdx.x + t * kThreads;
    if (e < bt * d) {
      const int r = e / d, x = e % d;
      if (r < rows)
        dqp[p.q_offset(p.dq_stride, b, m0 + r) + h * p.dq_stride.head + x] =
            platform::from_float<T>(dq[t]);
    }
  }
}

template <class T>
Status launch_bwd(const AttnParams& p, gpuStream_t stream, float* dvec) {
  const int d = p.head_dim, bt = bwd_tile(d);
  // Grids cover the longest sequence (seqlen_q/k = max_seqlen_q/k in varlen mode); blocks past a
  // sequence's own end leave at once.
  const int64_t nrows = static_cast<int64_t>(p.batch) * p.nheads * p.seqlen_q;
  if (nrows > 0) {
    constexpr int kWarps = kThreads / platform::warp_size();
    const dim3 grid(static_cast<unsigned>((nrows + kWarps - 1) / kWarps));
    dot_do_o_kernel<T><<<grid, kThreads, 0, stream>>>(p, dvec);
    FLASHPLUS_GPU_CHECK_LAUNCH("fallback dot_do_o_kernel");
  }
  const size_t tile = static_cast<size_t>(bt) * (d + 1);
  const size_t smem = sizeof(float) * (4 * tile + 2 * bt * (bt + 1) + 2 * bt);
  if (p.seqlen_k > 0) {
    const dim3 grid((p.seqlen_k + bt - 1) / bt, p.nheads_k, p.batch);
    dkdv_kernel<T><<<grid, kThreads, smem, stream>>>(p, dvec);
    FLASHPLUS_GPU_CHECK_LAUNCH("fallback dkdv_kernel");
  }
  if (p.seqlen_q > 0) {
    const size_t smem_dq = sizeof(float) * (4 * tile + bt * (bt + 1) + 2 * bt);
    const dim3 grid((p.seqlen_q + bt - 1) / bt, p.nheads, p.batch);
    dq_kernel<T><<<grid, kThreads, smem_dq, stream>>>(p, dvec);
    FLASHPLUS_GPU_CHECK_LAUNCH("fallback dq_kernel");
  }
  return Status::Ok();
}

Status launch_bwd_dtype(const AttnParams& p, gpuStream_t stream, float* dvec) {
  switch (p.dtype) {
    case DType::f32: return launch_bwd<float>(p, stream, dvec);
    case DType::f16: return launch_bwd<platform::half_t>(p, stream, dvec);
    case DType::bf16: return launch_bwd<platform::bf16_t>(p, stream, dvec);
    default: break;
  }
  return Status::NoInstance("fallback bwd: dtype " + std::string(dtype_name(p.dtype)));
}

}  // namespace
}  // namespace fallback

Status zero_bwd_outputs(const AttnParams& p, void* stream_ptr) {
  using namespace fallback;
  const auto stream = static_cast<gpuStream_t>(stream_ptr);
  const bool packed = p.is_varlen();
  const int nb = packed ? 1 : p.batch;
  const int rq = packed ? p.total_q : p.seqlen_q, rk = packed ? p.total_k : p.seqlen_k;
  FLASHPLUS_RETURN_IF_ERROR(
      zero_tensor(p.dtype, p.dq, p.dq_stride, nb, rq, p.nheads, p.head_dim, stream));
  FLASHPLUS_RETURN_IF_ERROR(
      zero_tensor(p.dtype, p.dk, p.dk_stride, nb, rk, p.nheads_k, p.head_dim, stream));
  FLASHPLUS_RETURN_IF_ERROR(
      zero_tensor(p.dtype, p.dv, p.dv_stride, nb, rk, p.nheads_k, p.head_dim, stream));
  return fill_f32(p.softmax_d, p.lse_size(), 0.f, stream);
}

Status run_bwd_fallback(const AttnParams& p, void* stream_ptr) {
  using namespace fallback;
  if (p.head_dim < 1 || p.head_dim > kMaxHeadDim)
    return Status::NoInstance("fallback bwd: head_dim " + std::to_string(p.head_dim));
  if (p.batch == 0 || p.nheads == 0) return Status::Ok();
  const auto stream = static_cast<gpuStream_t>(stream_ptr);
  // D = rowsum(dout * out) goes to softmax_d when the caller asked for it, else to a workspace.
  float* dvec = p.softmax_d;
  float* workspace = nullptr;
  const size_t nrows = static_cast<size_t>(p.lse_size());
  if (dvec == nullptr && nrows > 0) {
    FLASHPLUS_GPU_CHECK(gpuMalloc(reinterpret_cast<void**>(&workspace), nrows * sizeof(float)));
    dvec = workspace;
  }
  const Status st = launch_bwd_dtype(p, stream, dvec);
  if (workspace != nullptr) {
    // gpuFree waits for the device, so the kernels above are done with the workspace.
    const gpuError_t e = gpuFree(workspace);
    if (st.ok() && e != gpuSuccess) return platform::gpu_status(e, "gpuFree(workspace)");
  }
  return st;
}

}  // namespace flashplus::gpu
