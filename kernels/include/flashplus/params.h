// The one parameter struct every backend receives.
//
// It is built and validated once, at the API boundary, by make_fwd_params()/make_bwd_params()
// (kernels/src/params.cpp). Backends and kernels never re-check it. It is a plain struct (no
// owning members) so GPU kernels can take it by value.
#pragma once
#include <cstdint>

#include "flashplus/tensor.h"

#ifndef FLASHPLUS_HD
#if defined(__CUDACC__) || defined(__HIPCC__)
#define FLASHPLUS_HD __host__ __device__
#else
#define FLASHPLUS_HD
#endif
#endif

#include "flashplus/philox.h"

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
  // fp32 log-sum-exp of query token (b, h, i) at lse_offset(b, h, i). Fixed length and kv cache:
  // (batch, nheads, seqlen_q); varlen: (nheads, total_q). Tokens are always contiguous (stride 1),
  // so the rows of one (b, h) are a contiguous run starting at lse_offset(b, h, 0).
  float* softmax_lse = nullptr;
  int64_t lse_batch_stride = 0;  // unused (0) in varlen mode
  int64_t lse_head_stride = 0;
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

  // ---- dropout (API.md §2.7; the RNG is flashplus/philox.h) ----------------------------------
  // P'_ij = P_ij * keep(b, h, i, j) / (1 - p_dropout); lse is computed before dropout. The
  // backward must see the same seed/offset as the forward (RunOptions::dropout_seed/offset).
  float p_dropout = 0.f;             // 0 = off
  float rp_dropout = 1.f;            // 1 / (1 - p_dropout)
  uint32_t dropout_threshold = 0;    // keep iff the element's draw < threshold
  uint64_t philox_seed = 0;
  uint64_t philox_offset = 0;
  FLASHPLUS_HD bool has_dropout() const { return p_dropout > 0.f; }
  // return_softmax: S_dmask, (batch, nheads, s_dmask_rows, s_dmask_cols) in q's dtype, rows and
  // columns round128(Sq*), round128(Sk*); nullptr = not requested (kernels/src/dmask.h).
  void* s_dmask = nullptr;
  int64_t s_dmask_batch_stride = 0;
  int64_t s_dmask_head_stride = 0;
  int64_t s_dmask_row_stride = 0;
  int s_dmask_rows = 0;
  int s_dmask_cols = 0;
  // Element (b, h, i, j), i and j counted within sequence b; the index uses Sq* = seqlen_q and
  // Sk* = seqlen_k (varlen: max_seqlen_q/k).
  FLASHPLUS_HD bool dropout_keep(int b, int h, int i, int j) const {
    return flashplus::dropout_keep(philox_seed, philox_offset, dropout_threshold, b, h, i, j,
                                   nheads, seqlen_q, seqlen_k);
  }

  // ---- variable-length batches (mha_varlen_fwd / mha_varlen_bwd) ----------------------------
  // When cu_seqlens_q is set, q/out/dout/dq are packed (total_q, nheads, d) and k/v/dk/dv packed
  // (total_k, nheads_k, d): sequence b owns query tokens [cu_seqlens_q[b], cu_seqlens_q[b+1]) and
  // key tokens [cu_seqlens_k[b], cu_seqlens_k[b] + actual_seqlen_k(b)). *_stride.batch is 0.
  // seqlen_q / seqlen_k then hold max_seqlen_q / max_seqlen_k (Sq*, Sk* of API.md §2.3). The
  // pointers live in the same memory as q (host memory for the CPU backend). With block_table
  // (forward only) k/v are a paged cache as in kv-cache mode below and key j of sequence b is
  // logical position j of its table (cu_seqlens_k then only gives the lengths; total_k = 0).
  const int* cu_seqlens_q = nullptr;  // (batch + 1) int32
  const int* cu_seqlens_k = nullptr;  // (batch + 1) int32
  const int* seqused_k = nullptr;     // optional (batch) int32: keys used of each sequence
  int total_q = 0;
  int total_k = 0;
  bool zero_tensors = false;          // zero out/dq/dk/dv (lse: -inf, softmax_d: 0) first

  // ---- kv cache (mha_fwd_kvcache) -----------------------------------------------------------
  // k/v (and kcache/vcache, the same memory, writable) are the cache: contiguous
  // (batch_cache, seqlen_cache, nheads_k, d), or paged (num_blocks, page_block_size, nheads_k, d)
  // with block_table. seqlen_k is the capacity (seqlen_cache or max_blocks_per_seq *
  // page_block_size), Sk* of API.md §2.3. Key j of sequence b is the cache slot at logical
  // position leftpad(b) + j; sequence b attends to actual_seqlen_k(b) keys.
  bool is_kvcache = false;
  void* kcache = nullptr;
  void* vcache = nullptr;
  const int* cache_seqlens = nullptr;    // (batch): tokens already cached; nullptr = capacity
  const int* cache_batch_idx = nullptr;  // (batch): cache row of batch b; nullptr = b
  const int* cache_leftpad = nullptr;    // (batch): first valid position; nullptr = 0
  const int* block_table = nullptr;      // (batch, max_blocks_per_seq); nullptr = contiguous
  int64_t block_table_batch_stride = 0;
  int max_blocks_per_seq = 0;
  int page_block_size = 0;               // any size >= 1 (upstream: multiple of 256)
  int num_blocks = 0;
  int batch_cache = 0;                   // contiguous cache: rows of the cache
  // New tokens appended at logical positions cache_seqlens[b] .. + seqlen_new - 1 before
  // attending (k after rotary). seqlen_new = 0: nothing appended.
  const void* k_new = nullptr;
  const void* v_new = nullptr;
  Strides3 knew_stride, vnew_stride;
  int seqlen_new = 0;
  // Rotary (API.md §7.1) of q and k_new; cos/sin (seqlen_ro, rotary_dim / 2), dtype of q,
  // contiguous. rotary_dim = 0: off.
  const void* rotary_cos = nullptr;
  const void* rotary_sin = nullptr;
  int rotary_dim = 0;
  int seqlen_ro = 0;
  bool rotary_interleaved = false;
  // Pieces the key sequence is split into, combined through their LSE. 0 = the backend
  // chooses; 1 = no split; at most 128.
  int num_splits = 1;

  // ---- helpers shared by every backend ------------------------------------------------------
  FLASHPLUS_HD bool has_window() const { return window_left >= 0; }
  // Visible key range [lo, hi) of query row i (may be empty: lo >= hi), fixed-length sizes.
  FLASHPLUS_HD void key_range(int i, int* lo, int* hi) const {
    key_range(i, seqlen_q, seqlen_k, lo, hi);
  }
  // The same for a sequence of actual lengths sq, sk (varlen / kv cache: actual_seqlen_q/k(b)).
  FLASHPLUS_HD void key_range(int i, int sq, int sk, int* lo, int* hi) const {
    int l = 0, h = sk;
    if (window_left >= 0) {
      const long long off = static_cast<long long>(i) + sk - sq;
      const long long a = off - window_left, b = off + window_right + 1;
      l = a > 0 ? static_cast<int>(a > sk ? sk : a) : 0;
      h = b < sk ? static_cast<int>(b < 0 ? 0 : b) : sk;
    }
    *lo = l;
    *hi = h;
  }

  // Query rows [*i_lo, *i_hi] (inclusive; empty when *i_lo > *i_hi) that see any key of
  // [j0, j1): key_range solved for i, fixed-length sizes. The backward kernels visit only these.
  FLASHPLUS_HD void query_range(int j0, int j1, int* i_lo, int* i_hi) const {
    query_range(j0, j1, seqlen_q, seqlen_k, i_lo, i_hi);
  }
  // The same for a sequence of actual lengths sq, sk (varlen: actual_seqlen_q/k(b)); [j0, j1)
  // inside [0, sk).
  FLASHPLUS_HD void query_range(int j0, int j1, int sq, int sk, int* i_lo, int* i_hi) const {
    int lo = 0, hi = sq - 1;
    if (window_left >= 0) {
      const int off = sk - sq;
      const int a = j0 - off - window_right, z = j1 - 1 - off + window_left;
      lo = a > lo ? a : lo;
      hi = z < hi ? z : hi;
    }
    *i_lo = lo;
    *i_hi = hi;
  }

  // ---- per-sequence geometry (fixed length, varlen and kv cache alike) ----------------------
  FLASHPLUS_HD bool is_varlen() const { return cu_seqlens_q != nullptr; }
  FLASHPLUS_HD int leftpad(int b) const { return cache_leftpad ? cache_leftpad[b] : 0; }
  // Query rows of sequence b.
  FLASHPLUS_HD int actual_seqlen_q(int b) const {
    return cu_seqlens_q ? cu_seqlens_q[b + 1] - cu_seqlens_q[b] : seqlen_q;
  }
  // Keys sequence b attends to (kv cache: after appending k_new, from leftpad(b)).
  FLASHPLUS_HD int actual_seqlen_k(int b) const {
    if (cu_seqlens_k) return seqused_k ? seqused_k[b] : cu_seqlens_k[b + 1] - cu_seqlens_k[b];
    if (is_kvcache)
      return (cache_seqlens ? cache_seqlens[b] + seqlen_new : seqlen_k) - leftpad(b);
    return seqlen_k;
  }
  // Element offset of query row i of sequence b (head 0) in a q-like tensor (q, out, dout, dq).
  FLASHPLUS_HD int64_t q_offset(const Strides3& st, int b, int i) const {
    return cu_seqlens_q ? static_cast<int64_t>(cu_seqlens_q[b] + i) * st.row
                        : static_cast<int64_t>(b) * st.batch + static_cast<int64_t>(i) * st.row;
  }
  // Index of (b, h, row i) in softmax_lse (and softmax_d, split accumulators).
  FLASHPLUS_HD int64_t lse_offset(int b, int h, int i) const {
    return cu_seqlens_q
               ? static_cast<int64_t>(h) * lse_head_stride + cu_seqlens_q[b] + i
               : static_cast<int64_t>(b) * lse_batch_stride + static_cast<int64_t>(h) * lse_head_stride + i;
  }
  // Number of entries softmax_lse spans (its layout above).
  FLASHPLUS_HD int64_t lse_size() const {
    return cu_seqlens_q ? static_cast<int64_t>(nheads) * total_q
                        : static_cast<int64_t>(batch) * nheads * seqlen_q;
  }
  // Element offset of the cache slot at logical position pos of sequence b (head 0).
  FLASHPLUS_HD int64_t cache_offset(const Strides3& st, int b, int pos) const {
    if (block_table) {
      const int blk = block_table[static_cast<int64_t>(b) * block_table_batch_stride + pos / page_block_size];
      return static_cast<int64_t>(blk) * st.batch + static_cast<int64_t>(pos % page_block_size) * st.row;
    }
    const int row = cache_batch_idx ? cache_batch_idx[b] : b;
    return static_cast<int64_t>(row) * st.batch + static_cast<int64_t>(pos) * st.row;
  }
  // Element offset of key j of sequence b (head 0) in a k-like tensor (k, v, dk, dv).
  FLASHPLUS_HD int64_t kv_offset(const Strides3& st, int b, int j) const {
    if (cu_seqlens_k)  // paged varlen: keys start at position 0 of the sequence's own table
      return block_table ? cache_offset(st, b, j) : static_cast<int64_t>(cu_seqlens_k[b] + j) * st.row;
    if (is_kvcache) return cache_offset(st, b, leftpad(b) + j);
    return static_cast<int64_t>(b) * st.batch + static_cast<int64_t>(j) * st.row;
  }
  // Rotary position of query row i of sequence b (API.md §3.7): absolute cache coordinates,
  // cache_seqlens[b] + i when the mask is causal or windowed, else cache_seqlens[b] for every row.
  FLASHPLUS_HD int rotary_pos_q(int b, int i) const {
    const int base = cache_seqlens ? cache_seqlens[b] : 0;
    return has_window() ? base + i : base;
  }
};

}  // namespace flashplus
