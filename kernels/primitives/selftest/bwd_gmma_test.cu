// Unit test of the wgmma building blocks (bwd_gmma.h) on the layouts the backward uses: K-major
// and MN-major operands in GmmaTile, A from registers, N = 64 / 128, column-block offsets.
// Build: nvcc -std=c++17 -O2 -gencode=arch=compute_90a,code=sm_90a -I kernels/include -I kernels
//        kernels/primitives/selftest/bwd_gmma_test.cu -o gmma_test
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <vector>
#include <cuda_bf16.h>

#include "gpu/bwd/bwd_gmma.h"

using namespace flashplus;
using T = platform::bf16_t;
#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("CUDA %s line %d\n", cudaGetErrorString(e_), __LINE__); exit(1); } } while (0)

constexpr int R = 128, C = 128;  // both tiles 128 x 128
using Tile = gpu::tc::GmmaTile<R, C>;

// X, Y: row-major R x C bf16 in global. Out: 64 x 128 fp32 (first N cols used).
// mode 0: SS n64, A = X[64:128, 0:128] K-major (M rows 64..127, K = 128), B = Y[0:64] K-major
//         -> out[m][n] = sum_k X[64+m][k] Y[n][k]
// mode 1: SS n64, A MN-major: A[m][k] = X[k][64+m]; B MN-major: B[n][k] = Y[k][64+n]  (dQ case)
// mode 2: RS n128, A regs: A[m][k] = X[m][k] (k < 64 -> 4 k-steps), B MN-major B[n][k] = Y[k][n]
// mode 3: SS n128, A K-major X[0:64], B K-major Y[0:128] (N = 128 rows)
// swap: swap LBO and SBO of MN-major descriptors
__global__ void kern(const T* X, const T* Y, float* out, int mode, int swap) {
  extern __shared__ __align__(1024) unsigned char smem[];
  T* sX = reinterpret_cast<T*>(smem);
  T* sY = sX + Tile::kElems;
  const int tid = threadIdx.x;
  for (int c = tid; c < R * C / 8; c += 128) {
    const int r = c / (C / 8), ch = c % (C / 8);
    *reinterpret_cast<uint4*>(sX + Tile::offset(r, ch * 8)) = *reinterpret_cast<const uint4*>(X + r * C + ch * 8);
    *reinterpret_cast<uint4*>(sY + Tile::offset(r, ch * 8)) = *reinterpret_cast<const uint4*>(Y + r * C + ch * 8);
  }
  gpu::tc::fence_proxy_async();
  __syncthreads();
  const uint32_t bx = prim::smem_u32(sX), by = prim::smem_u32(sY);
  const int warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const uint32_t mn_lbo = swap ? 1024 : Tile::kBlockBytes, mn_sbo = swap ? Tile::kBlockBytes : 1024;
  float acc[16][4];
  for (int i = 0; i < 16; ++i) for (int e = 0; e < 4; ++e) acc[i][e] = 0.f;
  int N = 64;
  if (mode == 0) {
    float d[8][4];
    gpu::tc::gmma_fence();
    for (int kk = 0; kk < 8; ++kk) {
      const uint32_t off = (kk / 4) * Tile::kBlockBytes + (kk % 4) * 32;
      gpu::tc::gmma_ss_n64<T, 0, 0>(d, gpu::tc::gmma_desc(bx + off + 64 * 128, 16, 1024),
                                    gpu::tc::gmma_desc(by + off, 16, 1024), kk > 0);
    }
    gpu::tc::gmma_commit(); gpu::tc::gmma_wait<0>(); gpu::tc::gmma_reg_fence(d);
    for (int i = 0; i < 8; ++i) for (int e = 0; e < 4; ++e) acc[i][e] = d[i][e];
  } else if (mode == 1) {
    float d[8][4];
    gpu::tc::gmma_fence();
    for (int kk = 0; kk < 8; ++kk) {
      const uint32_t off = Tile::kBlockBytes + kk * 2048;
      gpu::tc::gmma_ss_n64<T, 1, 1>(d, gpu::tc::gmma_desc(bx + off, mn_lbo, mn_sbo),
                                    gpu::tc::gmma_desc(by + off, mn_lbo, mn_sbo), kk > 0);
    }
    gpu::tc::gmma_commit(); gpu::tc::gmma_wait<0>(); gpu::tc::gmma_reg_fence(d);
    for (int i = 0; i < 8; ++i) for (int e = 0; e < 4; ++e) acc[i][e] = d[i][e];
  } else if (mode == 2) {
    N = 128;
    float d[16][4];
    for (int i = 0; i < 16; ++i) for (int e = 0; e < 4; ++e) d[i][e] = 0.f;
    gpu::tc::gmma_fence();
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t a[4];
      const int r0 = warp * 16 + g, c0 = kk * 16 + 2 * t;
      auto pk = [&](int r, int c) {
        return *reinterpret_cast<const uint32_t*>(X + r * C + c);
      };
      a[0] = pk(r0, c0); a[1] = pk(r0 + 8, c0); a[2] = pk(r0, c0 + 8); a[3] = pk(r0 + 8, c0 + 8);
      gpu::tc::gmma_rs_n128<T, 1>(d, a, gpu::tc::gmma_desc(by + kk * 2048, mn_lbo, mn_sbo), 1);
    }
    gpu::tc::gmma_commit(); gpu::tc::gmma_wait<0>(); gpu::tc::gmma_reg_fence(d);
    for (int i = 0; i < 16; ++i) for (int e = 0; e < 4; ++e) acc[i][e] = d[i][e];
  } else {
    N = 128;
    float d[16][4];
    gpu::tc::gmma_fence();
    for (int kk = 0; kk < 8; ++kk) {
      const uint32_t off = (kk / 4) * Tile::kBlockBytes + (kk % 4) * 32;
      gpu::tc::gmma_ss_n128<T, 0, 0>(d, gpu::tc::gmma_desc(bx + off, 16, 1024),
                                     gpu::tc::gmma_desc(by + off, 16, 1024), kk > 0);
    }
    gpu::tc::gmma_commit(); gpu::tc::gmma_wait<0>(); gpu::tc::gmma_reg_fence(d);
    for (int i = 0; i < 16; ++i) for (int e = 0; e < 4; ++e) acc[i][e] = d[i][e];
  }
  for (int i = 0; i < N / 8; ++i)
    for (int e = 0; e < 4; ++e) {
      const int m = warp * 16 + g + 8 * (e / 2), n = i * 8 + 2 * t + (e % 2);
      out[m * 128 + n] = acc[i][e];
    }
}

static float bf(uint16_t u) { uint32_t x = (uint32_t)u << 16; float f; memcpy(&f, &x, 4); return f; }

int main() {
  std::vector<uint16_t> hx(R * C), hy(R * C);
  srand(7);
  for (auto& v : hx) { float f = (rand() / (float)RAND_MAX) * 2 - 1; uint32_t u; memcpy(&u, &f, 4); v = u >> 16; }
  for (auto& v : hy) { float f = (rand() / (float)RAND_MAX) * 2 - 1; uint32_t u; memcpy(&u, &f, 4); v = u >> 16; }
  T *X, *Y; float* O;
  CK(cudaMalloc(&X, R * C * 2)); CK(cudaMalloc(&Y, R * C * 2)); CK(cudaMalloc(&O, 64 * 128 * 4));
  CK(cudaMemcpy(X, hx.data(), R * C * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(Y, hy.data(), R * C * 2, cudaMemcpyHostToDevice));
  CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, 2 * Tile::kBytes));
  auto x = [&](int r, int c) { return bf(hx[r * C + c]); };
  auto y = [&](int r, int c) { return bf(hy[r * C + c]); };
  int fails = 0;
  for (int mode = 0; mode < 4; ++mode)
    for (int swap = 0; swap < 1; ++swap) {  // swap = 1 (LBO/SBO exchanged) faults: not run
      CK(cudaMemset(O, 0xff, 64 * 128 * 4));
      kern<<<1, 128, 2 * Tile::kBytes>>>(X, Y, O, mode, swap);
      CK(cudaGetLastError());
      CK(cudaDeviceSynchronize());
      std::vector<float> ho(64 * 128);
      CK(cudaMemcpy(ho.data(), O, ho.size() * 4, cudaMemcpyDeviceToHost));
      const int N = (mode >= 2) ? 128 : 64;
      double err = 0, ref2 = 0;
      for (int m = 0; m < 64; ++m)
        for (int n = 0; n < N; ++n) {
          double r = 0;
          if (mode == 0) for (int k = 0; k < 128; ++k) r += (double)x(64 + m, k) * y(n, k);
          if (mode == 1) for (int k = 0; k < 128; ++k) r += (double)x(k, 64 + m) * y(k, 64 + n);
          if (mode == 2) for (int k = 0; k < 64; ++k) r += (double)x(m, k) * y(k, n);
          if (mode == 3) for (int k = 0; k < 128; ++k) r += (double)x(m, k) * y(n, k);
          const double o = ho[m * 128 + n];
          err += (o - r) * (o - r); ref2 += r * r;
          if (std::isnan(o)) err += 1e30;
        }
      const double rel = std::sqrt(err / ref2);
      const bool ok = rel < 1e-5;
      printf("GMMA_TEST mode %d swap %d rel %.3e %s\n", mode, swap, rel, ok ? "ok" : "FAIL");
      if (!ok) ++fails;
    }
  printf("GMMA_TEST %s\n", fails ? "FAILED" : "all passed");
  return fails ? 1 : 0;
}
