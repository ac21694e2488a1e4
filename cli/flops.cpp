#include "flops.h"

#include <algorithm>

namespace flashplus::cli {

double attention_pairs(const FlopShape& s) {
  const int64_t sq = s.seqlen_q, sk = s.seqlen_k;
  const int64_t wr = s.causal ? 0 : s.window_right;
  const int64_t wl = s.window_left;
  if (wl < 0 && wr < 0) return static_cast<double>(sq) * static_cast<double>(sk);
  if (wl < 0 && s.causal) return static_cast<double>(sq) * static_cast<double>(sk) / 2.0;
  // Windowed: count exactly, one row at a time (O(seqlen_q), cheap next to the attention).
  double pairs = 0;
  const int64_t off = sk - sq;
  for (int64_t i = 0; i < sq; ++i) {
    const int64_t lo = wl < 0 ? 0 : std::max<int64_t>(0, i + off - wl);
    const int64_t hi = wr < 0 ? sk : std::min<int64_t>(sk, i + off + wr + 1);
    if (hi > lo) pairs += static_cast<double>(hi - lo);
  }
  return pairs;
}

double attention_flops(const FlopShape& s, FlopMode mode) {
  const double fwd = 4.0 * static_cast<double>(s.batch) * static_cast<double>(s.nheads) *
                     static_cast<double>(s.head_dim) * attention_pairs(s);
  return mode == FlopMode::fwd ? fwd : 2.5 * fwd;
}

}  // namespace flashplus::cli
