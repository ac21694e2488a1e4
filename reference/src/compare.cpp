// The tolerance policy (docs/VERIFY.md): a result passes when its max error against the fp64
// reference is at most `factor` times the error of the naive same-dtype implementation, plus a
// small per-dtype absolute slack.
#include <algorithm>
#include <cmath>

#include "flashplus_ref/reference.h"

namespace flashplus::ref {

// About one unit in the last place of a value of magnitude 1 in the storage dtype (attention
// outputs and gradients of unit-scale inputs are O(1)). Storing the final result in dtype t
// alone costs up to half of that; when the naive implementation happens to round its worst
// element the same way as the reference (e.g. tiny problems where out is just a copy of v),
// factor * naive_err is ~0 and this slack is all that is left for the kernel's own rounding.
//   fp16: ulp(1) = 2^-10 ~ 9.8e-4 -> 1e-3
//   bf16: ulp(1) = 2^-7  ~ 7.8e-3 -> 1e-2
//   fp32: ulp(1) = 2^-23 ~ 1.2e-7; fp32 accumulation over thousands of keys in another order
//         than the reference drifts by ~1e-6, so 1e-5 leaves room without hiding real bugs
//         (an indexing or masking error is O(0.1) or more).
double default_atol(DType t) {
  switch (t) {
    case DType::f16: return 1e-3;
    case DType::bf16: return 1e-2;
    case DType::f32: return 1e-5;
    case DType::i32: return 0;
  }
  return 0;
}

Check compare(const std::vector<double>& ref, const std::vector<double>& got,
              const std::vector<double>& naive, DType t, bool softcap) {
  Check c;
  const double factor = softcap ? 3.0 : 2.0;
  if (ref.size() != got.size()) {
    // A size mismatch cannot pass; report it as non-finite disagreement of every missing entry.
    c.bad_nonfinite = static_cast<int64_t>(std::max(ref.size(), got.size()) -
                                           std::min(ref.size(), got.size()));
    c.tolerance = default_atol(t);
    c.pass = false;
    return c;
  }
  const bool have_naive = naive.size() == ref.size();
  double err2 = 0, ref2 = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double r = ref[i], g = got[i];
    if (std::isnan(r) || std::isnan(g)) {  // NaN never passes
      ++c.bad_nonfinite;
      continue;
    }
    if (std::isinf(r) || std::isinf(g)) {  // infinities (empty rows' lse) must match exactly
      if (r != g) ++c.bad_nonfinite;
      continue;
    }
    const double e = std::fabs(g - r);
    c.max_abs_err = std::max(c.max_abs_err, e);
    err2 += e * e;
    ref2 += r * r;
    if (have_naive && std::isfinite(naive[i]))  // a naive overflow must not widen the tolerance
      c.naive_err = std::max(c.naive_err, std::fabs(naive[i] - r));
  }
  c.rel_err = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  c.tolerance = factor * c.naive_err + default_atol(t);
  c.pass = c.bad_nonfinite == 0 && c.max_abs_err <= c.tolerance;
  return c;
}

}  // namespace flashplus::ref
