// The CPU backend's S_dmask pass (return_softmax): every element of the caller's
// (batch, nheads, rows, cols) buffer from the rule in dmask.h, after the forward wrote lse.
// Verification sized: one fp32 dot product per element, (batch, head) pairs over the threads.
#include <vector>

#include "cpu/cpu_kernels.h"
#include "dmask.h"

namespace flashplus::cpu {

Status dmask(const AttnParams& p, const RunOptions& opts) {
  const int nthreads = resolve_threads(opts);
  const int64_t pairs = static_cast<int64_t>(p.batch) * p.nheads;
  return run_threads(nthreads, [&](int tid) {
    std::vector<float> qrow(p.head_dim), krow(p.head_dim), vals(p.s_dmask_cols);
    for (int64_t bh = tid; bh < pairs; bh += nthreads) {
      const int b = static_cast<int>(bh / p.nheads), h = static_cast<int>(bh % p.nheads);
      const int hk = h / p.group();
      const int sq = p.actual_seqlen_q(b), sk = p.actual_seqlen_k(b);
      for (int i = 0; i < p.s_dmask_rows; ++i) {
        const float lse = i < sq ? p.softmax_lse[p.lse_offset(b, h, i)] : 0.f;
        if (i < sq)
          load_row(p.q, p.dtype, p.q_offset(p.q_stride, b, i) + h * p.q_stride.head,
                   p.head_dim, qrow.data());
        for (int j = 0; j < p.s_dmask_cols; ++j) {
          float dot = 0.f;
          if (i < sq && j < sk) {
            load_row(p.k, p.dtype, p.kv_offset(p.k_stride, b, j) + hk * p.k_stride.head,
                     p.head_dim, krow.data());
            for (int c = 0; c < p.head_dim; ++c) dot += qrow[c] * krow[c];
          }
          vals[j] = detail::dmask_value(p, b, h, i, j, sq, sk, dot, lse);
        }
        store_row(p.s_dmask, p.dtype, detail::dmask_offset(p, b, h, i, 0), p.s_dmask_cols,
                  vals.data(), 1.f);
      }
    }
  });
}

}  // namespace flashplus::cpu
