// S_dmask (return_softmax, API.md §2.7): the dropout-applied attention probabilities a forward
// returns for verification. One element rule, shared by every backend's S_dmask pass so they can
// never disagree (compiled for the host and, through FLASHPLUS_HD, for the GPU vendors).
//
// Layout: (batch, nheads, round128(Sq*), round128(Sk*)) in q's dtype, Sq*/Sk* = seqlen_q/k
// (varlen: max_seqlen_q/k); row i / column j index query i / key j of sequence b. Value: the
// normalised probability P_ij = exp(z_ij - lse_i) of the forward (before dropout), negated when
// dropout drops (b, h, i, j); 0 where the key is masked, where the row sees no key, and in the
// padding beyond each sequence's lengths. (Upstream stores exp(z - running max), "possibly with
// different scaling"; the sign convention is the same.)
#pragma once
#include <math.h>

#include "flashplus/params.h"

namespace flashplus::detail {

// Rounded-up extent of one S_dmask axis.
FLASHPLUS_HD inline int dmask_round(int x) { return (x + 127) / 128 * 128; }

// The S_dmask value of query i / key j of sequence b (actual lengths sq, sk), head h, given the
// fp32 dot product q_i . k_j and the forward's lse_i.
FLASHPLUS_HD inline float dmask_value(const AttnParams& p, int b, int h, int i, int j, int sq,
                                      int sk, float dot, float lse) {
  if (i >= sq || j >= sk || !(lse < INFINITY)) return 0.f;
  int lo = 0, hi = 0;
  p.key_range(i, sq, sk, &lo, &hi);
  if (j < lo || j >= hi) return 0.f;
  float z = dot * p.softmax_scale;
  if (p.softcap > 0.f) z = p.softcap * tanhf(z / p.softcap);
  if (p.alibi_slopes) {
    const float slope = p.alibi_slopes[static_cast<int64_t>(b) * p.alibi_batch_stride + h];
    const long long dist = static_cast<long long>(i) + sk - sq - j;
    z += p.is_causal ? slope * static_cast<float>(j)
                     : -slope * static_cast<float>(dist < 0 ? -dist : dist);
  }
  const float prob = expf(z - lse);
  return p.dropout_keep(b, h, i, j) ? prob : -prob;
}

// Element offset of (b, h, i, j) in S_dmask.
FLASHPLUS_HD inline int64_t dmask_offset(const AttnParams& p, int b, int h, int i, int j) {
  return static_cast<int64_t>(b) * p.s_dmask_batch_stride +
         static_cast<int64_t>(h) * p.s_dmask_head_stride +
         static_cast<int64_t>(i) * p.s_dmask_row_stride + j;
}

}  // namespace flashplus::detail
