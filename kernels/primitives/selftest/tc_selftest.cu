// Self-test and benchmark of the tensor-core kernels (run_fwd_tc / run_bwd_tc) on a GPU, without
// the rest of the library: random inputs, an fp64 CPU reference computed from the already-rounded
// 16-bit inputs, poisoned outputs (every element must be written), then CUDA-event timings on
// FlashAttention's benchmark shapes.
//
// Build (see docs/GPU_KERNELS.md):  nvcc ... tc_selftest.cu ../../gpu/fwd/*.cu ../../gpu/bwd/*.cu
// Run:  tc_selftest [check] [bench] [configs]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "flashplus/numerics.h"
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

#define CK(x)                                                                            \
  do {                                                                                   \
    cudaError_t e_ = (x);                                                                \
    if (e_ != cudaSuccess) {                                                             \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(1);                                                                      \
    }                                                                                    \
  } while (0)

struct Case {
  int b, sq, sk, h, hk, d;
  bool causal;
  int wl, wr;  // window as passed to the API (-1 = unbounded), before canonicalisation
  float softcap;
  bool alibi;
  DType dt;
  bool deterministic = false;
  int pad = 0;  // extra elements per (row, head) slot: non-contiguous strides
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

struct Host {
  std::vector<uint16_t> q, k, v, dout;
  std::vector<float> slopes;
};

static float to_f(DType t, uint16_t x) {
  return t == DType::bf16 ? bf16_bits_to_float(x) : half_bits_to_float(x);
}
static uint16_t from_f(DType t, float x) {
  return t == DType::bf16 ? float_to_bf16_bits(x) : float_to_half_bits(x);
}

struct Ref {
  std::vector<double> out, lse, dq, dk, dv;
};

// fp64 reference, one (b, h) at a time; tensors (b, s, h, d) with slot size ld = d + pad.
static Ref reference(const Case& c, const AttnParams& p, const Host& H, bool bwd) {
  const int ld = c.d + c.pad;
  auto Q = [&](int b, int i, int h, int x) {
    return (double)to_f(c.dt, H.q[(((int64_t)b * c.sq + i) * c.h + h) * ld + x]);
  };
  auto K = [&](int b, int j, int h, int x) {
    return (double)to_f(c.dt, H.k[(((int64_t)b * c.sk + j) * c.hk + h) * ld + x]);
  };
  auto V = [&](int b, int j, int h, int x) {
    return (double)to_f(c.dt, H.v[(((int64_t)b * c.sk + j) * c.hk + h) * ld + x]);
  };
  auto DO = [&](int b, int i, int h, int x) {
    return (double)to_f(c.dt, H.dout[(((int64_t)b * c.sq + i) * c.h + h) * ld + x]);
  };
  Ref r;
  r.out.assign((size_t)c.b * c.sq * c.h * c.d, 0.0);
  r.lse.assign((size_t)c.b * c.h * c.sq, 0.0);
  if (bwd) {
    r.dq.assign((size_t)c.b * c.sq * c.h * c.d, 0.0);
    r.dk.assign((size_t)c.b * c.sk * c.hk * c.d, 0.0);
    r.dv.assign((size_t)c.b * c.sk * c.hk * c.d, 0.0);
  }
  const int G = c.h / c.hk;
  std::vector<double> P(c.sk), Tn(c.sk), dP(c.sk);
  for (int b = 0; b < c.b; ++b)
    for (int h = 0; h < c.h; ++h) {
      const int hk = h / G;
      const double slope = c.alibi ? H.slopes[b * c.h + h] : 0.0;
      for (int i = 0; i < c.sq; ++i) {
        int lo, hi;
        p.key_range(i, &lo, &hi);
        double mx = -INFINITY;
        for (int j = lo; j < hi; ++j) {
          double s = 0;
          for (int x = 0; x < c.d; ++x) s += Q(b, i, h, x) * K(b, j, hk, x);
          s *= p.softmax_scale;
          double th = 0;
          if (c.softcap > 0) {
            th = std::tanh(s / c.softcap);
            s = c.softcap * th;
          }
          if (c.alibi)
            s += p.is_causal ? slope * j : -slope * std::fabs((double)i + c.sk - c.sq - j);
          P[j] = s;
          Tn[j] = th;
          mx = std::max(mx, s);
        }
        double l = 0;
        for (int j = lo; j < hi; ++j) l += std::exp(P[j] - mx);
        const int64_t lidx = ((int64_t)b * c.h + h) * c.sq + i;
        r.lse[lidx] = hi > lo ? mx + std::log(l) : INFINITY;
        const int64_t oidx = (((int64_t)b * c.sq + i) * c.h + h) * c.d;
        for (int j = lo; j < hi; ++j) P[j] = std::exp(P[j] - r.lse[lidx]);
        for (int j = lo; j < hi; ++j)
          for (int x = 0; x < c.d; ++x) r.out[oidx + x] += P[j] * V(b, j, hk, x);
        if (!bwd || hi <= lo) continue;
        double Di = 0;
        for (int x = 0; x < c.d; ++x) Di += DO(b, i, h, x) * r.out[oidx + x];
        for (int j = lo; j < hi; ++j) {
          double s = 0;
          for (int x = 0; x < c.d; ++x) s += DO(b, i, h, x) * V(b, j, hk, x);
          double ds = P[j] * (s - Di);
          if (c.softcap > 0) ds *= 1 - Tn[j] * Tn[j];
          ds *= p.softmax_scale;
          const int64_t kidx = (((int64_t)b * c.sk + j) * c.hk + hk) * c.d;
          for (int x = 0; x < c.d; ++x) {
            r.dq[oidx + x] += ds * K(b, j, hk, x);
            r.dk[kidx + x] += ds * Q(b, i, h, x);
            r.dv[kidx + x] += P[j] * DO(b, i, h, x);
          }
        }
      }
    }
  return r;
}

struct Dev {
  void *q, *k, *v, *out, *dout, *dq, *dk, *dv;
  float *lse, *slopes, *softd;
};

static double rel_err(const std::vector<uint16_t>& got, DType dt, const std::vector<double>& ref,
                      int rows, int heads, int d, int ld, int* nan_count) {
  double num = 0, den = 0;
  for (int64_t r = 0; r < (int64_t)rows; ++r)
    for (int h = 0; h < heads; ++h)
      for (int x = 0; x < d; ++x) {
        const double gv = to_f(dt, got[(r * heads + h) * ld + x]);
        const double rv = ref[(r * heads + h) * d + x];
        if (!std::isfinite(gv)) ++*nan_count;
        num += (gv - rv) * (gv - rv);
        den += rv * rv;
      }
  // Relative L2 error, with an absolute floor (rms 1e-3 of unit-scale data) for outputs that
  // are analytically ~0 (e.g. dq, dk with one key: dS = P (dP - D) = 0).
  const double n = (double)rows * heads * d;
  return std::sqrt(num / std::max(den, 1e-6 * std::max(n, 1.0)));
}

static bool run_case(const Case& c, uint64_t seed, bool bwd, std::mt19937_64& rng) {
  (void)seed;
  const int ld = c.d + c.pad;
  AttnParams p;
  p.batch = c.b; p.seqlen_q = c.sq; p.seqlen_k = c.sk; p.nheads = c.h; p.nheads_k = c.hk;
  p.head_dim = c.d; p.dtype = c.dt; p.device = DeviceKind::cuda;
  p.softmax_scale = 1.f / std::sqrt((float)c.d);
  p.softcap = c.softcap;
  canon(c, p);
  p.deterministic = c.deterministic;
  Host H;
  std::normal_distribution<float> nd(0.f, 1.f);
  const size_t nq = (size_t)c.b * c.sq * c.h * ld, nk = (size_t)c.b * c.sk * c.hk * ld;
  H.q.resize(nq); H.k.resize(nk); H.v.resize(nk); H.dout.resize(nq);
  for (auto& x : H.q) x = from_f(c.dt, nd(rng));
  for (auto& x : H.k) x = from_f(c.dt, nd(rng));
  for (auto& x : H.v) x = from_f(c.dt, nd(rng));
  for (auto& x : H.dout) x = from_f(c.dt, nd(rng));
  if (c.alibi) {
    H.slopes.resize(c.b * c.h);
    for (auto& s : H.slopes) s = std::uniform_real_distribution<float>(0.01f, 0.5f)(rng);
  }
  Dev D{};
  CK(cudaMalloc(&D.q, nq * 2)); CK(cudaMalloc(&D.k, nk * 2)); CK(cudaMalloc(&D.v, nk * 2));
  CK(cudaMalloc(&D.out, nq * 2)); CK(cudaMalloc(&D.dout, nq * 2)); CK(cudaMalloc(&D.dq, nq * 2));
  CK(cudaMalloc(&D.dk, nk * 2)); CK(cudaMalloc(&D.dv, nk * 2));
  CK(cudaMalloc(&D.lse, (size_t)c.b * c.h * c.sq * 4 + 4));
  CK(cudaMalloc(&D.softd, (size_t)c.b * c.h * c.sq * 4 + 4));
  CK(cudaMalloc(&D.slopes, c.b * c.h * 4 + 4));
  CK(cudaMemcpy(D.q, H.q.data(), nq * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(D.k, H.k.data(), nk * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(D.v, H.v.data(), nk * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(D.dout, H.dout.data(), nq * 2, cudaMemcpyHostToDevice));
  if (c.alibi) CK(cudaMemcpy(D.slopes, H.slopes.data(), c.b * c.h * 4, cudaMemcpyHostToDevice));
  // poison outputs: 0xFFFF is a NaN in fp16 and bf16, 0xFFFFFFFF a NaN in fp32
  CK(cudaMemset(D.out, 0xFF, nq * 2)); CK(cudaMemset(D.lse, 0xFF, (size_t)c.b * c.h * c.sq * 4));
  p.q = D.q; p.k = D.k; p.v = D.v; p.out = D.out; p.softmax_lse = D.lse;
  p.q_stride = {(int64_t)c.sq * c.h * ld, (int64_t)c.h * ld, ld};
  p.out_stride = p.q_stride;
  p.k_stride = {(int64_t)c.sk * c.hk * ld, (int64_t)c.hk * ld, ld};
  p.v_stride = p.k_stride;
  if (c.alibi) { p.alibi_slopes = D.slopes; p.alibi_batch_stride = c.h; }
  Status st = gpu::run_fwd_tc(p, gpu::KernelConfig{}, nullptr);
  CK(cudaDeviceSynchronize());
  char name[256];
  std::snprintf(name, sizeof name,
                "%s b=%d sq=%d sk=%d h=%d hk=%d d=%d causal=%d win=(%d,%d) cap=%.0f alibi=%d pad=%d det=%d",
                dtype_name(c.dt), c.b, c.sq, c.sk, c.h, c.hk, c.d, c.causal, c.wl, c.wr, c.softcap,
                c.alibi, c.pad, c.deterministic);
  if (!st.ok()) {
    std::printf("FWD %-90s SKIP %s\n", name, st.to_string().c_str());
    return true;
  }
  Ref R = reference(c, p, H, bwd);
  std::vector<uint16_t> out(nq);
  std::vector<float> lse((size_t)c.b * c.h * c.sq);
  CK(cudaMemcpy(out.data(), D.out, nq * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(lse.data(), D.lse, lse.size() * 4, cudaMemcpyDeviceToHost));
  int bad = 0;
  const double eo = rel_err(out, c.dt, R.out, c.b * c.sq, c.h, c.d, ld, &bad);
  double el = 0;
  int lse_bad = 0;
  for (size_t i = 0; i < lse.size(); ++i) {
    if (std::isinf(R.lse[i])) { if (!(std::isinf(lse[i]) && lse[i] > 0)) ++lse_bad; continue; }
    if (!std::isfinite(lse[i])) { ++lse_bad; continue; }
    el = std::max(el, std::fabs(lse[i] - R.lse[i]));
  }
  const double tol = c.dt == DType::bf16 ? 2e-2 : 4e-3;
  bool ok = eo < tol && el < 2e-3 && bad == 0 && lse_bad == 0;
  std::printf("FWD %-90s out_rel=%.2e lse_abs=%.2e nonfinite=%d lse_bad=%d %s\n", name, eo, el, bad,
              lse_bad, ok ? "PASS" : "FAIL");
  if (bwd) {
    CK(cudaMemset(D.dq, 0xFF, nq * 2)); CK(cudaMemset(D.dk, 0xFF, nk * 2));
    CK(cudaMemset(D.dv, 0xFF, nk * 2));
    p.dout = D.dout; p.dq = D.dq; p.dk = D.dk; p.dv = D.dv; p.softmax_d = D.softd;
    p.dout_stride = p.q_stride; p.dq_stride = p.q_stride; p.dk_stride = p.k_stride;
    p.dv_stride = p.k_stride;
    const Status bst = gpu::run_bwd_tc(p, gpu::KernelConfig{}, nullptr);
    CK(cudaDeviceSynchronize());
    if (!bst.ok()) {
      std::printf("BWD %-90s SKIP %s\n", name, bst.to_string().c_str());
    } else {
      std::vector<uint16_t> dq(nq), dk(nk), dv(nk);
      CK(cudaMemcpy(dq.data(), D.dq, nq * 2, cudaMemcpyDeviceToHost));
      CK(cudaMemcpy(dk.data(), D.dk, nk * 2, cudaMemcpyDeviceToHost));
      CK(cudaMemcpy(dv.data(), D.dv, nk * 2, cudaMemcpyDeviceToHost));
      int nb = 0;
      const double e1 = rel_err(dq, c.dt, R.dq, c.b * c.sq, c.h, c.d, ld, &nb);
      const double e2 = rel_err(dk, c.dt, R.dk, c.b * c.sk, c.hk, c.d, ld, &nb);
      const double e3 = rel_err(dv, c.dt, R.dv, c.b * c.sk, c.hk, c.d, ld, &nb);
      bool repro = true;
      if (c.deterministic) {  // second run must be bit-identical
        const Status st2 = gpu::run_bwd_tc(p, gpu::KernelConfig{}, nullptr);
        CK(cudaDeviceSynchronize());
        std::vector<uint16_t> dq2(nq);
        repro = st2.ok();
        CK(cudaMemcpy(dq2.data(), D.dq, nq * 2, cudaMemcpyDeviceToHost));
        repro = repro && std::memcmp(dq.data(), dq2.data(), nq * 2) == 0;
      }
      const double btol = c.dt == DType::bf16 ? 3e-2 : 8e-3;
      const bool bok = e1 < btol && e2 < btol && e3 < btol && nb == 0 && repro;
      std::printf("BWD %-90s dq=%.2e dk=%.2e dv=%.2e nonfinite=%d repro=%d %s\n", name, e1, e2, e3,
                  nb, repro, bok ? "PASS" : "FAIL");
      ok = ok && bok;
    }
  }
  cudaFree(D.q); cudaFree(D.k); cudaFree(D.v); cudaFree(D.out); cudaFree(D.dout);
  cudaFree(D.dq); cudaFree(D.dk); cudaFree(D.dv); cudaFree(D.lse); cudaFree(D.slopes);
  cudaFree(D.softd);
  return ok;
}

// ---- benchmark --------------------------------------------------------------------------------
// Uniform [-1, 1) bf16 values from a hash of (seed, index): fills large inputs on the device.
__global__ void fill_random_bf16(uint16_t* x, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 0x9E3779B1u ^ seed;
    h ^= h >> 16; h *= 0x85EBCA6Bu; h ^= h >> 13; h *= 0xC2B2AE35u; h ^= h >> 16;
    const float f = (h >> 8) * (2.0f / 16777216.0f) - 1.0f;
    uint32_t u; memcpy(&u, &f, 4);
    x[i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}

static void bench(int s, int d, bool causal, bool do_bwd, const gpu::KernelConfig& cfg,
                  const char* label) {
  const int b = 16384 / s, h = 2048 / d;
  const DType dt = DType::bf16;
  const size_t n = (size_t)b * s * h * d;
  constexpr int kSets = 3;  // rotate input sets so that L2 does not hold them
  std::vector<void*> bufs;
  AttnParams ps[kSets];
  for (int si = 0; si < kSets; ++si) {
    AttnParams& p = ps[si];
    p.batch = b; p.seqlen_q = s; p.seqlen_k = s; p.nheads = h; p.nheads_k = h; p.head_dim = d;
    p.dtype = dt; p.device = DeviceKind::cuda; p.softmax_scale = 1.f / std::sqrt((float)d);
    if (causal) { p.is_causal = true; p.window_left = s; p.window_right = 0; }
    void* t[8];
    for (int x = 0; x < 8; ++x) {
      CK(cudaMalloc(&t[x], n * 2));
      if (x < 4) fill_random_bf16<<<1024, 256>>>(static_cast<uint16_t*>(t[x]), n, 1234u + 17u * (si * 8 + x));
      bufs.push_back(t[x]);
    }
    float* lse; float* sd;
    CK(cudaMalloc(&lse, (size_t)b * h * s * 4)); CK(cudaMalloc(&sd, (size_t)b * h * s * 4));
    bufs.push_back(lse); bufs.push_back(sd);
    p.q = t[0]; p.k = t[1]; p.v = t[2]; p.dout = t[3]; p.out = t[4]; p.dq = t[5]; p.dk = t[6];
    p.dv = t[7]; p.softmax_lse = lse;
    p.q_stride = {(int64_t)s * h * d, (int64_t)h * d, d};
    p.k_stride = p.v_stride = p.out_stride = p.dout_stride = p.dq_stride = p.dk_stride =
        p.dv_stride = p.q_stride;
    Status st = gpu::run_fwd_tc(p, gpu::KernelConfig{}, nullptr);  // out/lse for the backward
    if (!st.ok()) { std::printf("bench fwd: %s\n", st.to_string().c_str()); return; }
  }
  CK(cudaDeviceSynchronize());
  for (int mode = 0; mode < (do_bwd ? 3 : 1); ++mode) {  // fwd, bwd, bwd deterministic
    for (auto& p : ps) p.deterministic = mode == 2;
    auto launch = [&](int i) {
      return mode == 0 ? gpu::run_fwd_tc(ps[i % kSets], cfg, nullptr)
                       : gpu::run_bwd_tc(ps[i % kSets], cfg, nullptr);
    };
    Status st = launch(0);
    if (!st.ok()) {
      std::printf("BENCH %-4s %-12s d=%3d s=%5d causal=%d  %s\n", mode == 0 ? "fwd" : mode == 1 ? "bwd" : "bwdD", label, d, s,
                  causal, st.to_string().c_str());
      continue;
    }
    for (int i = 0; i < 5; ++i) (void)launch(i);
    CK(cudaDeviceSynchronize());
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
    std::vector<float> ms;
    for (int i = 0; i < 30; ++i) {
      CK(cudaEventRecord(e0));
      (void)launch(i);
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      float t; CK(cudaEventElapsedTime(&t, e0, e1)); ms.push_back(t);
    }
    CK(cudaGetLastError());
    std::sort(ms.begin(), ms.end());
    const double med = ms[ms.size() / 2];
    const double fl = 4.0 * b * h * (double)s * s * d / (causal ? 2 : 1) * (mode ? 2.5 : 1.0);
    std::printf("BENCH %-4s %-12s d=%3d s=%5d causal=%d b=%d h=%d  %8.3f ms  %6.1f TFLOP/s (min %.3f max %.3f)\n",
                mode == 0 ? "fwd" : mode == 1 ? "bwd" : "bwdD", label, d, s, causal, b, h, med, fl / med / 1e9, ms.front(),
                ms.back());
    cudaEventDestroy(e0); cudaEventDestroy(e1);
  }
  for (void* x : bufs) cudaFree(x);
}

int main(int argc, char** argv) {
  bool do_check = false, do_bench = false, do_cfg = false, do_bwd = true;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "check")) do_check = true;
    if (!std::strcmp(argv[i], "bench")) do_bench = true;
    if (!std::strcmp(argv[i], "configs")) do_cfg = true;
    if (!std::strcmp(argv[i], "nobwd")) do_bwd = false;
    if (!std::strcmp(argv[i], "one") && i + 3 < argc) {  // one S D CAUSAL: a single bench shape
      CK(cudaSetDevice(0));
      bench(std::atoi(argv[i + 1]), std::atoi(argv[i + 2]), std::atoi(argv[i + 3]) != 0, true,
            gpu::KernelConfig{}, "one");
      return 0;
    }
  }
  if (!do_check && !do_bench && !do_cfg) do_check = do_bench = true;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device %s sm_%d%d, %d SMs\n", prop.name, prop.major, prop.minor,
              prop.multiProcessorCount);
  int fails = 0, total = 0;
  if (do_check) {
    const uint64_t seed = 20261125;
    std::mt19937_64 rng(seed);
    std::printf("seed %llu\n", (unsigned long long)seed);
    std::vector<Case> cases;
    for (DType dt : {DType::bf16, DType::f16})
      for (int d : {64, 128, 256}) {
        cases.push_back({2, 257, 257, 4, 4, d, false, -1, -1, 0.f, false, dt});
        cases.push_back({2, 257, 257, 4, 2, d, true, -1, -1, 0.f, false, dt});
      }
    const DType bf = DType::bf16;
    cases.push_back({1, 113, 300, 4, 1, 128, true, -1, -1, 0.f, false, bf});   // MQA, sq < sk
    cases.push_back({1, 300, 113, 4, 2, 128, true, -1, -1, 0.f, false, bf});   // sq > sk: empty rows
    cases.push_back({2, 200, 333, 2, 2, 128, false, 37, 11, 0.f, false, bf});  // window
    cases.push_back({2, 200, 333, 2, 2, 64, true, 50, -1, 0.f, false, bf});    // causal + left window
    cases.push_back({2, 190, 190, 4, 4, 128, false, -1, -1, 30.f, false, bf}); // softcap
    cases.push_back({2, 190, 250, 4, 2, 128, true, -1, -1, 0.f, true, bf});    // alibi, pure causal
    cases.push_back({2, 190, 250, 4, 2, 64, false, -1, -1, 20.f, true, bf});   // alibi |dist| + cap
    cases.push_back({2, 150, 150, 3, 3, 96, false, -1, -1, 0.f, false, bf});   // d < bucket
    cases.push_back({1, 130, 170, 2, 1, 40, true, -1, -1, 0.f, false, bf});    // d=40 in bucket 64
    cases.push_back({1, 100, 100, 2, 2, 200, false, -1, -1, 0.f, false, bf});  // d=200 in 256
    cases.push_back({2, 129, 129, 2, 2, 128, false, -1, -1, 0.f, false, bf, false, 8});  // strides
    cases.push_back({1, 1, 77, 2, 2, 128, true, -1, -1, 0.f, false, bf});      // seqlen_q 1
    cases.push_back({1, 64, 1, 2, 2, 64, false, -1, -1, 0.f, false, bf});      // seqlen_k 1
    cases.push_back({1, 40, 0, 2, 2, 64, false, -1, -1, 0.f, false, bf});      // seqlen_k 0
    cases.push_back({2, 257, 257, 4, 2, 128, true, -1, -1, 0.f, false, bf, true});  // deterministic
    cases.push_back({1, 1025, 1025, 2, 2, 128, true, -1, -1, 0.f, false, bf});
    for (const Case& c : cases) {
      ++total;
      if (!run_case(c, seed, do_bwd, rng)) ++fails;
    }
    std::printf("CHECK %d/%d cases passed\n", total - fails, total);
  }
  if (do_cfg) {  // every compiled backward tile (block_n = keys, block_m = queries)
    struct T { int d, bn, bm, nw; } tiles[] = {{128, 128, 64, 8}, {128, 64, 64, 4}, {64, 128, 64, 8},
                                               {64, 64, 64, 4}};
    for (auto t : tiles)
      for (bool causal : {false, true}) {
        gpu::KernelConfig cfg; cfg.block_m = t.bm; cfg.block_n = t.bn; cfg.num_warps = t.nw;
        char label[32]; std::snprintf(label, sizeof label, "n%dm%dw%d", t.bn, t.bm, t.nw);
        bench(4096, t.d, causal, true, cfg, label);
      }
  }
  if (do_cfg) {  // every compiled d128/d64 tile, non-causal and causal, s=4096
    struct T { int d, bm, bn, nw; } tiles[] = {{128, 128, 64, 8}, {128, 128, 64, 4}, {128, 128, 32, 4},
                                               {128, 64, 64, 4}, {64, 128, 64, 4}, {64, 128, 128, 8},
                                               {64, 64, 128, 4}};
    for (auto t : tiles)
      for (bool causal : {false, true}) {
        gpu::KernelConfig cfg; cfg.block_m = t.bm; cfg.block_n = t.bn; cfg.num_warps = t.nw;
        char label[32]; std::snprintf(label, sizeof label, "m%dn%dw%d", t.bm, t.bn, t.nw);
        bench(4096, t.d, causal, false, cfg, label);
      }
  }
  if (do_bench)
    for (int d : {64, 128})
      for (int s : {1024, 4096, 16384})
        for (bool causal : {false, true}) bench(s, d, causal, do_bwd, gpu::KernelConfig{}, "default");
  return fails ? 1 : 0;
}
