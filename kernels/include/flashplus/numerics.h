// Host-side conversions between fp32 and the 16-bit storage types (round to nearest even),
// and element access by run-time dtype. Used by the CPU backend, the reference, the CLI and
// tests, so there is one definition of rounding.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "flashplus/tensor.h"

namespace flashplus {

inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_bits_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t float_to_half_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u); // overflow -> inf
  if (ax < 0x38800000u) {  // subnormal or zero in half: round ax * 2^24 to an integer
    float a;
    std::memcpy(&a, &ax, 4);
    const float scaled = a * 16777216.0f;  // exact: power of two
    const uint32_t m = static_cast<uint32_t>(std::nearbyint(scaled));  // ties to even
    return static_cast<uint16_t>(sign | m);
  }
  // normal: rebias exponent, round mantissa 23 -> 10 bits to nearest even
  uint32_t m = ax + 0xfffu + ((ax >> 13) & 1u);
  m -= (112u << 23);
  return static_cast<uint16_t>(sign | (m >> 13));
}
inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal
      float f = std::ldexp(static_cast<float>(man), -24);
      std::memcpy(&u, &f, 4);
      u |= sign;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 112u) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round a float to the nearest value representable in `t` (identity for fp32).
inline float round_to(DType t, float x) {
  switch (t) {
    case DType::f16: return half_bits_to_float(float_to_half_bits(x));
    case DType::bf16: return bf16_bits_to_float(float_to_bf16_bits(x));
    default: return x;
  }
}

// Element i of a buffer of floating dtype `t`, as float.
inline float load_float(const void* base, DType t, int64_t i) {
  switch (t) {
    case DType::f32: return static_cast<const float*>(base)[i];
    case DType::f16: return half_bits_to_float(static_cast<const uint16_t*>(base)[i]);
    case DType::bf16: return bf16_bits_to_float(static_cast<const uint16_t*>(base)[i]);
    case DType::i32: return static_cast<float>(static_cast<const int32_t*>(base)[i]);
  }
  return 0.f;
}
inline void store_float(void* base, DType t, int64_t i, float x) {
  switch (t) {
    case DType::f32: static_cast<float*>(base)[i] = x; break;
    case DType::f16: static_cast<uint16_t*>(base)[i] = float_to_half_bits(x); break;
    case DType::bf16: static_cast<uint16_t*>(base)[i] = float_to_bf16_bits(x); break;
    case DType::i32: static_cast<int32_t*>(base)[i] = static_cast<int32_t>(x); break;
  }
}

}  // namespace flashplus
