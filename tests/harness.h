// Test harness: run one attention case on a backend and judge it against the fp64 reference
// with the project's tolerance policy (flashplus::ref::compare). Inputs are random normal,
// never zero, drawn from a seed that INFO() prints so a failure replays.
#pragma once
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "flashplus/api.h"
#include "flashplus/numerics.h"
#include "flashplus/runtime.h"
#include "flashplus_ref/reference.h"

namespace flashplus::testing {

struct Case {
  ref::Problem p;
  DType dtype = DType::f32;
  bool alibi_per_batch = false;
  bool bwd = true;
  bool deterministic = false;
  uint64_t seed = 1234;
  std::string describe() const {
    return fmt::format(
        "b={} sq={} sk={} h={} hk={} d={} {} causal={} win=({},{}) softcap={} alibi={} "
        "dropout={} seed={}",
        p.batch, p.seqlen_q, p.seqlen_k, p.nheads, p.nheads_k, p.head_dim, dtype_name(dtype),
        p.causal, p.window_left, p.window_right, p.softcap,
        p.alibi.empty() ? "none" : (alibi_per_batch ? "(b,h)" : "(h)"), p.p_dropout, seed);
  }
};

// A case of the given sizes and storage type, with a seed derived from the shape (so each case
// has its own fixed inputs; `salt` separates test files that use the same shapes).
inline Case make_case(int b, int sq, int sk, int h, int hk, int d, DType t, uint64_t salt = 0) {
  Case c;
  c.p.batch = b;
  c.p.seqlen_q = sq;
  c.p.seqlen_k = sk;
  c.p.nheads = h;
  c.p.nheads_k = hk;
  c.p.head_dim = d;
  c.dtype = t;
  c.seed = 1000003ull * b + 10007ull * sq + 101ull * sk + 13ull * h + 7ull * hk + d +
           static_cast<unsigned>(t) + salt;
  return c;
}

struct Outcome {
  Status status;
  ref::Check out, lse, dq, dk, dv;
  std::vector<double> grads;  // dq, dk, dv as the backend wrote them, concatenated
  bool pass() const {
    return status.ok() && out.pass && lse.pass && dq.pass && dk.pass && dv.pass;
  }
  std::string summary() const {
    auto one = [](const char* n, const ref::Check& c) {
      return fmt::format("{}: err {:.3g} tol {:.3g} nonfinite {} {}", n, c.max_abs_err,
                         c.tolerance, c.bad_nonfinite, c.pass ? "ok" : "FAIL");
    };
    return fmt::format("{} | {} | {} | {} | {} | {}", status.to_string(), one("out", out),
                       one("lse", lse), one("dq", dq), one("dk", dk), one("dv", dv));
  }
};

// Random values rounded to `t` (the kernel and the reference see the same numbers).
inline std::vector<double> random_tensor(size_t n, DType t, std::mt19937_64& rng, double scale) {
  std::normal_distribution<double> dist(0.0, scale);
  std::vector<double> x(n);
  for (auto& e : x) {
    double r = dist(rng);
    if (r == 0.0) r = 1e-3;  // never exactly zero
    e = round_to(t, static_cast<float>(r));
  }
  return x;
}

// Device buffer holding `x` converted to dtype `t`; frees itself.
class Buffer {
 public:
  Buffer(Backend b, DType t, size_t n) : backend_(b), dtype_(t), n_(n) {
    st_ = runtime::alloc(b, std::max<size_t>(1, n) * dtype_size(t), &ptr_);
  }
  ~Buffer() { runtime::free(backend_, ptr_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Status upload(const std::vector<double>& x) {
    if (!st_.ok()) return st_;
    std::vector<uint8_t> host(n_ * dtype_size(dtype_));
    for (size_t i = 0; i < n_; ++i) store_float(host.data(), dtype_, i, static_cast<float>(x[i]));
    return runtime::copy_to_device(backend_, ptr_, host.data(), host.size());
  }
  Status fill(float value) { return upload(std::vector<double>(n_, value)); }
  Status download(std::vector<double>* x) const {
    if (!st_.ok()) return st_;
    std::vector<uint8_t> host(n_ * dtype_size(dtype_));
    FLASHPLUS_RETURN_IF_ERROR(runtime::copy_to_host(backend_, host.data(), ptr_, host.size()));
    x->resize(n_);
    for (size_t i = 0; i < n_; ++i) (*x)[i] = load_float(host.data(), dtype_, i);
    return Status::Ok();
  }
  TensorView view(std::initializer_list<int64_t> shape) const {
    return TensorView::contiguous(ptr_, dtype_, shape, runtime::device_kind(backend_), 0);
  }
  const Status& status() const { return st_; }

 private:
  Backend backend_;
  DType dtype_;
  size_t n_;
  void* ptr_ = nullptr;
  Status st_;
};

// Runs fwd (and bwd) of `c` on backend `b` and compares with the reference.
inline Outcome run_case(const Case& c, Backend b) {
  const ref::Problem& p = c.p;
  std::mt19937_64 rng(c.seed);
  const size_t nq = size_t(p.batch) * p.seqlen_q * p.nheads * p.head_dim;
  const size_t nk = size_t(p.batch) * p.seqlen_k * p.nheads_k * p.head_dim;
  const size_t nl = size_t(p.batch) * p.nheads * p.seqlen_q;
  auto q = random_tensor(nq, c.dtype, rng, 1.0);
  auto k = random_tensor(nk, c.dtype, rng, 1.0);
  auto v = random_tensor(nk, c.dtype, rng, 1.0);
  auto dout = random_tensor(nq, c.dtype, rng, 1.0);

  Outcome r;
  Buffer bq(b, c.dtype, nq), bk(b, c.dtype, nk), bv(b, c.dtype, nk), bo(b, c.dtype, nq);
  Buffer bl(b, DType::f32, nl), bdo(b, c.dtype, nq), bdq(b, c.dtype, nq), bdk(b, c.dtype, nk),
      bdv(b, c.dtype, nk);
  std::optional<Buffer> balibi;
  std::optional<TensorView> alibi;
  if (!p.alibi.empty()) {
    balibi.emplace(b, DType::f32, p.alibi.size());
    r.status = balibi->upload(p.alibi);
    if (!r.status.ok()) return r;
    alibi = c.alibi_per_batch ? balibi->view({p.batch, p.nheads}) : balibi->view({p.nheads});
  }
  for (auto* s : {&bq, &bk, &bv, &bo, &bl, &bdo, &bdq, &bdk, &bdv}) {
    if (!s->status().ok()) {
      r.status = s->status();
      return r;
    }
  }
  if (!(r.status = bq.upload(q)).ok() || !(r.status = bk.upload(k)).ok() ||
      !(r.status = bv.upload(v)).ok() || !(r.status = bdo.upload(dout)).ok())
    return r;
  // Poison outputs so unwritten elements show up.
  (void)bo.fill(12345.f);
  (void)bl.fill(12345.f);
  const auto Q = bq.view({p.batch, p.seqlen_q, p.nheads, p.head_dim});
  const auto K = bk.view({p.batch, p.seqlen_k, p.nheads_k, p.head_dim});
  const auto V = bv.view({p.batch, p.seqlen_k, p.nheads_k, p.head_dim});
  const auto O = bo.view({p.batch, p.seqlen_q, p.nheads, p.head_dim});
  const auto L = bl.view({p.batch, p.nheads, p.seqlen_q});
  RunOptions opts;
  opts.backend = b;
  opts.dropout_seed = p.dropout_seed;      // dropout (p.p_dropout > 0): the reference's mask
  opts.dropout_offset = p.dropout_offset;
  const float pdrop = static_cast<float>(p.p_dropout);
  const float scale = static_cast<float>(p.softmax_scale);
  const float softcap = static_cast<float>(p.softcap);
  r.status = mha_fwd(Q, K, V, O, L, alibi, pdrop, scale, p.causal, p.window_left, p.window_right,
                     softcap, false, opts);
  if (!r.status.ok()) return r;
  std::vector<double> out, lse;
  if (!(r.status = bo.download(&out)).ok() || !(r.status = bl.download(&lse)).ok()) return r;

  const auto ref_f = ref::forward(p, q, k, v);
  const auto naive_f = ref::forward_naive(p, q, k, v, c.dtype);
  const bool sc = p.softcap > 0;
  r.out = ref::compare(ref_f.out, out, naive_f.out, c.dtype, sc);
  r.lse = ref::compare(ref_f.lse, lse, naive_f.lse, c.dtype, sc);
  r.dq.pass = r.dk.pass = r.dv.pass = true;
  if (!c.bwd) return r;

  // The backward consumes the kernel's own out and lse, as callers do.
  (void)bdq.fill(12345.f);
  (void)bdk.fill(12345.f);
  (void)bdv.fill(12345.f);
  r.status = mha_bwd(bdo.view({p.batch, p.seqlen_q, p.nheads, p.head_dim}), Q, K, V, O, L,
                     bdq.view({p.batch, p.seqlen_q, p.nheads, p.head_dim}),
                     bdk.view({p.batch, p.seqlen_k, p.nheads_k, p.head_dim}),
                     bdv.view({p.batch, p.seqlen_k, p.nheads_k, p.head_dim}), alibi, pdrop, scale,
                     p.causal, p.window_left, p.window_right, softcap, c.deterministic,
                     std::nullopt, opts);
  if (!r.status.ok()) return r;
  std::vector<double> dq, dk, dv;
  if (!(r.status = bdq.download(&dq)).ok() || !(r.status = bdk.download(&dk)).ok() ||
      !(r.status = bdv.download(&dv)).ok())
    return r;
  const auto ref_b = ref::backward(p, q, k, v, dout);
  const auto naive_b = ref::backward_naive(p, q, k, v, dout, c.dtype);
  r.dq = ref::compare(ref_b.dq, dq, naive_b.dq, c.dtype, sc);
  r.dk = ref::compare(ref_b.dk, dk, naive_b.dk, c.dtype, sc);
  r.dv = ref::compare(ref_b.dv, dv, naive_b.dv, c.dtype, sc);
  r.grads = dq;
  r.grads.insert(r.grads.end(), dk.begin(), dk.end());
  r.grads.insert(r.grads.end(), dv.begin(), dv.end());
  return r;
}

// Backends compiled in that also have a device to run on (cpu always).
inline std::vector<Backend> runnable_backends() {
  std::vector<Backend> r;
  for (Backend b : compiled_backends()) {
    if (b == Backend::cpu) {
      r.push_back(b);
      continue;
    }
    for (const auto& d : list_devices())
      if (d.backend == b) {
        r.push_back(b);
        break;
      }
  }
  return r;
}

}  // namespace flashplus::testing
