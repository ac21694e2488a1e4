// The one parameter struct every backend receives.
//
// It is built and validated once, at the API boundary, by make_fwd_params()/make_bwd_params()
// (kernels/src/params.cpp). Backends and kernels never re-check it. It is a plain struct (no
// owning members) so GPU kernels can take it by value.
#pragma once
#include <cstdint>

#include "flashplus/tensor.h"

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FLASHPLUS_HD __host__ __device__
#else
#define FLASHPLUS_HD
#endif

namespace flashplus {

// Strides of a (batch, seqlen, heads, head_dim) tensor, in elements. The head_dim stride is 1.
struct Strides3 {
  int64_t batch = 0;
  int64_t row = 0;   // seqlen
  int64_t head = 0;
};

struct AttnParams {
  // ---- problem size -------------------------------------------------------------------------
  int batch = 0;
  int seqlen_q = 0;
  int seqlen_k = 0;
  int nheads = 0;     // query heads
  int nheads_k = 0;   // key/value heads; nheads % nheads_k == 0
  int head_dim = 0;   // 1..256
  FLASHPLUS_HD int group() const { return nheads / nheads_k; }  // query heads per kv head (GQA/MQA)

  DType dtype = DType::f32;  // storage type of q, k, v, out (and dout, dq, dk, dv)
  DeviceKind device = DeviceKind::cpu;
  int device_index = 0;

  // ---- forward tensors ----------------------------------------------------------------------
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* softmax_lse = nullptr;  // (batch, nheads, seqlen_q), contiguous fp32
  Strides3 q_stride, k_stride, v_stride, out_stride;

  // ---- scores -------------------------------------------------------------------------------
  float softmax_scale = 0.f;  // resolved: never 0 here (0 at the API means 1/sqrt(head_dim))
  float softcap = 0.f;        // 0 = off; else s <- softcap * tanh(s / softcap) after scaling

  // ---- masking (canonicalised as upstream, ../shared/API.md §2.3) ---------------------------
  // After canonicalisation the window is either fully unbounded (both -1) or fully bounded
  // (both >= 0). Key j is visible to query i iff 0 <= j < seqlen_k and, when bounded,
  //   i + seqlen_k - seqlen_q - window_left <= j <= i + seqlen_k - seqlen_q + window_right.
  int window_left = -1;
  int window_right = -1;
  // "Pure causal" mode (unbounded left, right = 0 before the one-sided replacement). Only
  // affects ALiBi: upstream adds +slope*j instead of -slope*|i + sk - sq - j| in this mode,
  // which leaves out/gradients unchanged but shifts softmax_lse (API.md §2.5).
  bool is_causal = false;

  // ---- ALiBi --------------------------------------------------------------------------------
  const float* alibi_slopes = nullptr;  // nullptr = off; slope of (b, h) at [b * stride + h]
  int64_t alibi_batch_stride = 0;       // 0 when the slopes have shape (nheads)

  // ---- backward tensors (only set by make_bwd_params) ----------------------------------------
  const void* dout = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  float* softmax_d = nullptr;  // optional (batch, nheads, seqlen_q) fp32: rowsum(dout * out)
  Strides3 dout_stride, dq_stride, dk_stride, dv_stride;
  bool deterministic = false;  // bit-identical results run to run (no order-dependent atomics)

  // ---- helpers shared by every backend ------------------------------------------------------
  FLASHPLUS_HD bool has_window() const { return window_left >= 0; }
  // Visible key range [lo, hi) of query row i (may be empty: lo >= hi).
  FLASHPLUS_HD void key_range(int i, int* lo, int* hi) const {
    int l = 0, h = seqlen_k;
    if (window_left >= 0) {
      const long long off = static_cast<long long>(i) + seqlen_k - seqlen_q;
      const long long a = off - window_left, b = off + window_right + 1;
      l = a > 0 ? static_cast<int>(a > seqlen_k ? seqlen_k : a) : 0;
      h = b < seqlen_k ? static_cast<int>(b < 0 ? 0 : b) : seqlen_k;
    }
    *lo = l;
    *hi = h;
  }
};

}  // namespace flashplus
