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

// The forward of one (b, h); keeps P and the softcap derivative for the backward.
template <typename T>
struct HeadFwd {
  Mat<T> P, dfactor, out;
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
  f.out = stage_pv<T>(f.P, v, rnd);
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
  const Mat<T> dP = stage_dp<T>(dout, v, rnd);
  *dv = stage_dv<T>(f.P, dout, rnd);
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
  const int G = p.nheads / p.nheads_k;
  parallel_for(static_cast<int64_t>(p.batch) * p.nheads, [&](int64_t it) {
    const int b = static_cast<int>(it / p.nheads), h = static_cast<int>(it % p.nheads);
    const Mat<T> qh = head_slice<T>(q, b, p.seqlen_q, p.nheads, p.head_dim, h);
    const Mat<T> kh = head_slice<T>(k, b, p.seqlen_k, p.nheads_k, p.head_dim, h / G);
    const Mat<T> vh = head_slice<T>(v, b, p.seqlen_k, p.nheads_k, p.head_dim, h / G);
    const HeadFwd<T> f = head_forward<T>(p, mask, b, h, qh, kh, vh, rnd);
    put_head<T>(r.out, b, p.seqlen_q, p.nheads, p.head_dim, h, f.out);
    std::copy(f.lse.begin(), f.lse.end(), r.lse.begin() + it * p.seqlen_q);
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

// API.md §2.3, steps 1-4, with Sk* = seqlen_k and Sq* = seqlen_q (fixed-length attention).
Mask canonical_mask(const Problem& p) {
  int wl = p.window_left < 0 ? -1 : p.window_left;
  int wr = p.window_right < 0 ? -1 : p.window_right;
  const int sk = p.seqlen_k;
  // 1. a side at least as long as the keys is unbounded.
  if (wl >= sk) wl = -1;
  if (wr >= sk) wr = -1;
  // 2. a single causal query row without ALiBi is non-causal (it sees every key either way).
  bool causal = p.causal;
  if (causal && p.seqlen_q == 1 && p.alibi.empty()) causal = false;
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

}  // namespace flashplus::ref
