// Hopper (sm_90a) building blocks of the fwd_sm90 family: warpgroup MMA (wgmma) and its
// shared-memory matrix descriptors, mbarriers, the bulk tensor copy engine (TMA), setmaxnreg.
// Every instruction here exists only in the sm_90a pass; callers guard their device code with
// FLASHPLUS_HAS_WGMMA (platform/arch.h) so that the sm_80 pass compiles stubs.
//
// Shared-memory tiles use the 128-byte swizzle of both TMA (CU_TENSOR_MAP_SWIZZLE_128B) and the
// wgmma descriptor (mode 1): a tile of R rows x 64 16-bit columns ("panel") is stored as rows of
// 128 bytes, and 16-byte chunk c of row r lives at chunk c ^ (r % 8). Panels start on 1024-byte
// boundaries (the swizzle pattern repeats every 8 rows = 1024 bytes). Wider tiles (head dim 128)
// are several panels one after another.
//
// Descriptor (PTX ISA, "matrix descriptor"): bits 0-13 start address >> 4, 16-29 leading
// dimension byte offset (LBO) >> 4, 32-45 stride dimension byte offset (SBO) >> 4, 62-63 swizzle
// (1 = 128B). For a K-major operand (Q, K: the reduction dim is contiguous) SBO is the step
// between 8-row groups (1024 bytes) and LBO is unused; stepping k by 16 elements adds 32 bytes to
// the start address (the hardware swizzles the final address, hence the 1024-byte alignment).
// For an MN-major operand (V in O += P V: the output dim is contiguous) SBO is the step between
// 8-k groups (1024 bytes) and LBO the step between 64-column panels along N.
//
// Accumulator layout of wgmma m64nNk16 (fp32), per warp w of the warpgroup (rows 16w..16w+15),
// lane (g = lane / 4, t = lane % 4): d[4i + 0..1] = D[16w + g][8i + 2t + 0..1],
// d[4i + 2..3] = D[16w + g + 8][8i + 2t + 0..1] for n8 block i; the same layout as mma.sync's
// C fragments, so two neighbouring n8 blocks packed to 16 bits are one A fragment (k16) of the
// register-A form (prim::c_to_a's order).
#pragma once
#include <cstdint>

#include "platform/arch.h"
#include "platform/types.h"
#include "primitives/tile_mma.h"

namespace flashplus::sm90 {

#if FLASHPLUS_VENDOR_CUDA

// ---- descriptors ---------------------------------------------------------------------------
FP_DEV uint64_t desc_sw128(uint32_t smem_addr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  uint64_t d = 0;
  d |= static_cast<uint64_t>((smem_addr >> 4) & 0x3FFF);
  d |= static_cast<uint64_t>((lbo_bytes >> 4) & 0x3FFF) << 16;
  d |= static_cast<uint64_t>((sbo_bytes >> 4) & 0x3FFF) << 32;
  d |= static_cast<uint64_t>(1) << 62;  // 128-byte swizzle
  return d;
}

// ---- wgmma ---------------------------------------------------------------------------------
FP_DEV void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
FP_DEV void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> FP_DEV void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accumulator reads/writes across an async MMA boundary.
template <int N> FP_DEV void reg_fence(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N, int M> FP_DEV void reg_fence(uint32_t (&r)[N][M]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < M; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}

// D(64 x N) (+)= A(64 x 16, K-major, descriptor) * B(16 x N, K-major, descriptor).
template <typename T, int N> FP_DEV void wgmma_ss(float (&d)[N / 2], uint64_t da, uint64_t db,
                                                  int scale_d);
// D(64 x N) (+)= A(64 x 16, registers) * B(16 x N, MN-major descriptor).
template <typename T, int N> FP_DEV void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4],
                                                  uint64_t db, int scale_d);

#if FLASHPLUS_HAS_WGMMA
#include "gpu/fwd_sm90/sm90_wgmma_ops.inc"
#endif

// ---- mbarrier ------------------------------------------------------------------------------
FP_DEV void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
FP_DEV void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
FP_DEV void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
FP_DEV void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Waits until the phase of parity `parity` has completed.
FP_DEV void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}

// ---- TMA: 4-d tiled copy global -> shared, completing on an mbarrier ------------------------
FP_DEV void tma_load_4d(uint32_t dst, const void* tmap, uint32_t bar, int c0, int c1, int c2,
                        int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, "
      "{%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(tmap)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}
FP_DEV void tma_prefetch_desc(const void* tmap) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(tmap)) : "memory");
}

// Orders this thread's ordinary shared-memory stores before later async-proxy reads (wgmma, TMA).
FP_DEV void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// ---- registers and named barriers ----------------------------------------------------------
template <int N> FP_DEV void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N> FP_DEV void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
FP_DEV void named_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

#endif  // FLASHPLUS_VENDOR_CUDA

}  // namespace flashplus::sm90
