// Score modifiers shared by the tensor-core forward and backward kernels: the mask rule,
// softcap and ALiBi, in the exact order of ../shared/API.md §2.2 (scale -> softcap -> ALiBi ->
// mask). Kept out of the kernels so that forward and backward can never disagree.
#pragma once
#include <cstdint>

#include "flashplus/params.h"
#include "primitives/tile_mma.h"

namespace flashplus::prim {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ALiBi slope of (batch b, query head h); 0 when ALiBi is off.
FP_DEV float alibi_slope(const AttnParams& p, int b, int h) {
  return p.alibi_slopes ? p.alibi_slopes[b * p.alibi_batch_stride + h] : 0.f;
}

// ALiBi bias of (query i, key j): +slope*j in pure-causal mode (upstream quirk, API.md §2.5),
// else -slope*|i + sk - sq - j|. Added after softcap, not scaled.
FP_DEV float alibi_bias(const AttnParams& p, float slope, int i, int j) {
  if (p.is_causal) return slope * static_cast<float>(j);
  const int dist = i + p.seqlen_k - p.seqlen_q - j;
  return -slope * static_cast<float>(dist < 0 ? -dist : dist);
}

// Logit z of a raw dot product (fp32 accumulator), for the general path (softcap and/or ALiBi).
// `tanh_out` receives tanh(s/softcap) (needed by the backward's softcap derivative), 0 if off.
FP_DEV float logit(const AttnParams& p, float acc, float slope, int i, int j, float* tanh_out) {
  float s = acc * p.softmax_scale;
  float th = 0.f;
  if (p.softcap > 0.f) {
    th = tanhf(s / p.softcap);
    s = p.softcap * th;
  }
  if (p.alibi_slopes) s += alibi_bias(p, slope, i, j);
  *tanh_out = th;
  return s;
}

// The same two for a sequence whose own lengths differ from seqlen_q/k (varlen, kv cache):
// `off` = that sequence's Sk - Sq (API.md §2.5: ALiBi aligns with actual per-sequence lengths).
FP_DEV float alibi_bias_off(const AttnParams& p, float slope, int i, int j, int off) {
  if (p.is_causal) return slope * static_cast<float>(j);
  const int dist = i + off - j;
  return -slope * static_cast<float>(dist < 0 ? -dist : dist);
}

FP_DEV float logit_off(const AttnParams& p, float acc, float slope, int i, int j, int off,
                       float* tanh_out) {
  float s = acc * p.softmax_scale;
  float th = 0.f;
  if (p.softcap > 0.f) {
    th = tanhf(s / p.softcap);
    s = p.softcap * th;
  }
  if (p.alibi_slopes) s += alibi_bias_off(p, slope, i, j, off);
  *tanh_out = th;
  return s;
}

}  // namespace flashplus::prim
