/* The bare C call's cost per decode step, for the binding-overhead comparison
 * (python/tests/device/overhead.py times the same problem through flashplus._core and
 * flash_attn.flash_attn_with_kvcache). A problem small enough that the host is the bottleneck:
 * N calls are enqueued back to back on the default stream, then one synchronize; the time per
 * call is the host's cost of one call (validation, launch), what Python adds on top of.
 * Build (CUDA): cc -O2 c_call_overhead.c -I kernels/include -I $CUDA/include <libflashplus> -lcudart
 * Build (CPU only, the binding's cost on the CPU backend: the tiny forward of
 * python/bench/binding_ctypes_vs_core.py): cc -O2 -DFP_CPU_ONLY c_call_overhead.c -I kernels/include
 *   <libflashplus>
 * Usage: c_call_overhead [calls]  -> prints one JSON line */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "flashplus/flashplus_c.h"

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

#ifdef FP_CPU_ONLY
int main(int argc, char** argv) {
  const int calls = argc > 1 ? atoi(argv[1]) : 20000;
  float q[8], o[8], l[1];
  for (int i = 0; i < 8; ++i) q[i] = 0.25f * (float)(i + 1);
  int64_t s4[4] = {1, 1, 1, 8}, s3[3] = {1, 1, 1};
  DLTensor tq = {q, {kDLCPU, 0}, 4, {kDLFloat, 32, 1}, s4, NULL, 0};
  DLTensor to = {o, {kDLCPU, 0}, 4, {kDLFloat, 32, 1}, s4, NULL, 0};
  DLTensor tl = {l, {kDLCPU, 0}, 3, {kDLFloat, 32, 1}, s3, NULL, 0};
  flashplus_fwd_args a = {0};
  a.struct_size = sizeof(a);
  a.q = a.k = a.v = &tq;
  a.out = &to;
  a.softmax_lse = &tl;
  a.window_size_left = a.window_size_right = -1;
  a.opts.backend = FLASHPLUS_BACKEND_CPU;
  a.opts.num_threads = 1;
  for (int i = 0; i < 200; ++i)
    if (flashplus_mha_fwd(&a) != FLASHPLUS_OK) {
      fprintf(stderr, "c_call_overhead: %s\n", flashplus_last_error());
      return 1;
    }
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    double t0 = now_us();
    for (int i = 0; i < calls; ++i) flashplus_mha_fwd(&a);
    double per = (now_us() - t0) / calls;
    if (per < best) best = per;
  }
  printf("{\"what\": \"C ABI flashplus_mha_fwd (cpu, tiny)\", \"calls\": %d, \"us_per_call_min_of_5\": %.3f}\n",
         calls, best);
  return 0;
}
#else
#include <cuda_runtime.h>

static DLTensor tensor(void* data, int code, int bits, int ndim, int64_t* shape) {
  DLTensor t = {data, {kDLCUDA, 0}, ndim, {(uint8_t)code, (uint8_t)bits, 1}, shape, NULL, 0};
  return t;
}

int main(int argc, char** argv) {
  const int calls = argc > 1 ? atoi(argv[1]) : 20000;
  /* b 1, one query token, 8 heads over 8 kv heads, d 128, a 256-token cache. */
  int64_t qs[4] = {1, 1, 8, 128}, cs[4] = {1, 256, 8, 128}, ls[3] = {1, 8, 1}, ss[1] = {1};
  void *q, *kc, *vc, *o, *l, *sl;
  cudaMalloc(&q, 2 * 8 * 128);
  cudaMalloc(&o, 2 * 8 * 128);
  cudaMalloc(&kc, 2 * 256 * 8 * 128);
  cudaMalloc(&vc, 2 * 256 * 8 * 128);
  cudaMalloc(&l, 4 * 8);
  cudaMalloc(&sl, 4);
  cudaMemset(q, 0x3c, 2 * 8 * 128); /* 0x3c3c: fp16 ~1.06, a non-zero value */
  cudaMemset(kc, 0x3a, 2 * 256 * 8 * 128);
  cudaMemset(vc, 0x3b, 2 * 256 * 8 * 128);
  int len = 200;
  cudaMemcpy(sl, &len, 4, cudaMemcpyHostToDevice);
  DLTensor tq = tensor(q, kDLFloat, 16, 4, qs), tk = tensor(kc, kDLFloat, 16, 4, cs),
           tv = tensor(vc, kDLFloat, 16, 4, cs), to = tensor(o, kDLFloat, 16, 4, qs),
           tl = tensor(l, kDLFloat, 32, 3, ls), ts = tensor(sl, kDLInt, 32, 1, ss);
  flashplus_kvcache_args a = {0};
  a.struct_size = sizeof(a);
  a.q = &tq;
  a.kcache = &tk;
  a.vcache = &tv;
  a.cache_seqlens = &ts;
  a.out = &to;
  a.softmax_lse = &tl;
  a.is_causal = 1;
  a.window_size_left = a.window_size_right = -1;
  a.num_splits = 1;
  for (int i = 0; i < 200; ++i) /* warm-up: lazy init, tuned tables */
    if (flashplus_mha_fwd_kvcache(&a) != FLASHPLUS_OK) {
      fprintf(stderr, "c_call_overhead: %s\n", flashplus_last_error());
      return 1;
    }
  cudaDeviceSynchronize();
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    double t0 = now_us();
    for (int i = 0; i < calls; ++i) flashplus_mha_fwd_kvcache(&a);
    cudaDeviceSynchronize();
    double per = (now_us() - t0) / calls;
    if (per < best) best = per;
  }
  printf("{\"what\": \"C ABI flashplus_mha_fwd_kvcache\", \"calls\": %d, \"us_per_call_min_of_5\": %.3f}\n",
         calls, best);
  return 0;
}
#endif
