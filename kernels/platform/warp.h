// Warp-level shuffles and reductions that compile for both vendors.
//
// Every lane of the warp must call these together (CUDA uses the full mask; HIP has no masks).
// `width` (a power of two <= warp_size()) reduces within independent groups of `width` lanes, as
// the shuffle intrinsics' width argument does; the result is in every lane of the group.
#pragma once
#include "platform/arch.h"
#include "platform/gpu_runtime.h"

namespace flashplus::platform {

template <class T>
__device__ __forceinline__ T shfl_xor(T v, int lane_mask, int width = warp_size()) {
#if FLASHPLUS_VENDOR_HIP
  return __shfl_xor(v, lane_mask, width);
#else
  return __shfl_xor_sync(0xffffffffu, v, lane_mask, width);
#endif
}

template <class T>
__device__ __forceinline__ T shfl(T v, int src_lane, int width = warp_size()) {
#if FLASHPLUS_VENDOR_HIP
  return __shfl(v, src_lane, width);
#else
  return __shfl_sync(0xffffffffu, v, src_lane, width);
#endif
}

template <int Width = warp_size(), class T>
__device__ __forceinline__ T warp_reduce_sum(T v) {
  static_assert(Width > 0 && Width <= warp_size() && (Width & (Width - 1)) == 0, "width");
#pragma unroll
  for (int m = Width / 2; m > 0; m /= 2) v += shfl_xor(v, m, Width);
  return v;
}

template <int Width = warp_size(), class T>
__device__ __forceinline__ T warp_reduce_max(T v) {
  static_assert(Width > 0 && Width <= warp_size() && (Width & (Width - 1)) == 0, "width");
#pragma unroll
  for (int m = Width / 2; m > 0; m /= 2) {
    const T o = shfl_xor(v, m, Width);
    v = o > v ? o : v;
  }
  return v;
}

__device__ __forceinline__ int lane_id() { return static_cast<int>(threadIdx.x) % warp_size(); }
__device__ __forceinline__ int warp_id() { return static_cast<int>(threadIdx.x) / warp_size(); }

}  // namespace flashplus::platform
