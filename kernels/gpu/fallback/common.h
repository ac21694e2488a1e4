// Shared pieces of the portable fallback kernels (no tensor cores; plain FMA on fp32 tiles in
// shared memory). Compiled by nvcc and hipcc alike.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "flashplus/params.h"
#include "flashplus/status.h"
#include "platform/arch.h"
#include "platform/gpu_runtime.h"
#include "platform/types.h"

namespace flashplus::gpu::fallback {

// One thread block = kThreads threads (2 warps of 64 on CDNA, 4 of 32 on NVIDIA).
inline constexpr int kThreads = 128;
// Largest head dim; per-thread accumulator arrays are sized for it (compile-time indexing only).
inline constexpr int kMaxHeadDim = 256;

// Tile shapes chosen by head dim so the fp32 tiles stay under 48 KB of static-limit shared
// memory (no opt-in attribute needed on any vendor). Rows are padded by one float (stride d + 1)
// so threads that walk different rows of a tile hit different banks.
struct FwdTile {
  int bm, bn;
};
__host__ __device__ constexpr FwdTile fwd_tile(int d) { return d <= 128 ? FwdTile{16, 32} : FwdTile{16, 16}; }
inline constexpr int kFwdBm = 16;  // the forward's bm for every head dim
// Accumulator elements per thread: bm * d / kThreads at most.
inline constexpr int kFwdAccPerThread = kFwdBm * kMaxHeadDim / kThreads;  // 32

// Backward: square tiles (bm query rows x bn key rows).
__host__ __device__ constexpr int bwd_tile(int d) { return d <= 128 ? 16 : 8; }
inline constexpr int kBwdAccPerThread = 16 * 128 / kThreads;  // = 8 * 256 / kThreads = 16
static_assert(8 * kMaxHeadDim / kThreads == kBwdAccPerThread, "bwd tile table");

// Logit of (query i, key j) from the scaled dot product `s`: softcap, then ALiBi. `off` is the
// sequence's own Sk - Sq (actual lengths: varlen and kv cache align every sequence by itself).
// `tanh_out` receives tanh(s / softcap) (0 when softcap is off) for the backward's derivative.
__device__ __forceinline__ float logit(const AttnParams& p, float slope, int i, int j, int off,
                                       float s, float* tanh_out) {
  float t = 0.f;
  if (p.softcap > 0.f) {
    t = tanhf(s / p.softcap);
    s = p.softcap * t;
  }
  *tanh_out = t;
  if (p.alibi_slopes != nullptr) {
    if (p.is_causal) {
      s += slope * static_cast<float>(j);
    } else {
      const long long dist = static_cast<long long>(i) + off - j;
      s -= slope * static_cast<float>(dist < 0 ? -dist : dist);
    }
  }
  return s;
}

__device__ __forceinline__ float alibi_slope(const AttnParams& p, int b, int h) {
  return p.alibi_slopes != nullptr ? p.alibi_slopes[b * p.alibi_batch_stride + h] : 0.f;
}

// Row addressing of one sequence through AttnParams' per-sequence helpers, so fixed-length,
// varlen (packed rows), paged varlen and kv-cache reads share every kernel. Offsets are of head 0,
// column 0; 64-bit so tensors past 2^31 elements index correctly.
struct QRows {  // q, out, dout, dq: query row i of sequence b
  const AttnParams* p;
  const Strides3* st;
  int b;
  __device__ __forceinline__ int64_t operator()(int i) const { return p->q_offset(*st, b, i); }
};
struct KRows {  // k, v, dk, dv: key j of sequence b (packed, paged or cache slot)
  const AttnParams* p;
  const Strides3* st;
  int b;
  __device__ __forceinline__ int64_t operator()(int j) const { return p->kv_offset(*st, b, j); }
};

// Copy `rows` rows (starting at row0, clipped to `nrows`) of head `head` into an fp32 tile with
// row stride d + 1; rows past the end are zero. Consecutive threads read consecutive columns.
template <class T, class Rows>
__device__ __forceinline__ void load_tile(float* tile, const T* base, const Rows& row_off,
                                          int64_t head_stride, int row0, int rows, int nrows,
                                          int head, int d) {
  for (int e = threadIdx.x; e < rows * d; e += kThreads) {
    const int r = e / d, c = e % d;
    const int row = row0 + r;
    tile[r * (d + 1) + c] =
        row < nrows ? platform::to_float(base[row_off(row) + head * head_stride + c]) : 0.f;
  }
}

// zero_tensors (varlen): every row of a (nb, rows, heads, d) tensor of strides `st` set to 0,
// including packed rows no sequence covers. One thread per element.
template <class T>
__global__ void __launch_bounds__(kThreads) zero_rows_kernel(T* base, Strides3 st, int rows,
                                                              int heads, int d, int64_t n) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= n) return;
  const int c = static_cast<int>(e % d);
  const int64_t rh = e / d;
  const int hh = static_cast<int>(rh % heads);
  const int64_t br = rh / heads;
  const int row = static_cast<int>(br % rows);
  const int64_t b = br / rows;
  base[b * st.batch + static_cast<int64_t>(row) * st.row + hh * st.head + c] =
      platform::from_float<T>(0.f);
}

template <class T>
__global__ void __launch_bounds__(kThreads) fill_kernel(T* x, int64_t n, T value) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (e < n) x[e] = value;
}

// Host side of the two kernels above (zero_tensors of fwd and bwd).
inline Status zero_tensor(DType t, void* base, const Strides3& st, int nb, int rows, int heads,
                          int d, gpuStream_t stream) {
  const int64_t n = static_cast<int64_t>(nb) * rows * heads * d;
  if (base == nullptr || n == 0) return Status::Ok();
  const dim3 grid(static_cast<unsigned>((n + kThreads - 1) / kThreads));
  switch (t) {
    case DType::f32:
      zero_rows_kernel<<<grid, kThreads, 0, stream>>>(static_cast<float*>(base), st, rows, heads, d, n);
      break;
    case DType::f16:
      zero_rows_kernel<<<grid, kThreads, 0, stream>>>(static_cast<platform::half_t*>(base), st, rows,
                                                       heads, d, n);
      break;
    case DType::bf16:
      zero_rows_kernel<<<grid, kThreads, 0, stream>>>(static_cast<platform::bf16_t*>(base), st, rows,
                                                       heads, d, n);
      break;
    default: return Status::NoInstance("zero_tensors: dtype " + std::string(dtype_name(t)));
  }
  FLASHPLUS_GPU_CHECK_LAUNCH("fallback zero_rows_kernel");
  return Status::Ok();
}

inline Status fill_f32(float* x, int64_t n, float value, gpuStream_t stream) {
  if (x == nullptr || n == 0) return Status::Ok();
  const dim3 grid(static_cast<unsigned>((n + kThreads - 1) / kThreads));
  fill_kernel<float><<<grid, kThreads, 0, stream>>>(x, n, value);
  FLASHPLUS_GPU_CHECK_LAUNCH("fallback fill_kernel");
  return Status::Ok();
}

}  // namespace flashplus::gpu::fallback
