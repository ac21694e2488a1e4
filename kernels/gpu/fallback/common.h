// Shared pieces of the portable fallback kernels (no tensor cores; plain FMA on fp32 tiles in
// shared memory). Compiled by nvcc and hipcc alike.
#pragma once
#include <cmath>
#include <cstdint>

#include "flashplus/params.h"
#include "platform/arch.h"
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

// Element offset of (b, row, head, col) for a (batch, seqlen, heads, d) tensor; 64-bit so tensors
// past 2^31 elements index correctly.
__device__ __forceinline__ int64_t offset(const Strides3& s, int b, int row, int head, int col) {
  return static_cast<int64_t>(b) * s.batch + static_cast<int64_t>(row) * s.row +
         static_cast<int64_t>(head) * s.head + col;
}

// Logit of (query i, key j) from the scaled dot product `s`: softcap, then ALiBi.
// `tanh_out` receives tanh(s / softcap) (0 when softcap is off) for the backward's derivative.
__device__ __forceinline__ float logit(const AttnParams& p, float slope, int i, int j, float s,
                                       float* tanh_out) {
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
      const long long dist = static_cast<long long>(i) + p.seqlen_k - p.seqlen_q - j;
      s -= slope * static_cast<float>(dist < 0 ? -dist : dist);
    }
  }
  return s;
}

__device__ __forceinline__ float alibi_slope(const AttnParams& p, int b, int h) {
  return p.alibi_slopes != nullptr ? p.alibi_slopes[b * p.alibi_batch_stride + h] : 0.f;
}

// Copy `rows` rows (starting at row0, clipped to `nrows`) of head `head` into an fp32 tile with
// row stride d + 1; rows past the end are zero. Consecutive threads read consecutive columns.
template <class T>
__device__ __forceinline__ void load_tile(float* tile, const T* base, const Strides3& st, int b,
                                          int row0, int rows, int nrows, int head, int d) {
  for (int e = threadIdx.x; e < rows * d; e += kThreads) {
    const int r = e / d, c = e % d;
    const int row = row0 + r;
    tile[r * (d + 1) + c] =
        row < nrows ? platform::to_float(base[offset(st, b, row, head, c)]) : 0.f;
  }
}

}  // namespace flashplus::gpu::fallback
