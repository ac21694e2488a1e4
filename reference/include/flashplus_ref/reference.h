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
  // Host-known lengths Sq*, Sk* used by the window canonicalisation (API.md §2.3): varlen passes
  // max_seqlen_q/k, the kv cache seqlen_q and the cache capacity. -1 = seqlen_q / seqlen_k.
  int canon_seqlen_q = -1, canon_seqlen_k = -1;
  // Dropout (API.md §2.7): P'_ij = P_ij * keep(b, h, i, j) / (1 - p) with keep() of
  // flashplus/philox.h, element index built from (dropout_batch0 + b, h, i, j) and Sq*, Sk* above.
  double p_dropout = 0;
  uint64_t dropout_seed = 0, dropout_offset = 0;
  int dropout_batch0 = 0;  // sequence index of batch 0 (varlen: one problem per sequence)
  // Also return the probabilities as S_dmask reports them (FwdResult::probs).
  bool want_probs = false;
};

struct FwdResult {
  std::vector<double> out;  // (b, sq, h, d)
  std::vector<double> lse;  // (b, h, sq); +inf for rows that see no key
  // Only with Problem::want_probs: (b, h, sq, sk), P_ij = exp(z_ij - lse_i) before dropout,
  // negated where dropout drops (b, h, i, j); 0 where masked (API.md §2.7's sign convention).
  std::vector<double> probs;
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

// ---- variable-length batches (API.md §3.4) ------------------------------------------------
// Packed q (total_q, h, d), k/v (total_k, hk, d); sequence b owns query rows
// [cu_seqlens_q[b], cu_seqlens_q[b+1]) and key rows [cu_seqlens_k[b], cu_seqlens_k[b] + sk_b)
// with sk_b = seqused_k[b] if given, else cu_seqlens_k[b+1] - cu_seqlens_k[b]. Each sequence is
// its own fixed-length problem (its actual lengths align the mask and ALiBi), canonicalised with
// Sq* = max_seqlen_q and Sk* = max_seqlen_k.
struct VarlenProblem {
  std::vector<int> cu_seqlens_q, cu_seqlens_k;  // batch + 1 entries each
  std::vector<int> seqused_k;                   // empty, or batch entries
  int total_q = 0, total_k = 0, max_seqlen_q = 0, max_seqlen_k = 0;
  int nheads = 1, nheads_k = 1, head_dim = 1;
  double softmax_scale = 0;
  bool causal = false;
  int window_left = -1, window_right = -1;
  double softcap = 0;
  std::vector<double> alibi;  // empty, nheads, or batch*nheads slopes
  double p_dropout = 0;       // as Problem; i, j count within the sequence
  uint64_t dropout_seed = 0, dropout_offset = 0;
  // Paged K/V (forward only): k, v are (num_blocks, page_block_size, hk, d); key j of sequence b
  // is slot j % page of block block_table[b * max_blocks_per_seq + j / page]. cu_seqlens_k then
  // only gives the lengths, and total_k must be num_blocks * page_block_size.
  std::vector<int> block_table;
  int page_block_size = 0, max_blocks_per_seq = 0;
  int batch() const { return static_cast<int>(cu_seqlens_q.size()) - 1; }
};
// out (total_q, h, d), lse (h, total_q); dq like q, dk/dv like k. Entries of rows that no
// sequence covers are 0 (the library leaves them unwritten: tests must not compare them).
FwdResult varlen_forward(const VarlenProblem& p, const std::vector<double>& q,
                         const std::vector<double>& k, const std::vector<double>& v);
FwdResult varlen_forward_naive(const VarlenProblem& p, const std::vector<double>& q,
                               const std::vector<double>& k, const std::vector<double>& v, DType t);
BwdResult varlen_backward(const VarlenProblem& p, const std::vector<double>& q,
                          const std::vector<double>& k, const std::vector<double>& v,
                          const std::vector<double>& dout);
BwdResult varlen_backward_naive(const VarlenProblem& p, const std::vector<double>& q,
                                const std::vector<double>& k, const std::vector<double>& v,
                                const std::vector<double>& dout, DType t);

// ---- kv cache (API.md §3.7) ----------------------------------------------------------------
// q (b, sq, h, d). Cache contiguous (batch_cache, seqlen_cache, hk, d), or paged
// (num_blocks, page_block_size, hk, d) when block_table (batch * max_blocks_per_seq) is given.
// k_new/v_new (b, seqlen_new, hk, d) are written at logical positions cache_seqlens[b] + t
// (k rotated there), then sequence b attends to positions [leftpad_b, end_b) with
// end_b = cache_seqlens[b] + seqlen_new (capacity when cache_seqlens is empty). q row i is
// rotated at cache_seqlens[b] + i when the canonical mask is bounded (causal or windowed), else
// at cache_seqlens[b]. rotary_cos/sin: (seqlen_ro, rotary_dim / 2) row-major.
struct KvcacheProblem {
  int batch = 1, seqlen_q = 1, nheads = 1, nheads_k = 1, head_dim = 1;
  int batch_cache = 1, seqlen_cache = 0;                        // contiguous cache
  int num_blocks = 0, page_block_size = 0, max_blocks_per_seq = 0;  // paged cache
  std::vector<int> block_table;                                 // empty = contiguous
  std::vector<int> cache_seqlens, cache_batch_idx, cache_leftpad;  // empty = default
  int seqlen_new = 0;
  std::vector<double> rotary_cos, rotary_sin;  // empty = no rotary
  int rotary_dim = 0;
  bool rotary_interleaved = false;
  double softmax_scale = 0;
  bool causal = false;
  int window_left = -1, window_right = -1;
  double softcap = 0;
  std::vector<double> alibi;
  bool paged() const { return !block_table.empty(); }
  int capacity() const { return paged() ? max_blocks_per_seq * page_block_size : seqlen_cache; }
  // Row of the flattened cache (cache_rows, hk, d) holding logical position pos of sequence b.
  int64_t cache_row(int b, int pos) const;
};
struct KvcacheResult {
  FwdResult fwd;                          // out (b, sq, h, d), lse (b, h, sq)
  std::vector<double> k_cache, v_cache;   // the caches after the append
};
// Exact: rotary in fp64 on the rounded inputs, attention by forward(). Naive: rotary in fp32
// rounded to t (as the kernels store it), attention by forward_naive().
KvcacheResult kvcache_forward(const KvcacheProblem& p, const std::vector<double>& q,
                              const std::vector<double>& k_cache,
                              const std::vector<double>& v_cache,
                              const std::vector<double>& k_new, const std::vector<double>& v_new);
KvcacheResult kvcache_forward_naive(const KvcacheProblem& p, const std::vector<double>& q,
                                    const std::vector<double>& k_cache,
                                    const std::vector<double>& v_cache,
                                    const std::vector<double>& k_new,
                                    const std::vector<double>& v_new, DType t);

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
