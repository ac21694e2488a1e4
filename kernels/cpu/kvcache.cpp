// CPU kv-cache decoding (mha_fwd_kvcache): the two steps before attention, then the shared
// forward (fwd.cpp) on the cache.
//   1. append: new key t of sequence b goes to logical cache position cache_seqlens[b] + t
//      (rotated there first when rotary is on), new value likewise unrotated;
//   2. rotary on q: rows rotated at AttnParams::rotary_pos_q into a scratch copy of q (the
//      caller's q is never written), rounded to q's dtype as the GPU kernels do.
// params.cpp has already range-checked every index read here (host memory).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/cpu_kernels.h"
#include "flashplus/numerics.h"

namespace flashplus::cpu {

namespace {

// Rotate the first rotary_dim channels of x (fp32, in place) at position pos (API.md §7.1):
// interleaved pairs (2j, 2j+1), otherwise (j, j + R/2); arithmetic in fp32.
void rotate(const AttnParams& p, int pos, float* x, float* cs) {
  const int half = p.rotary_dim / 2;
  float* c = cs;
  float* s = cs + half;
  load_row(p.rotary_cos, p.dtype, static_cast<int64_t>(pos) * half, half, c);
  load_row(p.rotary_sin, p.dtype, static_cast<int64_t>(pos) * half, half, s);
  for (int j = 0; j < half; ++j) {
    const int a = p.rotary_interleaved ? 2 * j : j;
    const int b = p.rotary_interleaved ? 2 * j + 1 : j + half;
    const float x0 = x[a], x1 = x[b];
    x[a] = x0 * c[j] - x1 * s[j];
    x[b] = x0 * s[j] + x1 * c[j];
  }
}

void append_new_tokens(const AttnParams& p) {
  const int d = p.head_dim;
  std::vector<float> row(d), cs(std::max(p.rotary_dim, 2));
  for (int b = 0; b < p.batch; ++b) {
    for (int t = 0; t < p.seqlen_new; ++t) {
      const int pos = p.cache_seqlens[b] + t;
      for (int hk = 0; hk < p.nheads_k; ++hk) {
        load_row(p.k_new, p.dtype, b * p.knew_stride.batch + t * p.knew_stride.row + hk * p.knew_stride.head, d, row.data());
        if (p.rotary_dim > 0) rotate(p, pos, row.data(), cs.data());
        store_row(p.kcache, p.dtype, p.cache_offset(p.k_stride, b, pos) + hk * p.k_stride.head, d, row.data(), 1.f);
        load_row(p.v_new, p.dtype, b * p.vnew_stride.batch + t * p.vnew_stride.row + hk * p.vnew_stride.head, d, row.data());
        store_row(p.vcache, p.dtype, p.cache_offset(p.v_stride, b, pos) + hk * p.v_stride.head, d, row.data(), 1.f);
      }
    }
  }
}

}  // namespace

Status kvcache_fwd(const AttnParams& p, const RunOptions& opts) {
  if (p.dtype == DType::i32) return Status::Unsupported("cpu backend: int32 attention");
  if (p.seqlen_new > 0) append_new_tokens(p);
  if (p.rotary_dim == 0 || p.seqlen_q == 0) return attention_fwd(p, opts);
  // Rotated q, contiguous (batch, seqlen_q, nheads, d) in q's dtype.
  const int d = p.head_dim;
  const int64_t n = static_cast<int64_t>(p.batch) * p.seqlen_q * p.nheads * d;
  std::vector<uint8_t> qrot(static_cast<size_t>(n) * dtype_size(p.dtype));
  std::vector<float> row(d), cs(p.rotary_dim);
  AttnParams r = p;
  r.q = qrot.data();
  r.q_stride = {static_cast<int64_t>(p.seqlen_q) * p.nheads * d, static_cast<int64_t>(p.nheads) * d, d};
  for (int b = 0; b < p.batch; ++b)
    for (int i = 0; i < p.seqlen_q; ++i) {
      const int pos = p.rotary_pos_q(b, i);
      for (int h = 0; h < p.nheads; ++h) {
        load_row(p.q, p.dtype, p.q_offset(p.q_stride, b, i) + h * p.q_stride.head, d, row.data());
        rotate(p, pos, row.data(), cs.data());
        store_row(qrot.data(), p.dtype, r.q_offset(r.q_stride, b, i) + h * r.q_stride.head, d, row.data(), 1.f);
      }
    }
  return attention_fwd(r, opts);
}

}  // namespace flashplus::cpu
