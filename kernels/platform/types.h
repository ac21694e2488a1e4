// 16-bit floating types for device code, one name per vendor, and float conversions.
//
//   flashplus::platform::half_t  = __half (CUDA) / __half (HIP)
//   flashplus::platform::bf16_t  = __nv_bfloat16 (CUDA) / hip_bfloat16 (HIP: ROCm 5.2 has no
//                                  __hip_bfloat16 arithmetic type yet)
//
// Device code: to_float(x) and from_float<T>(f) for T in {float, half_t, bf16_t}.
// bf16 conversion works on the bits (round to nearest even, NaN kept quiet) so every vendor rounds
// exactly like the host's kernels/include/flashplus/numerics.h; half uses the vendor's
// round-to-nearest intrinsic, which is also RNE.
#pragma once
#include <cstdint>

#include "flashplus/tensor.h"
#include "platform/gpu_runtime.h"

#if FLASHPLUS_VENDOR_HIP
#include <hip/hip_bfloat16.h>
#include <hip/hip_fp16.h>
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace flashplus::platform {

#if FLASHPLUS_VENDOR_HIP
using half_t = __half;
using bf16_t = hip_bfloat16;
#else
using half_t = __half;
using bf16_t = __nv_bfloat16;
#endif
static_assert(sizeof(half_t) == 2 && sizeof(bf16_t) == 2, "16-bit storage types");

__host__ __device__ __forceinline__ float bits_to_float(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
__host__ __device__ __forceinline__ uint32_t float_to_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  return u;
}
__host__ __device__ __forceinline__ uint16_t bf16_to_bits(bf16_t x) {
  uint16_t u;
  __builtin_memcpy(&u, &x, 2);
  return u;
}
__host__ __device__ __forceinline__ bf16_t bf16_from_bits(uint16_t u) {
  bf16_t x;
  __builtin_memcpy(static_cast<void*>(&x), &u, 2);
  return x;
}
// float -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN.
__host__ __device__ __forceinline__ uint16_t float_to_bf16_bits_rne(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(half_t x) { return __half2float(x); }
__device__ __forceinline__ float to_float(bf16_t x) {
  return bits_to_float(static_cast<uint32_t>(bf16_to_bits(x)) << 16);
}

template <class T>
__device__ __forceinline__ T from_float(float f);
template <>
__device__ __forceinline__ float from_float<float>(float f) {
  return f;
}
template <>
__device__ __forceinline__ half_t from_float<half_t>(float f) {
  return __float2half_rn(f);
}
template <>
__device__ __forceinline__ bf16_t from_float<bf16_t>(float f) {
  return bf16_from_bits(float_to_bf16_bits_rne(f));
}

}  // namespace flashplus::platform
