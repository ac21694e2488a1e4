// Our tile MMA layer: the only place that spells out tensor-core instructions, their fragment
// layouts, shared-memory copies and the swizzled shared-memory tile layout. Kernels in
// kernels/gpu/fwd and kernels/gpu/bwd are written against these names only.
//
// NVIDIA path: mma.sync.m16n8k16 (sm_80+, also used on sm_90a), ldmatrix(.trans), cp.async.
// AMD path (CDNA MFMA, wave64): primitives/tile_mma_amd.h, its layouts in primitives/mfma_layout.h.
//
// Fragment layouts of mma.m16n8k16 (per warp of 32 lanes; g = lane / 4, t = lane % 4):
//   A (16x16, row-major), 4 x b32 registers, each 2 consecutive-k elements:
//     a[0] = A[g][2t..2t+1]   a[1] = A[g+8][2t..2t+1]   a[2] = A[g][2t+8..]   a[3] = A[g+8][2t+8..]
//   B (16x8, "col-major" = stored as 8 rows of n with 16 k each), 2 x b32:
//     b[0] = B[k=2t..2t+1][n=g]                         b[1] = B[k=2t+8..2t+9][n=g]
//   C/D (16x8 fp32), 4 floats:
//     c[0..1] = C[g][2t..2t+1]                          c[2..3] = C[g+8][2t..2t+1]
// Two C tiles that are neighbours along n (n8 tiles 2k and 2k+1) form, after packing to 16 bits,
// exactly one A fragment along k (c_to_a below): the trick that keeps P in registers.
#pragma once
#include <cstdint>

#include "platform/arch.h"
#include "platform/types.h"

#define FLASHPLUS_PRIM_AMD FLASHPLUS_VENDOR_HIP
#define FP_DEV __device__ __forceinline__

#if FLASHPLUS_PRIM_AMD
#include "primitives/tile_mma_amd.h"
#endif

namespace flashplus::prim {

#if !FLASHPLUS_PRIM_AMD

// ---- element types -------------------------------------------------------------------------
template <typename T> struct Elem;
template <> struct Elem<platform::half_t> {
  static constexpr const char* name = "f16";
  FP_DEV static uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  FP_DEV static float to_float(__half x) { return __half2float(x); }
  FP_DEV static __half from_float(float x) { return __float2half_rn(x); }
};
template <> struct Elem<platform::bf16_t> {
  static constexpr const char* name = "bf16";
  FP_DEV static uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  FP_DEV static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  FP_DEV static __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};

// ---- tensor-core MMA: D = A * B + D, fp32 accumulation ---------------------------------------
template <typename T> FP_DEV void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                            uint32_t b1);
template <> FP_DEV void mma_16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> FP_DEV void mma_16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4],
                                                 uint32_t b0, uint32_t b1) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two neighbouring C tiles (n8 tiles 2k, 2k+1), packed to 16 bits, as one A fragment (k16).
template <typename T>
FP_DEV void c_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = Elem<T>::pack(c0[0], c0[1]);
  a[1] = Elem<T>::pack(c0[2], c0[3]);
  a[2] = Elem<T>::pack(c1[0], c1[1]);
  a[3] = Elem<T>::pack(c1[2], c1[3]);
}

// ---- shared memory ---------------------------------------------------------------------------
FP_DEV uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ldmatrix: each of the 32 lanes gives the address of one 16-byte row; lanes 8i..8i+7 address
// matrix i. Without .trans lane (g, t) receives row g, elements 2t..2t+1 of each matrix; with
// .trans it receives elements (rows 2t..2t+1, column g) - the transpose.
FP_DEV void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
FP_DEV void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// cp.async 16 bytes global -> shared; when !pred nothing is read and the 16 bytes are zeroed
// (src-size 0), so out-of-range rows / head-dim columns become exact zeros.
FP_DEV void cp_async_16(uint32_t smem_addr, const void* gmem, bool pred) {
  const int src_size = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr), "l"(gmem),
               "r"(src_size));
}
// The same with an L2 cache policy (l2_policy_evict_first): data read once, such as a streamed KV cache,
// is marked evict-first so it does not push out what else the L2 holds (another kernel's data,
// or dirty lines that would have to be written back in the middle of the stream).
FP_DEV void cp_async_16(uint32_t smem_addr, const void* gmem, bool pred, uint64_t l2_policy) {
  const int src_size = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(smem_addr),
               "l"(gmem), "r"(src_size), "l"(l2_policy));
}
FP_DEV uint64_t l2_policy_evict_first() {
  uint64_t p;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(p));
  return p;
}
FP_DEV void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> FP_DEV void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// ---- swizzled tile layout --------------------------------------------------------------------
// A ROWS x COLS tile of 16-bit elements, row-major, in 16-byte chunks of 8 elements. The chunk
// index is XOR-ed with the row (mod the chunks per row, at most 8) so that the 8 rows an
// ldmatrix phase reads, and the 8 chunks of one row a cp.async phase writes, fall into 8
// different 16-byte bank groups: no bank conflicts without padding.
template <int ROWS, int COLS> struct SwizzledTile {
  static_assert(COLS % 8 == 0, "tile width must be a multiple of 8 elements");
  static constexpr int kChunks = COLS / 8;
  static constexpr int kMask = (kChunks >= 8 ? 8 : kChunks) - 1;
  static constexpr int kElems = ROWS * COLS;
  static constexpr int kBytes = kElems * 2;
  // Element offset of (row, col); col must be a multiple of 8 for chunk accesses, any col
  // otherwise (the offset inside the chunk is kept).
  FP_DEV static int offset(int row, int col) {
    return row * COLS + ((((col >> 3) ^ row) & kMask) | ((col >> 3) & ~kMask)) * 8 + (col & 7);
  }
};

// ---- warp reductions for the online softmax --------------------------------------------------
// The 4 lanes of a quad (same g) own one accumulator row; reduce over them.
FP_DEV float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
FP_DEV float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
FP_DEV float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

FP_DEV float fast_exp2(float x) {  // ex2.approx: 2^x, exact 0 for -inf
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

#endif  // !FLASHPLUS_PRIM_AMD

}  // namespace flashplus::prim
