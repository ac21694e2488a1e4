// The reference attention: one function per stage, on one (batch, head) at a time, materialising
// the full score matrix. Written from ../shared/API.md §2; it never calls the kernel library's
// mask helpers (AttnParams::key_range, canonicalize_window), so a mistake there shows up here.
//
// The stages are templates over the scalar type and a rounding policy, so the same code gives the
// exact fp64 oracle (double, no rounding) and the naive low-precision implementation (float,
// every stage's result rounded to the storage dtype) whose error sets the tolerance.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <thread>
#include <vector>

#include <Eigen/Dense>

#include "flashplus/numerics.h"
#include "flashplus/philox.h"
#include "flashplus_ref/reference.h"

namespace flashplus::ref {

namespace {

template <typename T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;

// Rounding policies: the oracle keeps every bit; the naive one rounds each stage to dtype t.
struct Exact {
  template <typename M>
  void operator()(M&) const {}
};
struct RoundTo {
  DType t;
  void operator()(Mat<float>& m) const {
    if (t == DType::f32) return;
    const DType tt = t;
    m = m.unaryExpr([tt](float x) { return round_to(tt, x); });
  }
};

// ---- geometry --------------------------------------------------------------------------------

bool visible(const Mask& m, int sq, int sk, int i, int j) {
  if (j < 0 || j >= sk) return false;
  if (!m.bounded) return true;
  const long long off = static_cast<long long>(i) + sk - sq;
  return j >= off - m.left && j <= off + m.right;
}

double slope_of(const Problem& p, int b, int h) {
  if (p.alibi.empty()) return 0;
  if (static_cast<int>(p.alibi.size()) == p.nheads) return p.alibi[h];
  return p.alibi[static_cast<size_t>(b) * p.nheads + h];
}

double resolved_scale(const Problem& p) {
  return p.softmax_scale != 0 ? p.softmax_scale : 1.0 / std::sqrt(static_cast<double>(p.head_dim));
}

// (seqlen x d) slice of head h, batch b, of a contiguous (batch, seqlen, heads, d) tensor.
template <typename T>
Mat<T> head_slice(const std::vector<double>& x, int b, int seqlen, int heads, int d, int h) {
  Mat<T> m(seqlen, d);
  for (int i = 0; i < seqlen; ++i) {
    const size_t base = ((static_cast<size_t>(b) * seqlen + i) * heads + h) * d;
    for (int c = 0; c < d; ++c) m(i, c) = static_cast<T>(x[base + c]);
  }
  return m;
}
template <typename T>
void put_head(std::vector<double>& x, int b, int seqlen, int heads, int d, int h, const Mat<T>& m) {
  for (int i = 0; i < seqlen; ++i) {
    const size_t base = ((static_cast<size_t>(b) * seqlen + i) * heads + h) * d;
    for (int c = 0; c < d; ++c) x[base + c] = static_cast<double>(m(i, c));
  }
}

// Run fn(item) for item in [0, n) on all hardware threads (each item writes disjoint outputs).
template <typename F>
void parallel_for(int64_t n, F fn) {
  const int hw = std::max(1u, std::thread::hardware_concurrency());
  const int nt = static_cast<int>(std::min<int64_t>(hw, n));
  std::atomic<int64_t> next{0};
  auto body = [&] {
    for (int64_t it; (it = next.fetch_add(1)) < n;) fn(it);
  };
  std::vector<std::thread> ts;
  for (int t = 1; t < nt; ++t) ts.emplace_back(body);
  body();
  for (auto& t : ts) t.join();
}

// ---- forward stages (API.md §2.2 steps 1-5, 7) -------------------------------------------------

// 1. s = scale * q k^T.
template <typename T, typename R>
Mat<T> stage_scores(const Mat<T>& q, const Mat<T>& k, T scale, const R& rnd) {
  Mat<T> s = (q * k.transpose()) * scale;
  rnd(s);
  return s;
}

// 2. s <- cap * tanh(s / cap); also returns ds_out/ds_in = 1 - tanh^2 for the backward.
template <typename T, typename R>
void stage_softcap(Mat<T>& s, T cap, Mat<T>* dfactor, const R& rnd) {
  if (!(cap > 0)) return;
  const Mat<T> t = (s.array() / cap).tanh().matrix();
  s = (t.array() * cap).matrix();
  rnd(s);
  if (dfactor) {
    *dfactor = (T(1) - t.array() * t.array()).matrix();
    rnd(*dfactor);
  }
}

// 3. z = s + bias: -slope*|i + sk - sq - j|, or +slope*j in pure-causal mode (API.md §2.5).
template <typename T, typename R>
void stage_alibi(Mat<T>& z, const Mask& m, double slope, int sq, int sk, const R& rnd) {
  for (int i = 0; i < sq; ++i)
    for (int j = 0; j < sk; ++j) {
      const double bias = m.pure_causal
                              ? slope * j
                              : -slope * std::fabs(static_cast<double>(i) + sk - sq - j);
      z(i, j) += static_cast<T>(bias);
    }
  rnd(z);
}

// 4. z = -inf where key j is not visible to query i.
template <typename T>
void stage_mask(Mat<T>& z, const Mask& m, int sq, int sk) {
  for (int i = 0; i < sq; ++i)
    for (int j = 0; j < sk; ++j)
      if (!visible(m, sq, sk, i, j)) z(i, j) = -std::numeric_limits<T>::infinity();
}

// 5. lse_i = log sum_j exp(z_ij), P = exp(z - lse). A row with no visible key: P = 0, lse = +inf.
template <typename T, typename R>
void stage_softmax(const Mat<T>& z, Mat<T>* P, std::vector<double>* lse, const R& rnd) {
  const int sq = static_cast<int>(z.rows());
  P->setZero(z.rows(), z.cols());
  lse->assign(sq, std::numeric_limits<double>::infinity());
  if (z.cols() == 0) return;  // seqlen_k == 0: every row is empty
  for (int i = 0; i < sq; ++i) {
    const T mx = z.row(i).maxCoeff();
    if (!(mx > -std::numeric_limits<T>::infinity())) continue;  // empty row (or no keys)
    T sum = 0;
    for (int j = 0; j < z.cols(); ++j) sum += std::exp(z(i, j) - mx);
    const T l = mx + std::log(sum);
    (*lse)[i] = static_cast<double>(l);
    for (int j = 0; j < z.cols(); ++j) (*P)(i, j) = std::exp(z(i, j) - l);
  }
  rnd(*P);
}

// 7. out = P v.
template <typename T, typename R>
Mat<T> stage_pv(const Mat<T>& P, const Mat<T>& v, const R& rnd) {
  Mat<T> o = P * v;
  rnd(o);
  return o;
}

// 6. Dropout: D = keep / (1 - p) per element (0 or the exact rescale), from flashplus/philox.h.
template <typename T>
Mat<T> stage_dropout_scale(const Problem& p, int b, int h) {
  const int sqs = p.canon_seqlen_q >= 0 ? p.canon_seqlen_q : p.seqlen_q;
  const int sks = p.canon_seqlen_k >= 0 ? p.canon_seqlen_k : p.seqlen_k;
  const uint32_t thr = dropout_threshold(static_cast<float>(p.p_dropout));
  const T rp = static_cast<T>(1.0 / (1.0 - static_cast<double>(static_cast<float>(p.p_dropout))));
  Mat<T> m(p.seqlen_q, p.seqlen_k);
  for (int i = 0; i < p.seqlen_q; ++i)
    for (int j = 0; j < p.seqlen_k; ++j)
      m(i, j) = dropout_keep(p.dropout_seed, p.dropout_offset, thr, p.dropout_batch0 + b, h, i, j,
                             p.nheads, sqs, sks)
                    ? rp
                    : T(0);
  return m;
}

// The forward of one (b, h); keeps P (before dropout), the dropout scale and the softcap
// derivative for the backward.
template <typename T>
struct HeadFwd {
  Mat<T> P, drop, dfactor, out;
  std::vector<double> lse;
};
template <typename T, typename R>
HeadFwd<T> head_forward(const Problem& p, const Mask& mask, int b, int h, const Mat<T>& q,
                        const Mat<T>& k, const Mat<T>& v, const R& rnd) {
  HeadFwd<T> f;
  const T scale = static_cast<T>(resolved_scale(p));
  Mat<T> z = stage_scores<T>(q, k, scale, rnd);
  stage_softcap<T>(z, static_cast<T>(p.softcap), &f.dfactor, rnd);
  if (!p.alibi.empty()) stage_alibi<T>(z, mask, slope_of(p, b, h), p.seqlen_q, p.seqlen_k, rnd);
  stage_mask<T>(z, mask, p.seqlen_q, p.seqlen_k);
  stage_softmax<T>(z, &f.P, &f.lse, rnd);
  if (p.p_dropout > 0) {
    f.drop = stage_dropout_scale<T>(p, b, h);
    Mat<T> Pd = (f.P.array() * f.drop.array()).matrix();
    rnd(Pd);
    f.out = stage_pv<T>(Pd, v, rnd);
  } else {
    f.out = stage_pv<T>(f.P, v, rnd);
  }
  return f;
}

// ---- backward stages ---------------------------------------------------------------------------

// dP = dO v^T.
template <typename T, typename R>
Mat<T> stage_dp(const Mat<T>& dout, const Mat<T>& v, const R& rnd) {
  Mat<T> dP = dout * v.transpose();
  rnd(dP);
  return dP;
}

// dV = P^T dO (one query head's share; the GQA sum comes later).
template <typename T, typename R>
Mat<T> stage_dv(const Mat<T>& P, const Mat<T>& dout, const R& rnd) {
  Mat<T> dv = P.transpose() * dout;
  rnd(dv);
  return dv;
}

// Softmax backward: dZ = P * (dP - D) with D_i = rowsum(P_i * dP_i) (= rowsum(dO_i * out_i)).
// Rows with P = 0 (no visible key) get dZ = 0: no gradient contribution.
template <typename T, typename R>
Mat<T> stage_dsoftmax(const Mat<T>& P, const Mat<T>& dP, const R& rnd) {
  const Vec<T> D = (P.array() * dP.array()).rowwise().sum();
  Mat<T> dZ = (P.array() * (dP.colwise() - D).array()).matrix();
  rnd(dZ);
  return dZ;
}

// Softcap backward: d/ds [cap * tanh(s / cap)] = 1 - tanh^2(s / cap). ALiBi and the mask are
// additive constants and pass the gradient through unchanged.
template <typename T, typename R>
void stage_dsoftcap(Mat<T>& dS, const Mat<T>& dfactor, double cap, const R& rnd) {
  if (!(cap > 0)) return;
  dS = (dS.array() * dfactor.array()).matrix();
  rnd(dS);
}

// dQ = scale dS k; dK = scale dS^T q.
template <typename T, typename R>
Mat<T> stage_dq(const Mat<T>& dS, const Mat<T>& k, T scale, const R& rnd) {
  Mat<T> dq = (dS * k) * scale;
  rnd(dq);
  return dq;
}
template <typename T, typename R>
Mat<T> stage_dk(const Mat<T>& dS, const Mat<T>& q, T scale, const R& rnd) {
  Mat<T> dk = (dS.transpose() * q) * scale;
  rnd(dk);
  return dk;
}

template <typename T, typename R>
void head_backward(const Problem& p, const HeadFwd<T>& f, const Mat<T>& q, const Mat<T>& k,
                   const Mat<T>& v, const Mat<T>& dout, const R& rnd, Mat<T>* dq, Mat<T>* dk,
                   Mat<T>* dv) {
  const T scale = static_cast<T>(resolved_scale(p));
  Mat<T> dP = stage_dp<T>(dout, v, rnd);
  if (p.p_dropout > 0) {
    // out = P_d v with P_d = P * drop: dV = P_d^T dO, and dP = dP_d * drop.
    Mat<T> Pd = (f.P.array() * f.drop.array()).matrix();
    rnd(Pd);
    *dv = stage_dv<T>(Pd, dout, rnd);
    dP = (dP.array() * f.drop.array()).matrix();
    rnd(dP);
  } else {
    *dv = stage_dv<T>(f.P, dout, rnd);
  }
  Mat<T> dS = stage_dsoftmax<T>(f.P, dP, rnd);
  stage_dsoftcap<T>(dS, f.dfactor, p.softcap, rnd);
  *dq = stage_dq<T>(dS, k, scale, rnd);
  *dk = stage_dk<T>(dS, q, scale, rnd);
}

void check_problem(const Problem& p, size_t nq, size_t nk, size_t nv) {
  if (p.batch < 1 || p.seqlen_q < 0 || p.seqlen_k < 0 || p.nheads < 1 || p.nheads_k < 1 ||
      p.nheads % p.nheads_k != 0 || p.head_dim < 1)
    throw std::invalid_argument("flashplus::ref: bad problem sizes");
  const size_t eq = static_cast<size_t>(p.batch) * p.seqlen_q * p.nheads * p.head_dim;
  const size_t ek = static_cast<size_t>(p.batch) * p.seqlen_k * p.nheads_k * p.head_dim;
  if (nq != eq || nk != ek || nv != ek)
    throw std::invalid_argument("flashplus::ref: tensor sizes do not match the problem");
  if (!p.alibi.empty() && p.alibi.size() != static_cast<size_t>(p.nheads) &&
      p.alibi.size() != static_cast<size_t>(p.batch) * p.nheads)
    throw std::invalid_argument("flashplus::ref: alibi must have nheads or batch*nheads slopes");
}

template <typename T, typename R>
FwdResult forward_impl(const Problem& p, const std::vector<double>& q, const std::vector<double>& k,
                       const std::vector<double>& v, const R& rnd) {
  check_problem(p, q.size(), k.size(), v.size());
  const Mask mask = canonical_mask(p);
  FwdResult r;
  r.out.assign(q.size(), 0.0);
  r.lse.assign(static_cast<size_t>(p.batch) * p.nheads * p.seqlen_q, 0.0);
  const size_t head_probs = static_cast<size_t>(p.seqlen_q) * p.seqlen_k;
  if (p.want_probs) r.probs.assign(static_cast<size_t>(p.batch) * p.nheads * head_probs, 0.0);
  const int G = p.nheads / p.nheads_k;
  parallel_for(static_cast<int64_t>(p.batch) * p.nheads, [&](int64_t it) {
    const int b = static_cast<int>(it / p.nheads), h = static_cast<int>(it % p.nheads);
    const Mat<T> qh = head_slice<T>(q, b, p.seqlen_q, p.nheads, p.head_dim, h);
    const Mat<T> kh = head_slice<T>(k, b, p.seqlen_k, p.nheads_k, p.head_dim, h / G);
    const Mat<T> vh = head_slice<T>(v, b, p.seqlen_k, p.nheads_k, p.head_dim, h / G);
    const HeadFwd<T> f = head_forward<T>(p, mask, b, h, qh, kh, vh, rnd);
    put_head<T>(r.out, b, p.seqlen_q, p.nheads, p.head_dim, h, f.out);
    std::copy(f.lse.begin(), f.lse.end(), r.lse.begin() + it * p.seqlen_q);
    if (p.want_probs)
      for (int i = 0; i < p.seqlen_q; ++i)
        for (int j = 0; j < p.seqlen_k; ++j) {
          const bool dropped = p.p_dropout > 0 && f.drop(i, j) == T(0);
          const double P = static_cast<double>(f.P(i, j));
          r.probs[it * head_probs + static_cast<size_t>(i) * p.seqlen_k + j] = dropped ? -P : P;
        }
  });
  return r;
}

template <typename T, typename R>
BwdResult backward_impl(const Problem& p, const std::vector<double>& q,
                        const std::vector<double>& k, const std::vector<double>& v,
                        const std::vector<double>& dout, const R& rnd) {
  check_problem(p, q.size(), k.size(), v.size());
  if (dout.size() != q.size()) throw std::invalid_argument("flashplus::ref: dout must match q");
  const Mask mask = canonical_mask(p);
  BwdResult r;
  r.dq.assign(q.size(), 0.0);
  r.dk.assign(k.size(), 0.0);
  r.dv.assign(v.size(), 0.0);
  const int G = p.nheads / p.nheads_k;
  // Items are (batch, query head), so MQA problems use every thread too. Each item writes its
  // dq and keeps its own dk/dv; the GQA sum over the G query heads of a kv head is then taken
  // in a fixed order (deterministic), rounded once more as a framework's sum over heads would be.
  std::vector<Mat<T>> dk_h(static_cast<size_t>(p.batch) * p.nheads),
      dv_h(static_cast<size_t>(p.batch) * p.nheads);
  parallel_for(static_cast<int64_t>(p.batch) * p.nheads, [&](int64_t it) {
    const int b = static_cast<int>(it / p.nheads), h = static_cast<int>(it % p.nheads);
    const Mat<T> qh = head_slice<T>(q, b, p.seqlen_q, p.nheads, p.head_dim, h);
    const Mat<T> kh = head_slice<T>(k, b, p.seqlen_k, p.nheads_k, p.head_dim, h / G);
    const Mat<T> vh = head_slice<T>(v, b, p.seqlen_k, p.nheads_k, p.head_dim, h / G);
    const Mat<T> doh = head_slice<T>(dout, b, p.seqlen_q, p.nheads, p.head_dim, h);
    const HeadFwd<T> f = head_forward<T>(p, mask, b, h, qh, kh, vh, rnd);
    Mat<T> dq;
    head_backward<T>(p, f, qh, kh, vh, doh, rnd, &dq, &dk_h[it], &dv_h[it]);
    put_head<T>(r.dq, b, p.seqlen_q, p.nheads, p.head_dim, h, dq);
  });
  parallel_for(static_cast<int64_t>(p.batch) * p.nheads_k, [&](int64_t it) {
    const int b = static_cast<int>(it / p.nheads_k), hk = static_cast<int>(it % p.nheads_k);
    Mat<T> dk_sum = Mat<T>::Zero(p.seqlen_k, p.head_dim), dv_sum = dk_sum;
    for (int g = 0; g < G; ++g) {
      const size_t idx = static_cast<size_t>(b) * p.nheads + hk * G + g;
      dk_sum += dk_h[idx];
      dv_sum += dv_h[idx];
      dk_h[idx] = Mat<T>();  // free as we go
      dv_h[idx] = Mat<T>();
    }
    rnd(dk_sum);
    rnd(dv_sum);
    put_head<T>(r.dk, b, p.seqlen_k, p.nheads_k, p.head_dim, hk, dk_sum);
    put_head<T>(r.dv, b, p.seqlen_k, p.nheads_k, p.head_dim, hk, dv_sum);
  });
  return r;
}

}  // namespace

// API.md §2.3, steps 1-4, with Sk* = seqlen_k and Sq* = seqlen_q (fixed-length attention) unless
// the problem names other host-known lengths (varlen, kv cache).
Mask canonical_mask(const Problem& p) {
  int wl = p.window_left < 0 ? -1 : p.window_left;
  int wr = p.window_right < 0 ? -1 : p.window_right;
  const int sk = p.canon_seqlen_k >= 0 ? p.canon_seqlen_k : p.seqlen_k;  // Sk*
  const int sq = p.canon_seqlen_q >= 0 ? p.canon_seqlen_q : p.seqlen_q;  // Sq*
  // 1. a side at least as long as the keys is unbounded.
  if (wl >= sk) wl = -1;
  if (wr >= sk) wr = -1;
  // 2. a single causal query row without ALiBi is non-causal (it sees every key either way).
  bool causal = p.causal;
  if (causal && sq == 1 && p.alibi.empty()) causal = false;
  // 3. causal means right = 0 (a bounded left side is kept).
  if (causal) wr = 0;
  Mask m;
  m.pure_causal = wl < 0 && wr == 0;
  // 4. exactly one unbounded side is replaced by Sk*.
  if ((wl < 0) != (wr < 0)) {
    if (wl < 0) wl = sk;
    else wr = sk;
  }
  m.bounded = wl >= 0;
  m.left = wl;
  m.right = wr;
  return m;
}

FwdResult forward(const Problem& p, const std::vector<double>& q, const std::vector<double>& k,
                  const std::vector<double>& v) {
  return forward_impl<double>(p, q, k, v, Exact{});
}

BwdResult backward(const Problem& p, const std::vector<double>& q, const std::vector<double>& k,
                   const std::vector<double>& v, const std::vector<double>& dout) {
  return backward_impl<double>(p, q, k, v, dout, Exact{});
}

FwdResult forward_naive(const Problem& p, const std::vector<double>& q,
                        const std::vector<double>& k, const std::vector<double>& v, DType t) {
  return forward_impl<float>(p, q, k, v, RoundTo{t});
}

BwdResult backward_naive(const Problem& p, const std::vector<double>& q,
                         const std::vector<double>& k, const std::vector<double>& v,
                         const std::vector<double>& dout, DType t) {
  return backward_impl<float>(p, q, k, v, dout, RoundTo{t});
}

// ---- variable-length batches: one fixed-length problem per sequence ----------------------------

namespace {

int varlen_sk(const VarlenProblem& vp, int b) {
  return vp.seqused_k.empty() ? vp.cu_seqlens_k[b + 1] - vp.cu_seqlens_k[b] : vp.seqused_k[b];
}

// Sequence b as a batch-1 problem of its actual lengths.
Problem varlen_seq_problem(const VarlenProblem& vp, int b) {
  Problem p;
  p.batch = 1;
  p.seqlen_q = vp.cu_seqlens_q[b + 1] - vp.cu_seqlens_q[b];
  p.seqlen_k = varlen_sk(vp, b);
  p.nheads = vp.nheads;
  p.nheads_k = vp.nheads_k;
  p.head_dim = vp.head_dim;
  p.softmax_scale = vp.softmax_scale;
  p.causal = vp.causal;
  p.window_left = vp.window_left;
  p.window_right = vp.window_right;
  p.softcap = vp.softcap;
  p.canon_seqlen_q = vp.max_seqlen_q;
  p.canon_seqlen_k = vp.max_seqlen_k;
  p.p_dropout = vp.p_dropout;
  p.dropout_seed = vp.dropout_seed;
  p.dropout_offset = vp.dropout_offset;
  p.dropout_batch0 = b;
  if (vp.alibi.size() == static_cast<size_t>(vp.nheads)) {
    p.alibi = vp.alibi;
  } else if (!vp.alibi.empty()) {
    p.alibi.assign(vp.alibi.begin() + static_cast<int64_t>(b) * vp.nheads,
                   vp.alibi.begin() + static_cast<int64_t>(b + 1) * vp.nheads);
  }
  return p;
}

// Rows [row0, row0 + rows) of a packed (total, width) tensor.
std::vector<double> rows_of(const std::vector<double>& x, int64_t row0, int64_t rows, int64_t width) {
  return std::vector<double>(x.begin() + row0 * width, x.begin() + (row0 + rows) * width);
}

void check_varlen(const VarlenProblem& vp, size_t nq, size_t nk, size_t nv) {
  const int B = vp.batch();
  if (B < 1 || vp.cu_seqlens_k.size() != vp.cu_seqlens_q.size() ||
      (!vp.seqused_k.empty() && static_cast<int>(vp.seqused_k.size()) != B))
    throw std::invalid_argument("flashplus::ref: bad varlen problem");
  const size_t wq = static_cast<size_t>(vp.nheads) * vp.head_dim;
  const size_t wk = static_cast<size_t>(vp.nheads_k) * vp.head_dim;
  if (nq != wq * vp.total_q || nk != wk * vp.total_k || nv != nk)
    throw std::invalid_argument("flashplus::ref: varlen tensor sizes do not match the problem");
}

template <bool kNaive>
FwdResult varlen_forward_impl(const VarlenProblem& vp, const std::vector<double>& q,
                              const std::vector<double>& k, const std::vector<double>& v, DType t) {
  check_varlen(vp, q.size(), k.size(), v.size());
  const int64_t wq = static_cast<int64_t>(vp.nheads) * vp.head_dim;
  const int64_t wk = static_cast<int64_t>(vp.nheads_k) * vp.head_dim;
  FwdResult r;
  r.out.assign(q.size(), 0.0);
  r.lse.assign(static_cast<size_t>(vp.nheads) * vp.total_q, 0.0);
  for (int b = 0; b < vp.batch(); ++b) {
    const Problem p = varlen_seq_problem(vp, b);
    if (p.seqlen_q == 0) continue;
    const int q0 = vp.cu_seqlens_q[b], k0 = vp.cu_seqlens_k[b];
    const auto qs = rows_of(q, q0, p.seqlen_q, wq);
    std::vector<double> ks, vs;
    if (vp.block_table.empty()) {
      ks = rows_of(k, k0, p.seqlen_k, wk);
      vs = rows_of(v, k0, p.seqlen_k, wk);
    } else {
      for (int j = 0; j < p.seqlen_k; ++j) {
        const int64_t row =
            static_cast<int64_t>(vp.block_table[static_cast<size_t>(b) * vp.max_blocks_per_seq +
                                                j / vp.page_block_size]) * vp.page_block_size +
            j % vp.page_block_size;
        ks.insert(ks.end(), k.begin() + row * wk, k.begin() + (row + 1) * wk);
        vs.insert(vs.end(), v.begin() + row * wk, v.begin() + (row + 1) * wk);
      }
    }
    const FwdResult f = kNaive ? forward_naive(p, qs, ks, vs, t) : forward(p, qs, ks, vs);
    std::copy(f.out.begin(), f.out.end(), r.out.begin() + q0 * wq);
    for (int h = 0; h < vp.nheads; ++h)
      for (int i = 0; i < p.seqlen_q; ++i)
        r.lse[static_cast<size_t>(h) * vp.total_q + q0 + i] = f.lse[static_cast<size_t>(h) * p.seqlen_q + i];
  }
  return r;
}

template <bool kNaive>
BwdResult varlen_backward_impl(const VarlenProblem& vp, const std::vector<double>& q,
                               const std::vector<double>& k, const std::vector<double>& v,
                               const std::vector<double>& dout, DType t) {
  check_varlen(vp, q.size(), k.size(), v.size());
  if (dout.size() != q.size()) throw std::invalid_argument("flashplus::ref: dout must match q");
  if (!vp.block_table.empty())
    throw std::invalid_argument("flashplus::ref: no backward through paged K/V (API.md §2.9)");
  const int64_t wq = static_cast<int64_t>(vp.nheads) * vp.head_dim;
  const int64_t wk = static_cast<int64_t>(vp.nheads_k) * vp.head_dim;
  BwdResult r;
  r.dq.assign(q.size(), 0.0);
  r.dk.assign(k.size(), 0.0);
  r.dv.assign(v.size(), 0.0);
  for (int b = 0; b < vp.batch(); ++b) {
    const Problem p = varlen_seq_problem(vp, b);
    const int q0 = vp.cu_seqlens_q[b], k0 = vp.cu_seqlens_k[b];
    const auto qs = rows_of(q, q0, p.seqlen_q, wq);
    const auto ks = rows_of(k, k0, p.seqlen_k, wk);
    const auto vs = rows_of(v, k0, p.seqlen_k, wk);
    const auto dos = rows_of(dout, q0, p.seqlen_q, wq);
    const BwdResult g = kNaive ? backward_naive(p, qs, ks, vs, dos, t) : backward(p, qs, ks, vs, dos);
    std::copy(g.dq.begin(), g.dq.end(), r.dq.begin() + q0 * wq);
    std::copy(g.dk.begin(), g.dk.end(), r.dk.begin() + k0 * wk);
    std::copy(g.dv.begin(), g.dv.end(), r.dv.begin() + k0 * wk);
  }
  return r;
}

}  // namespace

FwdResult varlen_forward(const VarlenProblem& p, const std::vector<double>& q,
                         const std::vector<double>& k, const std::vector<double>& v) {
  return varlen_forward_impl<false>(p, q, k, v, DType::f32);
}
FwdResult varlen_forward_naive(const VarlenProblem& p, const std::vector<double>& q,
                               const std::vector<double>& k, const std::vector<double>& v, DType t) {
  return varlen_forward_impl<true>(p, q, k, v, t);
}
BwdResult varlen_backward(const VarlenProblem& p, const std::vector<double>& q,
                          const std::vector<double>& k, const std::vector<double>& v,
                          const std::vector<double>& dout) {
  return varlen_backward_impl<false>(p, q, k, v, dout, DType::f32);
}
BwdResult varlen_backward_naive(const VarlenProblem& p, const std::vector<double>& q,
                                const std::vector<double>& k, const std::vector<double>& v,
                                const std::vector<double>& dout, DType t) {
  return varlen_backward_impl<true>(p, q, k, v, dout, t);
}

// ---- kv cache: update the cache, then one fixed-length problem per sequence --------------------

int64_t KvcacheProblem::cache_row(int b, int pos) const {
  if (paged()) {
    const int blk = block_table[static_cast<size_t>(b) * max_blocks_per_seq + pos / page_block_size];
    return static_cast<int64_t>(blk) * page_block_size + pos % page_block_size;
  }
  const int row = cache_batch_idx.empty() ? b : cache_batch_idx[b];
  return static_cast<int64_t>(row) * seqlen_cache + pos;
}

namespace {

// Rotate x[0..rotary_dim) at position pos (API.md §7.1). Exact: fp64. Naive: fp32, result
// rounded to t (what a kernel stores).
void ref_rotate(const KvcacheProblem& p, int pos, double* x, bool naive, DType t) {
  const int half = p.rotary_dim / 2;
  for (int j = 0; j < half; ++j) {
    const int a = p.rotary_interleaved ? 2 * j : j;
    const int b = p.rotary_interleaved ? 2 * j + 1 : j + half;
    const double c = p.rotary_cos[static_cast<size_t>(pos) * half + j];
    const double s = p.rotary_sin[static_cast<size_t>(pos) * half + j];
    if (naive) {
      const float x0 = static_cast<float>(x[a]), x1 = static_cast<float>(x[b]);
      const float fc = static_cast<float>(c), fs = static_cast<float>(s);
      x[a] = round_to(t, x0 * fc - x1 * fs);
      x[b] = round_to(t, x0 * fs + x1 * fc);
    } else {
      const double x0 = x[a], x1 = x[b];
      x[a] = x0 * c - x1 * s;
      x[b] = x0 * s + x1 * c;
    }
  }
}

KvcacheResult kvcache_impl(const KvcacheProblem& kp, const std::vector<double>& q,
                           const std::vector<double>& k_cache, const std::vector<double>& v_cache,
                           const std::vector<double>& k_new, const std::vector<double>& v_new,
                           bool naive, DType t) {
  const int B = kp.batch, d = kp.head_dim, hk = kp.nheads_k, h = kp.nheads, sq = kp.seqlen_q;
  const int64_t wk = static_cast<int64_t>(hk) * d, wq = static_cast<int64_t>(h) * d;
  const int cap = kp.capacity();
  const bool rotary = kp.rotary_dim > 0;
  if (q.size() != static_cast<size_t>(B) * sq * wq || k_cache.size() != v_cache.size() ||
      k_new.size() != static_cast<size_t>(B) * kp.seqlen_new * wk || v_new.size() != k_new.size())
    throw std::invalid_argument("flashplus::ref: kv cache tensor sizes do not match the problem");
  KvcacheResult r;
  r.k_cache = k_cache;
  r.v_cache = v_cache;
  // 1. append (k rotated at its absolute position).
  for (int b = 0; b < B; ++b)
    for (int tt = 0; tt < kp.seqlen_new; ++tt) {
      const int pos = kp.cache_seqlens[b] + tt;
      const int64_t row = kp.cache_row(b, pos);
      for (int g = 0; g < hk; ++g) {
        const size_t src = ((static_cast<size_t>(b) * kp.seqlen_new + tt) * hk + g) * d;
        std::vector<double> x(k_new.begin() + src, k_new.begin() + src + d);
        if (rotary) ref_rotate(kp, pos, x.data(), naive, t);
        std::copy(x.begin(), x.end(), r.k_cache.begin() + row * wk + g * d);
        std::copy(v_new.begin() + src, v_new.begin() + src + d, r.v_cache.begin() + row * wk + g * d);
      }
    }
  // 2. attention per sequence over [leftpad, end).
  r.fwd.out.assign(q.size(), 0.0);
  r.fwd.lse.assign(static_cast<size_t>(B) * h * sq, 0.0);
  for (int b = 0; b < B; ++b) {
    const int end = kp.cache_seqlens.empty() ? cap : kp.cache_seqlens[b] + kp.seqlen_new;
    const int lp = kp.cache_leftpad.empty() ? 0 : kp.cache_leftpad[b];
    Problem p;
    p.batch = 1;
    p.seqlen_q = sq;
    p.seqlen_k = end - lp;
    p.nheads = h;
    p.nheads_k = hk;
    p.head_dim = d;
    p.softmax_scale = kp.softmax_scale;
    p.causal = kp.causal;
    p.window_left = kp.window_left;
    p.window_right = kp.window_right;
    p.softcap = kp.softcap;
    p.canon_seqlen_q = sq;
    p.canon_seqlen_k = cap;
    if (kp.alibi.size() == static_cast<size_t>(h)) p.alibi = kp.alibi;
    else if (!kp.alibi.empty())
      p.alibi.assign(kp.alibi.begin() + static_cast<int64_t>(b) * h, kp.alibi.begin() + static_cast<int64_t>(b + 1) * h);
    std::vector<double> ks(static_cast<size_t>(p.seqlen_k) * wk), vs(ks.size());
    for (int j = 0; j < p.seqlen_k; ++j) {
      const int64_t row = kp.cache_row(b, lp + j);
      std::copy(r.k_cache.begin() + row * wk, r.k_cache.begin() + (row + 1) * wk, ks.begin() + j * wk);
      std::copy(r.v_cache.begin() + row * wk, r.v_cache.begin() + (row + 1) * wk, vs.begin() + j * wk);
    }
    std::vector<double> qs(q.begin() + static_cast<int64_t>(b) * sq * wq, q.begin() + static_cast<int64_t>(b + 1) * sq * wq);
    if (rotary) {
      const bool local = canonical_mask(p).bounded;
      const int base = kp.cache_seqlens.empty() ? 0 : kp.cache_seqlens[b];
      for (int i = 0; i < sq; ++i)
        for (int hh = 0; hh < h; ++hh)
          ref_rotate(kp, local ? base + i : base, qs.data() + i * wq + hh * d, naive, t);
    }
    const FwdResult f = naive ? forward_naive(p, qs, ks, vs, t) : forward(p, qs, ks, vs);
    std::copy(f.out.begin(), f.out.end(), r.fwd.out.begin() + static_cast<int64_t>(b) * sq * wq);
    std::copy(f.lse.begin(), f.lse.end(), r.fwd.lse.begin() + static_cast<int64_t>(b) * h * sq);
  }
  return r;
}

}  // namespace

KvcacheResult kvcache_forward(const KvcacheProblem& p, const std::vector<double>& q,
                              const std::vector<double>& k_cache,
                              const std::vector<double>& v_cache,
                              const std::vector<double>& k_new, const std::vector<double>& v_new) {
  return kvcache_impl(p, q, k_cache, v_cache, k_new, v_new, false, DType::f32);
}
KvcacheResult kvcache_forward_naive(const KvcacheProblem& p, const std::vector<double>& q,
                                    const std::vector<double>& k_cache,
                                    const std::vector<double>& v_cache,
                                    const std::vector<double>& k_new,
                                    const std::vector<double>& v_new, DType t) {
  return kvcache_impl(p, q, k_cache, v_cache, k_new, v_new, true, t);
}

}  // namespace flashplus::ref
