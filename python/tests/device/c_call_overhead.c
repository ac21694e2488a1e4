/* The bare C call's cost per decode step, for the binding-overhead comparison
 * (python/tests/device/overhead.py times the same problem through flashplus._core and
 * flash_attn.flash_attn_with_kvcache). A problem small enough that the host is the bottleneck:
 * N calls are enqueued back to back on the default stream, then one synchronize; the time per
 * call is the host's cost of one call (validation, launch), what Python adds on top of.
 * Build (CUDA): cc -O2 c_call_overhead.c -I kernels/include -I $CUDA/include <libflashplus> -lcudart
 * Usage: c_call_overhead [calls]  -> prints one JSON line */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "flashplus/flashplus_c.h"

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

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
