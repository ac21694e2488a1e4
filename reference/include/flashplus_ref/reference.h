// The oracle: attention in double precision with Eigen, one function per stage, materialising
// the full score matrix. Used only to verify kernels (tests, `flashplus verify`).
//
// Written from ../shared/API.md directly (its own mask and window canonicalisation code), not
// from the kernel library's helpers, so a mistake there cannot hide in both.
#pragma once
#include <cstdint>
#include <vector>

#include "flashplus/tensor.h"

namespace flashplus::ref {

// One attention problem. Tensors are host, contiguous, (batch, seqlen, heads, head_dim).
struct Problem {
  int batch = 1, seqlen_q = 1, seqlen_k = 1, nheads = 1, nheads_k = 1, head_dim = 1;
  double softmax_scale = 0;   // 0 = 1/sqrt(head_dim)
  bool causal = false;
  int window_left = -1, window_right = -1;  // as passed to mha_fwd (before canonicalisation)
  double softcap = 0;         // 0 = off
  std::vector<double> alibi;  // empty (off), nheads, or batch*nheads slopes
};

struct FwdResult {
  std::vector<double> out;  // (b, sq, h, d)
  std::vector<double> lse;  // (b, h, sq); +inf for rows that see no key
};
struct BwdResult {
  std::vector<double> dq;  // (b, sq, h, d)
  std::vector<double> dk;  // (b, sk, hk, d)
  std::vector<double> dv;  // (b, sk, hk, d)
};

// The mask after upstream's window canonicalisation (API.md §2.3), computed by the reference
// itself. Key j is visible to query i iff 0 <= j < seqlen_k and, when `bounded`,
// i + seqlen_k - seqlen_q - left <= j <= i + seqlen_k - seqlen_q + right.
struct Mask {
  bool bounded = false;      // false: every key is visible (left = right = -1)
  int left = -1, right = -1;
  bool pure_causal = false;  // ALiBi uses the column form +slope*j (API.md §2.5)
};
Mask canonical_mask(const Problem& p);

// Exact attention in fp64 on the given (already rounded) inputs.
FwdResult forward(const Problem& p, const std::vector<double>& q, const std::vector<double>& k,
                  const std::vector<double>& v);
BwdResult backward(const Problem& p, const std::vector<double>& q, const std::vector<double>& k,
                   const std::vector<double>& v, const std::vector<double>& dout);

// A naive implementation in storage type `t`, as a framework computing in that dtype would:
// scores in fp32 rounded to t, softmax in fp32 rounded to t, P@V in fp32 rounded to t (and the
// backward likewise). Its error against forward()/backward() sets the tolerance scale.
FwdResult forward_naive(const Problem& p, const std::vector<double>& q,
                        const std::vector<double>& k, const std::vector<double>& v, DType t);
BwdResult backward_naive(const Problem& p, const std::vector<double>& q,
                         const std::vector<double>& k, const std::vector<double>& v,
                         const std::vector<double>& dout, DType t);

// ---- tolerance policy (docs/VERIFY.md) ----------------------------------------------------
// A kernel's output X passes when
//     max|X - X_ref| <= factor * max|X_naive - X_ref| + atol(t)
// with factor 2 (3 with softcap), as upstream FlashAttention's tests. Infinite reference
// entries (empty rows' lse) must be matched exactly; NaN never passes.
struct Check {
  double max_abs_err = 0;   // max |X - X_ref| over finite entries
  double rel_err = 0;       // ||X - X_ref||_2 / ||X_ref||_2
  double naive_err = 0;     // max |X_naive - X_ref|
  double tolerance = 0;     // factor * naive_err + atol
  int64_t bad_nonfinite = 0;  // NaN anywhere, or inf where the reference is finite (or vice versa)
  bool pass = false;
};
double default_atol(DType t);
Check compare(const std::vector<double>& ref, const std::vector<double>& got,
              const std::vector<double>& naive, DType t, bool softcap);

}  // namespace flashplus::ref
