// Self-test and benchmark of the Hopper forward family (fwd_sm90) without the rest of the library.
//   gemm   one wgmma tile per operand form against a CPU product: SS (Q K^T, both K-major, 128-byte
//          swizzle) and RS (P from registers times V, MN-major descriptor), head dims 64 and 128.
//          This pins down the descriptors, the swizzle and the fragment layouts on their own.
//   check  the attention kernel (run_fwd_sm90) against an fp64 CPU reference on random inputs:
//          odd sizes, seqlen 1, sq != sk, causal/window (bottom-right), fully masked rows, GQA,
//          softcap + ALiBi, head_dim below its bucket, padded strides; outputs poisoned first.
//   bench  CUDA-event timings on FlashAttention's benchmark shapes (bf16, batch = 16384 / seqlen,
//          heads = 2048 / head_dim), median of 30, 3 rotating input sets.
//
// Build (after a CMake configure of build/, which generates the instances and tile lists):
//        nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -Ikernels -Ikernels/include
//        -Ikernels/src -Ibuild/generated kernels/gpu/fwd_sm90/selftest/sm90_selftest.cu
//        kernels/gpu/fwd_sm90/*.cu build/generated/flashplus_gen/gpu/fwd_sm90_*.cu
// Run:   sm90_selftest [gemm | gemm-swap] [check] [bench] [simple | s3]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "flashplus/numerics.h"
#include "gpu/fwd_sm90/fwd_sm90.h"
#include "gpu/fwd_sm90/fwd_sm90_kernel.cuh"
#include "gpu/fwd_sm90/sm90_mma.h"
#include "gpu/gpu_kernels.h"
#include "platform/gpu_runtime.h"

using namespace flashplus;

namespace flashplus::gpu {
int current_arch(int device_index) {
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, device_index) != cudaSuccess) return 0;
  return prop.major * 10 + prop.minor;
}
}  // namespace flashplus::gpu

#define CK(x)                                                                              \
  do {                                                                                     \
    cudaError_t e_ = (x);                                                                  \
    if (e_ != cudaSuccess) {                                                               \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

static float to_f(DType t, uint16_t x) {
  return t == DType::bf16 ? bf16_bits_to_float(x) : half_bits_to_float(x);
}
static uint16_t from_f(DType t, float x) {
  return t == DType::bf16 ? float_to_bf16_bits(x) : float_to_half_bits(x);
}

// The kernel variant under test: the library's default tile (""), or one instantiated here:
// "simple" (no intra-warpgroup overlap, 2 stages), "s3" (overlap, 3 K/V stages).
static std::string g_variant;
template <bool OV, int ST>
static Status run_tile(const AttnParams& p) {
  using namespace gpu::sm90fwd;
  const bool bf = p.dtype == DType::bf16;
  if (p.head_dim <= 64)
    return bf ? launch_fwd_sm90_tile<platform::bf16_t, 64, 128, ST, OV>(p, nullptr)
              : launch_fwd_sm90_tile<platform::half_t, 64, 128, ST, OV>(p, nullptr);
  return bf ? launch_fwd_sm90_tile<platform::bf16_t, 128, 128, ST, OV>(p, nullptr)
            : launch_fwd_sm90_tile<platform::half_t, 128, 128, ST, OV>(p, nullptr);
}
static Status run_variant(const AttnParams& p) {
  if (g_variant == "simple") return run_tile<false, 2>(p);
  if (g_variant == "s3") return run_tile<true, 3>(p);
  return gpu::run_fwd_sm90(p, gpu::KernelConfig{}, nullptr);
}
static const char* vtag() { return g_variant.empty() ? "" : g_variant.c_str(); }

// ================================ gemm tile ====================================================
// Stores a ROWS x D row-major tile into 64-column panels, 128-byte swizzled (sm90_mma.h layout).
template <typename T>
__device__ void store_swizzled(unsigned char* smem, const T* g, int rows, int d, int tid) {
  for (int c = tid; c < rows * d / 8; c += 128) {
    const int r = c / (d / 8), ch = c % (d / 8);
    const int off = (ch / 8) * rows * 128 + r * 128 + (((ch % 8) ^ (r % 8)) * 16);
    *reinterpret_cast<uint4*>(smem + off) = *reinterpret_cast<const uint4*>(g + r * d + ch * 8);
  }
}

// One warpgroup: S(64x128) = A(64xD) B(128xD)^T (SS), O(64xD) = P(64x128) V(128xD) (RS).
template <typename T, int D>
__global__ void gemm_tile_kernel(const T* A, const T* B, const T* P, const T* V, float* S, float* O,
                                 uint32_t lbo_v, uint32_t sbo_v) {
#if FLASHPLUS_HAS_WGMMA
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw = prim::smem_u32(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  unsigned char* g = smem_raw + (base - raw);
  constexpr int kA = 64 * D * 2, kB = 128 * D * 2;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gq = lane / 4, t = lane % 4;
  store_swizzled(g, A, 64, D, tid);
  store_swizzled(g + kA, B, 128, D, tid);
  store_swizzled(g + kA + kB, V, 128, D, tid);
  sm90::fence_proxy_async();
  __syncthreads();
  float s[64];
  sm90::wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint64_t da = sm90::desc_sw128(base + (kk / 4) * 64 * 128 + (kk % 4) * 32, 16, 1024);
    const uint64_t db = sm90::desc_sw128(base + kA + (kk / 4) * 128 * 128 + (kk % 4) * 32, 16, 1024);
    sm90::wgmma_ss<T, 128>(s, da, db, kk > 0 ? 1 : 0);
  }
  sm90::wgmma_commit();
  sm90::wgmma_wait<0>();
  sm90::reg_fence(s);
  for (int i = 0; i < 16; ++i)
    for (int e = 0; e < 4; ++e)
      S[(16 * warp + gq + 8 * (e / 2)) * 128 + 8 * i + 2 * t + (e % 2)] = s[4 * i + e];
  uint32_t pa[8][4];
  auto ld2 = [&](int r, int c) {
    uint32_t lo = *reinterpret_cast<const uint16_t*>(P + r * 128 + c);
    uint32_t hi = *reinterpret_cast<const uint16_t*>(P + r * 128 + c + 1);
    return lo | (hi << 16);
  };
  for (int kk = 0; kk < 8; ++kk) {
    pa[kk][0] = ld2(16 * warp + gq, 16 * kk + 2 * t);
    pa[kk][1] = ld2(16 * warp + gq + 8, 16 * kk + 2 * t);
    pa[kk][2] = ld2(16 * warp + gq, 16 * kk + 8 + 2 * t);
    pa[kk][3] = ld2(16 * warp + gq + 8, 16 * kk + 8 + 2 * t);
  }
  float o[D / 2];
  sm90::wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
    const uint64_t dv = sm90::desc_sw128(base + kA + kB + kk * 16 * 128, lbo_v, sbo_v);
    sm90::wgmma_rs<T, D>(o, pa[kk], dv, kk > 0 ? 1 : 0);
  }
  sm90::wgmma_commit();
  sm90::wgmma_wait<0>();
  sm90::reg_fence(o);
  for (int i = 0; i < D / 8; ++i)
    for (int e = 0; e < 4; ++e)
      O[(16 * warp + gq + 8 * (e / 2)) * D + 8 * i + 2 * t + (e % 2)] = o[4 * i + e];
#endif
}

template <typename T, int D>
static bool gemm_test(DType dt, std::mt19937_64& rng, bool swapped) {
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<uint16_t> A(64 * D), B(128 * D), P(64 * 128), V(128 * D);
  for (auto& x : A) x = from_f(dt, nd(rng));
  for (auto& x : B) x = from_f(dt, nd(rng));
  for (auto& x : P) x = from_f(dt, nd(rng));
  for (auto& x : V) x = from_f(dt, nd(rng));
  std::vector<double> S(64 * 128, 0.0), O(64 * D, 0.0);
  for (int i = 0; i < 64; ++i)
    for (int j = 0; j < 128; ++j) {
      for (int x = 0; x < D; ++x) S[i * 128 + j] += (double)to_f(dt, A[i * D + x]) * to_f(dt, B[j * D + x]);
      for (int x = 0; x < D; ++x) O[i * D + x] += (double)to_f(dt, P[i * 128 + j]) * to_f(dt, V[j * D + x]);
    }
  void *dA, *dB, *dP, *dV;
  float *dS, *dO;
  CK(cudaMalloc(&dA, A.size() * 2)); CK(cudaMalloc(&dB, B.size() * 2));
  CK(cudaMalloc(&dP, P.size() * 2)); CK(cudaMalloc(&dV, V.size() * 2));
  CK(cudaMalloc(&dS, S.size() * 4)); CK(cudaMalloc(&dO, O.size() * 4));
  CK(cudaMemcpy(dA, A.data(), A.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dB, B.data(), B.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dP, P.data(), P.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dV, V.data(), V.size() * 2, cudaMemcpyHostToDevice));
  const int smem = (64 + 128 + 128) * D * 2 + 1024;
  auto k = gemm_tile_kernel<T, D>;
  CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  bool all = true;
  // The MN-major descriptor's LBO/SBO roles: ours, or swapped (a diagnostic that may fault:
  // run it in a process of its own, "gemm-swap").
  const uint32_t variants[2][2] = {{128 * 128, 1024}, {1024, 128 * 128}};
  for (int vi = swapped ? 1 : 0; vi < (swapped ? 2 : 1); ++vi) {
    CK(cudaMemset(dS, 0xFF, S.size() * 4)); CK(cudaMemset(dO, 0xFF, O.size() * 4));
    k<<<1, 128, smem>>>(static_cast<const T*>(dA), static_cast<const T*>(dB), static_cast<const T*>(dP),
                        static_cast<const T*>(dV), dS, dO, variants[vi][0], variants[vi][1]);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    std::vector<float> gS(S.size()), gO(O.size());
    CK(cudaMemcpy(gS.data(), dS, gS.size() * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(gO.data(), dO, gO.size() * 4, cudaMemcpyDeviceToHost));
    double es = 0, rs = 0, eo = 0, ro = 0;
    for (size_t i = 0; i < S.size(); ++i) { es += (gS[i] - S[i]) * (gS[i] - S[i]); rs += S[i] * S[i]; }
    for (size_t i = 0; i < O.size(); ++i) { eo += (gO[i] - O[i]) * (gO[i] - O[i]); ro += O[i] * O[i]; }
    const double errS = std::sqrt(es / rs), errO = std::sqrt(eo / ro);
    const bool okS = errS < 1e-5, okO = errO < 1e-5;  // fp32 accumulation of exact products
    std::printf("GEMM %s D=%3d  SS(QK^T) err %.2e %s   RS(PV) lbo=%5u sbo=%5u err %.2e %s\n",
                dt == DType::bf16 ? "bf16" : "f16 ", D, errS, okS ? "PASS" : "FAIL", variants[vi][0],
                variants[vi][1], errO, okO ? "PASS" : "FAIL");
    all = okS && okO;
  }
  cudaFree(dA); cudaFree(dB); cudaFree(dP); cudaFree(dV); cudaFree(dS); cudaFree(dO);
  return all;
}

// ================================ attention check ==============================================
struct Case {
  int b, sq, sk, h, hk, d;
  bool causal;
  int wl, wr;  // window as passed to the API (-1 = unbounded), before canonicalisation
  float softcap;
  bool alibi;
  DType dt;
  int pad = 0;        // extra elements per (row, head) slot: non-contiguous strides
  int row_step = 1;   // reference on every row_step-th query row only (large cases)
};

// Canonicalise like make_fwd_params (API.md §2.3).
static void canon(const Case& c, AttnParams& p) {
  int wl = c.wl, wr = c.wr;
  if (wl >= c.sk) wl = -1;
  if (wr >= c.sk) wr = -1;
  bool causal = c.causal;
  if (causal && c.sq == 1 && !c.alibi) causal = false;
  if (causal) wr = 0;
  p.is_causal = causal && wl < 0;
  if (!causal && wl < 0 && wr == 0) p.is_causal = true;
  if (wl < 0 && wr >= 0) wl = c.sk;
  if (wr < 0 && wl >= 0) wr = c.sk;
  p.window_left = wl < 0 ? -1 : wl;
  p.window_right = wr < 0 ? -1 : wr;
}

static bool run_case(const Case& c, std::mt19937_64& rng) {
  const int ld = c.d + c.pad;
  AttnParams p;
  p.batch = c.b; p.seqlen_q = c.sq; p.seqlen_k = c.sk; p.nheads = c.h; p.nheads_k = c.hk;
  p.head_dim = c.d; p.dtype = c.dt; p.device = DeviceKind::cuda;
  p.softmax_scale = 1.f / std::sqrt((float)c.d);
  p.softcap = c.softcap;
  canon(c, p);
  std::normal_distribution<float> nd(0.f, 1.f);
  const size_t nq = (size_t)c.b * c.sq * c.h * ld, nk = (size_t)c.b * c.sk * c.hk * ld;
  std::vector<uint16_t> q(nq), k(nk), v(nk);
  for (auto& x : q) x = from_f(c.dt, nd(rng));
  for (auto& x : k) x = from_f(c.dt, nd(rng));
  for (auto& x : v) x = from_f(c.dt, nd(rng));
  std::vector<float> slopes(c.b * c.h);
  for (auto& s : slopes) s = std::uniform_real_distribution<float>(0.01f, 0.5f)(rng);
  void *dq, *dk, *dv, *dout;
  float *dlse, *dslopes;
  CK(cudaMalloc(&dq, nq * 2)); CK(cudaMalloc(&dk, nk * 2)); CK(cudaMalloc(&dv, nk * 2));
  CK(cudaMalloc(&dout, nq * 2)); CK(cudaMalloc(&dlse, (size_t)c.b * c.h * c.sq * 4));
  CK(cudaMalloc(&dslopes, slopes.size() * 4));
  CK(cudaMemcpy(dq, q.data(), nq * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dk, k.data(), nk * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dv, v.data(), nk * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dslopes, slopes.data(), slopes.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemset(dout, 0xFF, nq * 2));  // 0xFFFF: NaN in fp16 and bf16
  CK(cudaMemset(dlse, 0xFF, (size_t)c.b * c.h * c.sq * 4));
  p.q = dq; p.k = dk; p.v = dv; p.out = dout; p.softmax_lse = dlse;
  p.q_stride = {(int64_t)c.sq * c.h * ld, (int64_t)c.h * ld, ld};
  p.out_stride = p.q_stride;
  p.k_stride = {(int64_t)c.sk * c.hk * ld, (int64_t)c.hk * ld, ld};
  p.v_stride = p.k_stride;
  if (c.alibi) { p.alibi_slopes = dslopes; p.alibi_batch_stride = c.h; }
  const Status st = run_variant(p);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  char name[256];
  std::snprintf(name, sizeof name, "%s b=%d sq=%d sk=%d h=%d hk=%d d=%d causal=%d win=(%d,%d) cap=%.0f alibi=%d pad=%d",
                c.dt == DType::bf16 ? "bf16" : "f16", c.b, c.sq, c.sk, c.h, c.hk, c.d, c.causal, c.wl,
                c.wr, c.softcap, c.alibi, c.pad);
  if (!st.ok()) {
    std::printf("CHECK FAIL %s: %s\n", name, st.to_string().c_str());
    return false;
  }
  std::vector<uint16_t> out(nq);
  std::vector<float> lse((size_t)c.b * c.h * c.sq);
  CK(cudaMemcpy(out.data(), dout, nq * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(lse.data(), dlse, lse.size() * 4, cudaMemcpyDeviceToHost));
  // every element written (incl. rows not in the reference subset)
  int64_t unwritten = 0;
  for (int64_t r = 0; r < (int64_t)c.b * c.sq; ++r)
    for (int hh = 0; hh < c.h; ++hh)
      for (int x = 0; x < c.d; ++x)
        if (!std::isfinite(to_f(c.dt, out[(r * c.h + hh) * ld + x]))) ++unwritten;
  for (float x : lse)
    if (std::isnan(x)) ++unwritten;
  const int G = c.h / c.hk;
  double num = 0, den = 0, lse_err = 0;
  int lse_bad = 0;
  std::vector<double> s(c.sk), acc(c.d);
  for (int b = 0; b < c.b; ++b)
    for (int h = 0; h < c.h; ++h) {
      const int hk = h / G;
      const double slope = c.alibi ? slopes[b * c.h + h] : 0.0;
      for (int i = 0; i < c.sq; i += (i + c.row_step < c.sq ? c.row_step : 1)) {
        int lo, hi;
        p.key_range(i, &lo, &hi);
        double mx = -INFINITY;
        const uint16_t* qi = &q[(((size_t)b * c.sq + i) * c.h + h) * ld];
        for (int j = lo; j < hi; ++j) {
          const uint16_t* kj = &k[(((size_t)b * c.sk + j) * c.hk + hk) * ld];
          double z = 0;
          for (int x = 0; x < c.d; ++x) z += (double)to_f(c.dt, qi[x]) * to_f(c.dt, kj[x]);
          z *= p.softmax_scale;
          if (c.softcap > 0) z = c.softcap * std::tanh(z / c.softcap);
          if (c.alibi) z += p.is_causal ? slope * j : -slope * std::fabs((double)i + c.sk - c.sq - j);
          s[j] = z;
          mx = std::max(mx, z);
        }
        double l = 0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int j = lo; j < hi; ++j) {
          const double e = std::exp(s[j] - mx);
          l += e;
          const uint16_t* vj = &v[(((size_t)b * c.sk + j) * c.hk + hk) * ld];
          for (int x = 0; x < c.d; ++x) acc[x] += e * to_f(c.dt, vj[x]);
        }
        const double ref_lse = hi > lo ? mx + std::log(l) : INFINITY;
        const float got_lse = lse[((size_t)b * c.h + h) * c.sq + i];
        if (std::isinf(ref_lse)) {
          if (!(std::isinf(got_lse) && got_lse > 0)) ++lse_bad;
        } else {
          lse_err = std::max(lse_err, std::fabs(got_lse - ref_lse));
        }
        const uint16_t* oi = &out[(((size_t)b * c.sq + i) * c.h + h) * ld];
        for (int x = 0; x < c.d; ++x) {
          const double rv = hi > lo ? acc[x] / l : 0.0;
          const double gv = to_f(c.dt, oi[x]);
          num += (gv - rv) * (gv - rv);
          den += rv * rv;
        }
      }
    }
  const double err = std::sqrt(num / std::max(den, 1e-12));
  const double tol = c.dt == DType::bf16 ? 1e-2 : 3e-3;
  const bool ok = unwritten == 0 && err < tol && lse_err < 2e-3 && lse_bad == 0;
  std::printf("CHECK %s %s %s  out rel %.2e  lse max abs %.2e  unwritten/NaN %lld  bad inf-lse %d\n",
              vtag(), ok ? "PASS" : "FAIL", name, err, lse_err, (long long)unwritten, lse_bad);
  cudaFree(dq); cudaFree(dk); cudaFree(dv); cudaFree(dout); cudaFree(dlse); cudaFree(dslopes);
  return ok;
}

// ================================ bench ========================================================
__global__ void fill_random(uint16_t* x, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 0x9E3779B1u ^ seed;
    h ^= h >> 16; h *= 0x85EBCA6Bu; h ^= h >> 13; h *= 0xC2B2AE35u; h ^= h >> 16;
    const float f = (h >> 8) * (2.0f / 16777216.0f) - 1.0f;
    uint32_t u; memcpy(&u, &f, 4);
    x[i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}

static void bench(int s, int d, bool causal) {
  const int b = 16384 / s, h = 2048 / d;
  const size_t n = (size_t)b * s * h * d;
  constexpr int kSets = 3;
  AttnParams ps[kSets];
  std::vector<void*> bufs;
  for (int si = 0; si < kSets; ++si) {
    AttnParams& p = ps[si];
    p.batch = b; p.seqlen_q = s; p.seqlen_k = s; p.nheads = h; p.nheads_k = h; p.head_dim = d;
    p.dtype = DType::bf16; p.device = DeviceKind::cuda; p.softmax_scale = 1.f / std::sqrt((float)d);
    if (causal) { p.is_causal = true; p.window_left = s; p.window_right = 0; }
    void* t[4];
    for (int x = 0; x < 4; ++x) {
      CK(cudaMalloc(&t[x], n * 2));
      if (x < 3) fill_random<<<1024, 256>>>(static_cast<uint16_t*>(t[x]), n, 1234u + 17u * (si * 8 + x));
      bufs.push_back(t[x]);
    }
    float* lse;
    CK(cudaMalloc(&lse, (size_t)b * h * s * 4));
    bufs.push_back(lse);
    p.q = t[0]; p.k = t[1]; p.v = t[2]; p.out = t[3]; p.softmax_lse = lse;
    p.q_stride = {(int64_t)s * h * d, (int64_t)h * d, d};
    p.k_stride = p.v_stride = p.out_stride = p.q_stride;
  }
  CK(cudaDeviceSynchronize());
  Status st = run_variant(ps[0]);
  if (!st.ok()) { std::printf("BENCH d=%d s=%d causal=%d %s\n", d, s, causal, st.to_string().c_str()); return; }
  for (int i = 0; i < 5; ++i) (void)run_variant(ps[i % kSets]);
  CK(cudaDeviceSynchronize());
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int i = 0; i < 30; ++i) {
    CK(cudaEventRecord(e0));
    (void)run_variant(ps[i % kSets]);
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float t = 0; CK(cudaEventElapsedTime(&t, e0, e1));
    ms.push_back(t);
  }
  CK(cudaGetLastError());
  std::sort(ms.begin(), ms.end());
  const double med = ms[ms.size() / 2];
  const double fl = 4.0 * b * h * (double)s * s * d / (causal ? 2 : 1);
  std::printf("BENCH fwd_sm90 %-6s bf16 d=%3d s=%5d causal=%d  %8.3f ms  %6.1f TFLOP/s  (min %.3f max %.3f)\n",
              vtag(), d, s, causal, med, fl / med / 1e9, ms.front(), ms.back());
  cudaEventDestroy(e0); cudaEventDestroy(e1);
  for (void* x : bufs) cudaFree(x);
}

int main(int argc, char** argv) {
  bool do_gemm = argc == 1, do_check = argc == 1, do_bench = argc == 1, swapped = false;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "gemm")) do_gemm = true;
    if (!strcmp(argv[i], "gemm-swap")) do_gemm = swapped = true;
    if (!strcmp(argv[i], "simple") || !strcmp(argv[i], "s3"))
      g_variant = argv[i];
    if (!strcmp(argv[i], "check")) do_check = true;
    if (!strcmp(argv[i], "bench")) do_bench = true;
  }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device %s sm_%d%d, %d SMs\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
  std::mt19937_64 rng(20261126);
  int fails = 0;
  if (do_gemm) {
    fails += !gemm_test<__nv_bfloat16, 64>(DType::bf16, rng, swapped);
    fails += !gemm_test<__nv_bfloat16, 128>(DType::bf16, rng, swapped);
    fails += !gemm_test<__half, 128>(DType::f16, rng, swapped);
  }
  if (do_check) {
    const DType B = DType::bf16, F = DType::f16;
    std::vector<Case> cases = {
        {2, 128, 128, 2, 2, 64, false, -1, -1, 0.f, false, B},
        {2, 300, 457, 4, 2, 128, false, -1, -1, 0.f, false, B},
        {1, 517, 517, 2, 1, 64, true, -1, -1, 0.f, false, B},
        {2, 200, 1000, 2, 2, 128, true, -1, -1, 0.f, false, B},
        {1, 1000, 200, 2, 2, 128, true, -1, -1, 0.f, false, B},   // fully masked rows on top
        {2, 1, 333, 3, 3, 64, false, -1, -1, 0.f, false, B},      // seqlen_q 1
        {1, 77, 1, 2, 2, 128, false, -1, -1, 0.f, false, B},      // seqlen_k 1
        {1, 700, 700, 2, 2, 128, false, 100, 50, 0.f, false, B},  // local window
        {1, 333, 900, 2, 2, 64, false, 30, 0, 0.f, false, F},     // sliding window, sq < sk
        {1, 260, 390, 2, 2, 96, false, -1, -1, 30.f, true, F},    // softcap + ALiBi, d < bucket
        {3, 129, 129, 2, 2, 64, true, -1, -1, 0.f, true, F},      // causal ALiBi (pure-causal mode)
        {1, 100, 150, 2, 2, 32, false, -1, -1, 0.f, false, B},    // d 32 in bucket 64
        {2, 190, 260, 4, 1, 128, true, -1, -1, 0.f, false, B, 8}, // MQA, padded strides
        {1, 2048, 2048, 2, 2, 128, true, -1, -1, 0.f, false, B, 0, 5},
        {1, 1536, 1536, 2, 2, 64, false, -1, -1, 0.f, false, F, 0, 7},
        {2, 385, 385, 2, 2, 128, false, -1, -1, 0.f, false, F},
    };
    for (const Case& c : cases) fails += !run_case(c, rng);
  }
  if (do_bench)
    for (int d : {64, 128})
      for (int s : {1024, 4096, 16384})
        for (bool causal : {false, true}) bench(s, d, causal);
  std::printf("SELFTEST %s (%d failures)\n", fails ? "FAILED" : "PASSED", fails);
  return fails ? 1 : 0;
}
