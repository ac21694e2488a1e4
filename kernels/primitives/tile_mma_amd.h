// The AMD half of our tile MMA layer (CDNA MFMA, wave64), included by tile_mma.h in HIP builds.
// Fragment layouts and the forward's tile geometry: primitives/mfma_layout.h (host-testable).
//
//   Frag4           4 16-bit elements in 2 VGPRs: one MFMA A or B operand (8-byte LDS read)
//   Acc4            4 fp32 VGPRs: one MFMA C/D fragment
//   Elem<T>         16-bit bits of a float (RNE), pack4 (C registers -> B operand: P^T)
//   mfma16<T>       v_mfma_f32_16x16x16f16 / v_mfma_f32_16x16x16bf16_1k, D = A B + C
//   load/store_frag 8-byte access of one fragment (ds_read_b64 / ds_write_b64 in LDS)
//   column_max/sum  reduction over the 4 lanes (l, l^16, l^32, l^48) that hold one C column
//   fast_exp2       v_exp_f32 (2^x, exact 0 for -inf)
// Only meaningful in a HIP device pass for gfx908/gfx90a/gfx94x (FLASHPLUS_HAS_MFMA); the builtins
// are referenced only inside `#if FLASHPLUS_HAS_MFMA`, so the host pass and other archs compile.
#pragma once
#include <cstdint>

#include "platform/arch.h"
#include "platform/types.h"
#include "primitives/mfma_layout.h"

#ifndef FP_DEV
#define FP_DEV __device__ __forceinline__
#endif

namespace flashplus::prim {

using Frag4 = uint32_t __attribute__((ext_vector_type(2)));
using Acc4 = float __attribute__((ext_vector_type(4)));
using U32x4 = uint32_t __attribute__((ext_vector_type(4)));  // one 16-byte global load
using HalfX4 = _Float16 __attribute__((ext_vector_type(4)));  // operand type of the f16 builtin
using ShortX4 = short __attribute__((ext_vector_type(4)));    // operand type of the bf16_1k builtin

// ---- element types -------------------------------------------------------------------------
template <typename T> struct Elem;
template <> struct Elem<platform::half_t> {
  static constexpr const char* name = "f16";
  FP_DEV static uint16_t bits(float x) {  // fptrunc: round to nearest even
    return __builtin_bit_cast(uint16_t, static_cast<_Float16>(x));
  }
  FP_DEV static float to_float(uint16_t b) {
    return static_cast<float>(__builtin_bit_cast(_Float16, b));
  }
};
template <> struct Elem<platform::bf16_t> {
  static constexpr const char* name = "bf16";
  // gfx90a has no f32 -> bf16 instruction: the same bit rounding as the host (numerics.h).
  FP_DEV static uint16_t bits(float x) { return platform::float_to_bf16_bits_rne(x); }
  FP_DEV static float to_float(uint16_t b) { return platform::bits_to_float(uint32_t(b) << 16); }
};

template <typename T> FP_DEV uint32_t pack2(float lo, float hi) {
  return uint32_t(Elem<T>::bits(lo)) | (uint32_t(Elem<T>::bits(hi)) << 16);
}
// The 4 fp32 registers of a C fragment as a 16-bit operand, register e -> element e. By
// mfma::mfma16_c_is_b() the C fragment of S^T is then P^T's B fragment as it is.
template <typename T> FP_DEV Frag4 pack4(const Acc4& c) {
  Frag4 f;
  f.x = pack2<T>(c.x, c.y);
  f.y = pack2<T>(c.z, c.w);
  return f;
}

// ---- matrix core: D = A B + C, fp32 accumulation ----------------------------------------------
template <typename T> FP_DEV void mfma16(Acc4& c, Frag4 a, Frag4 b);
template <> FP_DEV void mfma16<platform::half_t>(Acc4& c, Frag4 a, Frag4 b) {
#if FLASHPLUS_HAS_MFMA
  c = __builtin_amdgcn_mfma_f32_16x16x16f16(__builtin_bit_cast(HalfX4, a),
                                            __builtin_bit_cast(HalfX4, b), c, 0, 0, 0);
#else
  (void)c, (void)a, (void)b;
  __builtin_trap();
#endif
}
template <> FP_DEV void mfma16<platform::bf16_t>(Acc4& c, Frag4 a, Frag4 b) {
#if FLASHPLUS_HAS_MFMA && (defined(__gfx90a__) || defined(__gfx940__) || defined(__gfx941__) || \
                           defined(__gfx942__))
  c = __builtin_amdgcn_mfma_f32_16x16x16bf16_1k(__builtin_bit_cast(ShortX4, a),
                                                __builtin_bit_cast(ShortX4, b), c, 0, 0, 0);
#else
  (void)c, (void)a, (void)b;  // gfx908 has only the 16x16x8bf16 form (another layout)
  __builtin_trap();
#endif
}

// ---- fragment loads and stores -----------------------------------------------------------------
// 4 consecutive 16-bit elements (8-byte aligned) <-> one fragment: one ds_read_b64 / ds_write_b64
// in LDS (the A fragments of K and V^T), one 8-byte global access elsewhere (Q, O).
FP_DEV Frag4 load_frag(const uint16_t* p) { return *reinterpret_cast<const Frag4*>(p); }
FP_DEV void store_frag(uint16_t* p, Frag4 f) { *reinterpret_cast<Frag4*>(p) = f; }

// ---- wave reductions over one C column (one query row of the forward) -------------------------
FP_DEV float column_max(float x) {
  x = fmaxf(x, __shfl_xor(x, mfma::Mfma16::kColumnXor0, 64));
  return fmaxf(x, __shfl_xor(x, mfma::Mfma16::kColumnXor1, 64));
}
FP_DEV float column_sum(float x) {
  x += __shfl_xor(x, mfma::Mfma16::kColumnXor0, 64);
  return x + __shfl_xor(x, mfma::Mfma16::kColumnXor1, 64);
}
FP_DEV float wave_sum(float x) {
#pragma unroll
  for (int o = 32; o > 0; o >>= 1) x += __shfl_xor(x, o, 64);
  return x;
}

FP_DEV float fast_exp2(float x) { return exp2f(x); }  // v_exp_f32; 2^-inf = 0

}  // namespace flashplus::prim
