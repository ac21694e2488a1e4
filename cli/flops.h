// THE FLOP convention of FlashAttention-Plus. Every tool that prints TFLOP/s (`flashplus run`,
// bench, docs) calls attention_flops(); nothing else counts FLOPs.
//
//   forward  = 4 * batch * nheads * head_dim * P      (2 matmuls, QK^T and PV, 2 FLOPs per MAC)
//   backward = 2.5 * forward                          (5 matmuls instead of 2)
//
// where P, the number of (query, key) pairs counted per (batch, head), is
//   * seqlen_q * seqlen_k             without a mask;
//   * seqlen_q * seqlen_k / 2         for pure causal (causal, no left window) -- the convention of
//                                     FlashAttention's own benchmarks, kept so numbers compare;
//                                     it is exact only in the limit (the true count for square
//                                     causal is s*(s+1)/2);
//   * the exact number of visible pairs for a sliding window (a bounded side, with or without
//     causal): sum over query rows i of |{ j in [0, seqlen_k) :
//         i + seqlen_k - seqlen_q - left <= j <= i + seqlen_k - seqlen_q + right }|,
//     a negative side being unbounded and causal meaning right = 0 (the visibility rule of
//     ../shared/API.md §2.3, without upstream's corner-case canonicalisation, which differs only
//     when seqlen_q > seqlen_k + 1). Masked work is never counted, even though a kernel may spend
//     time on partially masked tiles.
// ALiBi, softcap and dropout add no counted FLOPs (elementwise work is not counted).
#pragma once
#include <cstdint>

namespace flashplus::cli {

struct FlopShape {
  int64_t batch = 1, seqlen_q = 1, seqlen_k = 1, nheads = 1, head_dim = 1;
  bool causal = false;
  int window_left = -1, window_right = -1;  // as passed to mha_fwd
};

enum class FlopMode { fwd, bwd };

// Visible (query, key) pairs per (batch, head), as described above (may be fractional for
// pure causal with odd seqlen_q * seqlen_k).
double attention_pairs(const FlopShape& s);
double attention_flops(const FlopShape& s, FlopMode mode);

}  // namespace flashplus::cli
