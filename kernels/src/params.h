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

// Upstream's window canonicalisation (../shared/API.md §2.3), exposed for tests.
struct CanonicalWindow {
  int left = -1, right = -1;  // both -1 or both >= 0
  bool is_causal = false;     // pure-causal mode (matters for ALiBi)
};
CanonicalWindow canonicalize_window(int seqlen_q, int seqlen_k, bool causal, int window_left,
                                    int window_right, bool has_alibi);

}  // namespace flashplus::detail
