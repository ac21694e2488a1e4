// Building the one AttnParams from the public arguments: every check and every canonicalisation
// happens here, once. Internal header.
#pragma once
#include <optional>

#include "flashplus/params.h"
#include "flashplus/status.h"
#include "flashplus/tensor.h"

namespace flashplus::detail {

Status make_fwd_params(const TensorView& q, const TensorView& k, const TensorView& v,
                       const TensorView& out, const TensorView& softmax_lse,
                       const std::optional<TensorView>& alibi_slopes, float p_dropout,
                       float softmax_scale, bool is_causal, int window_size_left,
                       int window_size_right, float softcap, bool return_softmax,
                       AttnParams* params);

Status make_bwd_params(const TensorView& dout, const TensorView& q, const TensorView& k,
                       const TensorView& v, const TensorView& out, const TensorView& softmax_lse,
                       const TensorView& dq, const TensorView& dk, const TensorView& dv,
                       const std::optional<TensorView>& alibi_slopes, float p_dropout,
                       float softmax_scale, bool is_causal, int window_size_left,
                       int window_size_right, float softcap, bool deterministic,
                       const std::optional<TensorView>& softmax_d, AttnParams* params);

// Variable-length batches (mha_varlen_fwd / mha_varlen_bwd). On host memory the cu_seqlens and
// seqused_k values are checked too (device memory: not checked, as upstream).
Status make_varlen_fwd_params(const TensorView& q, const TensorView& k, const TensorView& v,
                              const TensorView& out, const TensorView& softmax_lse,
                              const TensorView& cu_seqlens_q, const TensorView& cu_seqlens_k,
                              const std::optional<TensorView>& seqused_k,
                              const std::optional<TensorView>& leftpad_k,
                              const std::optional<TensorView>& block_table,
                              const std::optional<TensorView>& alibi_slopes, int max_seqlen_q,
                              int max_seqlen_k, float p_dropout, float softmax_scale,
                              bool zero_tensors, bool is_causal, int window_size_left,
                              int window_size_right, float softcap, bool return_softmax,
                              int num_splits, AttnParams* params);

Status make_varlen_bwd_params(const TensorView& dout, const TensorView& q, const TensorView& k,
                              const TensorView& v, const TensorView& out,
                              const TensorView& softmax_lse, const TensorView& dq,
                              const TensorView& dk, const TensorView& dv,
                              const TensorView& cu_seqlens_q, const TensorView& cu_seqlens_k,
                              const std::optional<TensorView>& alibi_slopes, int max_seqlen_q,
                              int max_seqlen_k, float p_dropout, float softmax_scale,
                              bool zero_tensors, bool is_causal, int window_size_left,
                              int window_size_right, float softcap, bool deterministic,
                              const std::optional<TensorView>& softmax_d, AttnParams* params);

// KV-cache decoding (mha_fwd_kvcache). On host memory cache_seqlens, cache_batch_idx,
// cache_leftpad and the used block_table entries are range-checked before anything runs.
Status make_kvcache_params(const TensorView& q, const TensorView& kcache,
                           const TensorView& vcache, const std::optional<TensorView>& k_new,
                           const std::optional<TensorView>& v_new,
                           const std::optional<TensorView>& cache_seqlens,
                           const std::optional<TensorView>& rotary_cos,
                           const std::optional<TensorView>& rotary_sin,
                           const std::optional<TensorView>& cache_batch_idx,
                           const std::optional<TensorView>& cache_leftpad,
                           const std::optional<TensorView>& block_table,
                           const std::optional<TensorView>& alibi_slopes, const TensorView& out,
                           const TensorView& softmax_lse, float softmax_scale, bool is_causal,
                           int window_size_left, int window_size_right, float softcap,
                           bool is_rotary_interleaved, int num_splits, AttnParams* params);

// Upstream's window canonicalisation (../shared/API.md §2.3), exposed for tests.
struct CanonicalWindow {
  int left = -1, right = -1;  // both -1 or both >= 0
  bool is_causal = false;     // pure-causal mode (matters for ALiBi)
};
CanonicalWindow canonicalize_window(int seqlen_q, int seqlen_k, bool causal, int window_left,
                                    int window_right, bool has_alibi);

// return_softmax: records the caller's S_dmask (API.md §2.7) in p, after make_fwd_params or
// make_varlen_fwd_params: (batch, nheads, round128(Sq*), round128(Sk*)), q's dtype and device.
// Without return_softmax it must be absent; with it, present.
Status set_s_dmask(bool return_softmax, const std::optional<TensorView>& s_dmask,
                   const TensorView& q, AttnParams* p);

}  // namespace flashplus::detail
