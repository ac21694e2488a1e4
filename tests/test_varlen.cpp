// mha_varlen_fwd / mha_varlen_bwd on every runnable backend that implements them, against the
// fp64 reference (ref::varlen_forward/backward: one fixed-length problem per sequence). Packed
// rows that no sequence covers must stay untouched (they hold a poison value before the call).
#include <catch2/catch.hpp>

#include <cmath>
#include <algorithm>
#include <numeric>

#include "harness.h"

using namespace flashplus;
using flashplus::testing::Buffer;

namespace {

constexpr float kPoison = 12345.f;

struct VCase {
  ref::VarlenProblem p;
  DType dtype = DType::f32;
  bool alibi_per_batch = false;
  bool bwd = true;
  bool use_seqused = false;
  int num_splits = 1;
  uint64_t seed = 99;
  std::string describe() const {
    std::string q, k;
    for (int b = 0; b < p.batch(); ++b) {
      q += std::to_string(p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b]) + ",";
      k += std::to_string(p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b]) + ",";
    }
    return fmt::format("lens_q=[{}] lens_k=[{}] total=({}, {}) max=({}, {}) h={} hk={} d={} {} "
                       "causal={} win=({},{}) softcap={} alibi={} seqused={} splits={} dropout={} "
                       "seed={}",
                       q, k, p.total_q, p.total_k, p.max_seqlen_q, p.max_seqlen_k, p.nheads,
                       p.nheads_k, p.head_dim, dtype_name(dtype), p.causal, p.window_left,
                       p.window_right, p.softcap, p.alibi.size(), use_seqused, num_splits,
                       p.p_dropout, seed);
  }
};

// Sequences of the given lengths packed back to back, with `extra` uncovered rows at the end.
VCase make(const std::vector<int>& lq, const std::vector<int>& lk, int h, int hk, int d, DType t,
           int extra_q = 3, int extra_k = 2) {
  VCase c;
  c.dtype = t;
  auto& p = c.p;
  p.nheads = h;
  p.nheads_k = hk;
  p.head_dim = d;
  p.cu_seqlens_q = {0};
  p.cu_seqlens_k = {0};
  for (size_t b = 0; b < lq.size(); ++b) {
    p.cu_seqlens_q.push_back(p.cu_seqlens_q.back() + lq[b]);
    p.cu_seqlens_k.push_back(p.cu_seqlens_k.back() + lk[b]);
  }
  p.total_q = p.cu_seqlens_q.back() + extra_q;
  p.total_k = p.cu_seqlens_k.back() + extra_k;
  p.max_seqlen_q = *std::max_element(lq.begin(), lq.end());
  p.max_seqlen_k = *std::max_element(lk.begin(), lk.end());
  c.seed = 7919ull * p.total_q + 104729ull * p.total_k + 31ull * h + 17ull * hk + d +
           static_cast<unsigned>(t);
  return c;
}

std::vector<double> to_double(const std::vector<int>& v) { return {v.begin(), v.end()}; }

struct VOutcome {
  Status status;
  ref::Check out, lse, dq, dk, dv;
  int64_t clobbered = 0;  // uncovered entries the kernel wrote
  std::vector<double> out_raw, lse_raw;
  bool pass() const {
    return status.ok() && clobbered == 0 && out.pass && lse.pass && dq.pass && dk.pass && dv.pass;
  }
  std::string summary() const {
    auto one = [](const char* n, const ref::Check& c) {
      return fmt::format("{}: err {:.3g} tol {:.3g} nonfinite {} {}", n, c.max_abs_err,
                         c.tolerance, c.bad_nonfinite, c.pass ? "ok" : "FAIL");
    };
    return fmt::format("{} | clobbered {} | {} | {} | {} | {} | {}", status.to_string(), clobbered,
                       one("out", out), one("lse", lse), one("dq", dq), one("dk", dk),
                       one("dv", dv));
  }
};

// covered[row] for packed rows: query rows of any sequence, or key rows a sequence uses.
std::vector<bool> covered_rows(const ref::VarlenProblem& p, bool keys) {
  std::vector<bool> c(keys ? p.total_k : p.total_q, false);
  for (int b = 0; b < p.batch(); ++b) {
    const auto& cu = keys ? p.cu_seqlens_k : p.cu_seqlens_q;
    int n = cu[b + 1] - cu[b];
    if (keys && !p.seqused_k.empty()) n = p.seqused_k[b];
    for (int r = cu[b]; r < cu[b] + n; ++r) c[r] = true;
  }
  return c;
}

// Entries of uncovered rows must still be the poison; they are then set to the reference's value
// so compare() judges the covered ones only. `row_of(i)` maps an element index to its packed row.
template <typename RowOf>
int64_t check_untouched(std::vector<double>& got, const std::vector<double>& ref,
                        const std::vector<bool>& covered, DType t, RowOf row_of) {
  int64_t bad = 0;
  const double poison = round_to(t, kPoison);  // as the buffer stored it
  for (size_t i = 0; i < got.size(); ++i) {
    if (covered[row_of(i)]) continue;
    if (got[i] != poison) ++bad;
    got[i] = ref[i];
  }
  return bad;
}

VOutcome run_varlen(const VCase& c, Backend be) {
  const auto& p = c.p;
  std::mt19937_64 rng(c.seed);
  const int B = p.batch();
  const size_t wq = size_t(p.nheads) * p.head_dim, wk = size_t(p.nheads_k) * p.head_dim;
  const size_t nq = wq * p.total_q, nk = wk * p.total_k, nl = size_t(p.nheads) * p.total_q;
  auto q = testing::random_tensor(nq, c.dtype, rng, 1.0);
  auto k = testing::random_tensor(nk, c.dtype, rng, 1.0);
  auto v = testing::random_tensor(nk, c.dtype, rng, 1.0);
  auto dout = testing::random_tensor(nq, c.dtype, rng, 1.0);
  VOutcome r;
  Buffer bq(be, c.dtype, nq), bk(be, c.dtype, nk), bv(be, c.dtype, nk), bo(be, c.dtype, nq),
      bl(be, DType::f32, nl), bdo(be, c.dtype, nq), bdq(be, c.dtype, nq), bdk(be, c.dtype, nk),
      bdv(be, c.dtype, nk), bcq(be, DType::i32, B + 1), bck(be, DType::i32, B + 1),
      bsu(be, DType::i32, B);
  for (auto* s : {&bq, &bk, &bv, &bo, &bl, &bdo, &bdq, &bdk, &bdv, &bcq, &bck, &bsu})
    if (!(r.status = s->status()).ok()) return r;
  (void)bq.upload(q);
  (void)bk.upload(k);
  (void)bv.upload(v);
  (void)bdo.upload(dout);
  (void)bcq.upload(to_double(p.cu_seqlens_q));
  (void)bck.upload(to_double(p.cu_seqlens_k));
  if (c.use_seqused) (void)bsu.upload(to_double(p.seqused_k));
  (void)bo.fill(kPoison);
  (void)bl.fill(kPoison);
  std::optional<Buffer> balibi;
  std::optional<TensorView> alibi;
  if (!p.alibi.empty()) {
    balibi.emplace(be, DType::f32, p.alibi.size());
    (void)balibi->upload(p.alibi);
    alibi = c.alibi_per_batch ? balibi->view({B, p.nheads}) : balibi->view({p.nheads});
  }
  std::optional<TensorView> seqused;
  if (c.use_seqused) seqused = bsu.view({B});
  const bool paged = !p.block_table.empty();
  std::optional<Buffer> bbt;
  std::optional<TensorView> btab;
  if (paged) {
    bbt.emplace(be, DType::i32, p.block_table.size());
    (void)bbt->upload(to_double(p.block_table));
    btab = bbt->view({B, p.max_blocks_per_seq});
  }
  const auto Q = bq.view({p.total_q, p.nheads, p.head_dim});
  const int64_t nblk = paged ? p.total_k / p.page_block_size : 0;
  const auto K = paged ? bk.view({nblk, p.page_block_size, p.nheads_k, p.head_dim})
                       : bk.view({p.total_k, p.nheads_k, p.head_dim});
  const auto V = paged ? bv.view({nblk, p.page_block_size, p.nheads_k, p.head_dim})
                       : bv.view({p.total_k, p.nheads_k, p.head_dim});
  const auto O = bo.view({p.total_q, p.nheads, p.head_dim});
  const auto L = bl.view({p.nheads, p.total_q});
  RunOptions opts;
  opts.backend = be;
  opts.dropout_seed = p.dropout_seed;
  opts.dropout_offset = p.dropout_offset;
  const float pdrop = static_cast<float>(p.p_dropout);
  const float scale = static_cast<float>(p.softmax_scale), cap = static_cast<float>(p.softcap);
  r.status = mha_varlen_fwd(Q, K, V, O, L, bcq.view({B + 1}), bck.view({B + 1}), seqused,
                            std::nullopt, btab, alibi, p.max_seqlen_q, p.max_seqlen_k, pdrop,
                            scale, false, p.causal, p.window_left, p.window_right, cap, false,
                            c.num_splits, opts);
  if (!r.status.ok()) return r;
  std::vector<double> out, lse;
  (void)bo.download(&out);
  (void)bl.download(&lse);
  const auto cq = covered_rows(p, false), ck = covered_rows(p, true);
  const auto rf = ref::varlen_forward(p, q, k, v);
  const auto nf = ref::varlen_forward_naive(p, q, k, v, c.dtype);
  r.clobbered += check_untouched(out, rf.out, cq, c.dtype, [&](size_t i) { return i / wq; });
  r.clobbered += check_untouched(lse, rf.lse, cq, DType::f32, [&](size_t i) { return i % p.total_q; });
  r.out_raw = out;
  r.lse_raw = lse;
  const bool sc = p.softcap > 0;
  r.out = ref::compare(rf.out, out, nf.out, c.dtype, sc);
  r.lse = ref::compare(rf.lse, lse, nf.lse, c.dtype, sc);
  r.dq.pass = r.dk.pass = r.dv.pass = true;
  if (!c.bwd || paged) return r;
  (void)bdq.fill(kPoison);
  (void)bdk.fill(kPoison);
  (void)bdv.fill(kPoison);
  r.status = mha_varlen_bwd(bdo.view({p.total_q, p.nheads, p.head_dim}), Q, K, V, O, L,
                            bdq.view({p.total_q, p.nheads, p.head_dim}),
                            bdk.view({p.total_k, p.nheads_k, p.head_dim}),
                            bdv.view({p.total_k, p.nheads_k, p.head_dim}), bcq.view({B + 1}),
                            bck.view({B + 1}), alibi, p.max_seqlen_q, p.max_seqlen_k, pdrop, scale,
                            false, p.causal, p.window_left, p.window_right, cap, true,
                            std::nullopt, opts);
  if (!r.status.ok()) return r;
  std::vector<double> dq, dk, dv;
  (void)bdq.download(&dq);
  (void)bdk.download(&dk);
  (void)bdv.download(&dv);
  // The reference backward has no seqused_k: sequences use all their keys there.
  const auto rb = ref::varlen_backward(p, q, k, v, dout);
  const auto nb = ref::varlen_backward_naive(p, q, k, v, dout, c.dtype);
  r.clobbered += check_untouched(dq, rb.dq, cq, c.dtype, [&](size_t i) { return i / wq; });
  r.clobbered += check_untouched(dk, rb.dk, ck, c.dtype, [&](size_t i) { return i / wk; });
  r.clobbered += check_untouched(dv, rb.dv, ck, c.dtype, [&](size_t i) { return i / wk; });
  r.dq = ref::compare(rb.dq, dq, nb.dq, c.dtype, sc);
  r.dk = ref::compare(rb.dk, dk, nb.dk, c.dtype, sc);
  r.dv = ref::compare(rb.dv, dv, nb.dv, c.dtype, sc);
  return r;
}

// Every runnable backend implements varlen (the GPU backends since issue 5).
std::vector<Backend> varlen_backends() { return testing::runnable_backends(); }

void check_all(const std::vector<VCase>& cases) {
  for (Backend b : varlen_backends())
    for (const VCase& c : cases) {
      const auto r = run_varlen(c, b);
      INFO("backend " << backend_name(b) << ": " << c.describe());
      INFO(r.summary());
      CHECK(r.pass());
    }
}

std::vector<double> slopes(int n) {
  std::vector<double> s(n);
  for (int i = 0; i < n; ++i) s[i] = 0.4 * std::pow(0.5, i % 8 + 1) + 0.01 * i;
  return s;
}

}  // namespace

TEST_CASE("varlen: ragged batches, every dtype, zero-length and length-1 sequences", "[varlen]") {
  std::vector<VCase> cs;
  for (DType t : {DType::f32, DType::f16, DType::bf16}) {
    cs.push_back(make({5, 0, 1, 130, 17}, {7, 3, 1, 90, 0}, 2, 2, 40, t));  // sq != sk per seq
    cs.push_back(make({1}, {1}, 1, 1, 8, t, 0, 0));                          // smallest, no padding
  }
  cs.push_back(make({0, 0}, {0, 4}, 2, 1, 16, DType::f32));  // no query rows at all
  check_all(cs);
}

TEST_CASE("varlen: causal and sliding windows align per sequence", "[varlen]") {
  std::vector<VCase> cs;
  for (auto [wl, wr] : std::vector<std::pair<int, int>>{{-1, -1}, {4, 0}, {-1, 3}, {10, 2}}) {
    for (bool causal : {false, true}) {
      VCase c = make({33, 2, 70, 9}, {20, 40, 70, 1}, 4, 2, 32, DType::f16);
      c.p.causal = causal;
      c.p.window_left = wl;
      c.p.window_right = wr;
      cs.push_back(c);
    }
  }
  // A window wider than max_seqlen_k is canonicalised with Sk* = max_seqlen_k (not sk_b).
  VCase w = make({8, 30}, {5, 30}, 2, 2, 16, DType::f32);
  w.p.window_left = 2;
  w.p.window_right = 29;
  cs.push_back(w);
  check_all(cs);
}

TEST_CASE("varlen: GQA/MQA, softcap, ALiBi per head and per sequence", "[varlen]") {
  std::vector<VCase> cs;
  VCase g = make({40, 65, 3}, {50, 12, 3}, 6, 1, 64, DType::bf16);  // MQA
  g.p.causal = true;
  cs.push_back(g);
  VCase sc = make({21, 9}, {33, 40}, 4, 2, 48, DType::bf16);
  sc.p.softcap = 2.0;
  sc.p.softmax_scale = 0.5;
  cs.push_back(sc);
  for (bool per_batch : {false, true})
    for (bool causal : {false, true}) {
      VCase a = make({12, 1, 30}, {30, 25, 30}, 4, 2, 32, DType::f16);
      a.alibi_per_batch = per_batch;
      a.p.alibi = slopes(per_batch ? 12 : 4);
      a.p.causal = causal;
      cs.push_back(a);
    }
  check_all(cs);
}

TEST_CASE("varlen: seqused_k limits the keys of each sequence", "[varlen]") {
  VCase c = make({6, 4, 3}, {10, 8, 5}, 2, 1, 16, DType::f32);
  c.use_seqused = true;
  c.p.seqused_k = {7, 0, 5};
  c.bwd = false;  // mha_varlen_bwd has no seqused_k (as upstream)
  VCase d = c;
  d.p.causal = true;
  check_all({c, d});
}

TEST_CASE("varlen: num_splits gives the same results", "[varlen]") {
  for (Backend b : varlen_backends()) {
    VCase base = make({3, 1, 2}, {300, 129, 0}, 2, 1, 32, DType::f32);
    base.bwd = false;
    base.p.causal = true;
    std::vector<VOutcome> rs;
    for (int ns : {1, 2, 3, 0, 7}) {
      VCase c = base;
      c.num_splits = ns;
      rs.push_back(run_varlen(c, b));
      INFO(c.describe() << " | " << rs.back().summary());
      CHECK(rs.back().pass());
    }
    for (size_t i = 1; i < rs.size(); ++i)
      for (size_t e = 0; e < rs[0].out_raw.size(); ++e)
        REQUIRE(std::fabs(rs[i].out_raw[e] - rs[0].out_raw[e]) <= 1e-5);
  }
}

TEST_CASE("varlen: equal lengths match the fixed-length entry point", "[varlen]") {
  // Three sequences of (sq, sk) = (20, 35) packed vs mha_fwd with batch 3: same numbers.
  const int B = 3, sq = 20, sk = 35, h = 4, hk = 2, d = 32;
  std::mt19937_64 rng(5);
  const size_t nq = size_t(B) * sq * h * d, nk = size_t(B) * sk * hk * d;
  auto q = testing::random_tensor(nq, DType::f16, rng, 1.0);
  auto k = testing::random_tensor(nk, DType::f16, rng, 1.0);
  auto v = testing::random_tensor(nk, DType::f16, rng, 1.0);
  const Backend be = Backend::cpu;
  Buffer bq(be, DType::f16, nq), bk(be, DType::f16, nk), bv(be, DType::f16, nk),
      bo1(be, DType::f16, nq), bo2(be, DType::f16, nq), bl1(be, DType::f32, B * h * sq),
      bl2(be, DType::f32, B * h * sq), bcq(be, DType::i32, B + 1), bck(be, DType::i32, B + 1);
  REQUIRE(bq.upload(q).ok());
  REQUIRE(bk.upload(k).ok());
  REQUIRE(bv.upload(v).ok());
  REQUIRE(bcq.upload({0, 20, 40, 60}).ok());
  REQUIRE(bck.upload({0, 35, 70, 105}).ok());
  RunOptions opts;
  opts.backend = be;
  REQUIRE(mha_fwd(bq.view({B, sq, h, d}), bk.view({B, sk, hk, d}), bv.view({B, sk, hk, d}),
                  bo1.view({B, sq, h, d}), bl1.view({B, h, sq}), std::nullopt, 0.f, 0.f, true, -1,
                  -1, 0.f, false, opts)
              .ok());
  REQUIRE(mha_varlen_fwd(bq.view({B * sq, h, d}), bk.view({B * sk, hk, d}),
                         bv.view({B * sk, hk, d}), bo2.view({B * sq, h, d}), bl2.view({h, B * sq}),
                         bcq.view({B + 1}), bck.view({B + 1}), std::nullopt, std::nullopt,
                         std::nullopt, std::nullopt, sq, sk, 0.f, 0.f, false, true, -1, -1, 0.f,
                         false, 1, opts)
              .ok());
  std::vector<double> o1, o2, l1, l2;
  REQUIRE(bo1.download(&o1).ok());
  REQUIRE(bo2.download(&o2).ok());
  REQUIRE(bl1.download(&l1).ok());
  REQUIRE(bl2.download(&l2).ok());
  CHECK(o1 == o2);
  // lse layouts differ: (b, h, sq) vs (h, total_q).
  for (int b = 0; b < B; ++b)
    for (int hh = 0; hh < h; ++hh)
      for (int i = 0; i < sq; ++i)
        REQUIRE(l1[(size_t(b) * h + hh) * sq + i] == l2[size_t(hh) * B * sq + b * sq + i]);
}

TEST_CASE("varlen: zero_tensors zeroes out and sets lse to -inf outside the sequences", "[varlen]") {
  for (Backend be : varlen_backends()) {
  INFO("backend " << backend_name(be));
  const int h = 1, d = 8, tq = 5, tk = 4;
  Buffer bq(be, DType::f32, tq * h * d), bk(be, DType::f32, tk * d), bv(be, DType::f32, tk * d),
      bo(be, DType::f32, tq * h * d), bl(be, DType::f32, h * tq), bcq(be, DType::i32, 2),
      bck(be, DType::i32, 2);
  REQUIRE(bq.fill(0.5f).ok());
  REQUIRE(bk.fill(0.25f).ok());
  REQUIRE(bv.fill(1.f).ok());
  REQUIRE(bo.fill(kPoison).ok());
  REQUIRE(bl.fill(kPoison).ok());
  REQUIRE(bcq.upload({0, 2}).ok());
  REQUIRE(bck.upload({0, 3}).ok());
  RunOptions opts;
  opts.backend = be;
  REQUIRE(mha_varlen_fwd(bq.view({tq, h, d}), bk.view({tk, 1, d}), bv.view({tk, 1, d}),
                         bo.view({tq, h, d}), bl.view({h, tq}), bcq.view({2}), bck.view({2}),
                         std::nullopt, std::nullopt, std::nullopt, std::nullopt, 2, 3, 0.f, 0.f,
                         true, false, -1, -1, 0.f, false, 0, opts)
              .ok());
  std::vector<double> o, l;
  REQUIRE(bo.download(&o).ok());
  REQUIRE(bl.download(&l).ok());
  for (int i = 0; i < 2 * d; ++i) CHECK(o[i] == Approx(1.0));
  for (int i = 2 * d; i < tq * d; ++i) CHECK(o[i] == 0.0);
  CHECK(std::isfinite(l[0]));
  CHECK(std::isfinite(l[1]));
  for (int i = 2; i < tq; ++i) CHECK(l[i] == -std::numeric_limits<double>::infinity());
  // The backward zeroes dq, dk, dv the same way (rows no sequence covers stay 0).
  Buffer bdo(be, DType::f32, tq * h * d), bdq(be, DType::f32, tq * h * d),
      bdk(be, DType::f32, tk * d), bdv(be, DType::f32, tk * d);
  REQUIRE(bdo.fill(0.75f).ok());
  for (Buffer* g : {&bdq, &bdk, &bdv}) REQUIRE(g->fill(kPoison).ok());
  REQUIRE(mha_varlen_bwd(bdo.view({tq, h, d}), bq.view({tq, h, d}), bk.view({tk, 1, d}),
                         bv.view({tk, 1, d}), bo.view({tq, h, d}), bl.view({h, tq}),
                         bdq.view({tq, h, d}), bdk.view({tk, 1, d}), bdv.view({tk, 1, d}),
                         bcq.view({2}), bck.view({2}), std::nullopt, 2, 3, 0.f, 0.f, true, false,
                         -1, -1, 0.f, false, std::nullopt, opts)
              .ok());
  std::vector<double> dq, dk, dv;
  REQUIRE(bdq.download(&dq).ok());
  REQUIRE(bdk.download(&dk).ok());
  REQUIRE(bdv.download(&dv).ok());
  for (int i = 2 * d; i < tq * d; ++i) CHECK(dq[i] == 0.0);
  for (int i = 3 * d; i < tk * d; ++i) {
    CHECK(dk[i] == 0.0);
    CHECK(dv[i] == 0.0);
  }
  for (int i = 0; i < 3 * d; ++i) CHECK(std::isfinite(dv[i]));
  }
}

TEST_CASE("varlen: invalid arguments are reported before anything runs", "[varlen][errors]") {
  const Backend be = Backend::cpu;
  const int h = 2, hk = 1, d = 16, tq = 10, tk = 12;
  Buffer bq(be, DType::f16, tq * h * d), bk(be, DType::f16, tk * hk * d),
      bv(be, DType::f16, tk * hk * d), bo(be, DType::f16, tq * h * d), bl(be, DType::f32, h * tq),
      bcq(be, DType::i32, 3), bck(be, DType::i32, 3), bsu(be, DType::i32, 2),
      bcf(be, DType::f32, 3);
  REQUIRE(bq.fill(0.1f).ok());
  REQUIRE(bk.fill(0.1f).ok());
  REQUIRE(bv.fill(0.1f).ok());
  RunOptions opts;
  opts.backend = be;
  auto run = [&](std::vector<double> cuq, std::vector<double> cuk, int maxq = 10, int maxk = 12,
                 std::optional<TensorView> seqused = std::nullopt, float dropout = 0.f) {
    REQUIRE(bcq.upload(cuq).ok());
    REQUIRE(bck.upload(cuk).ok());
    return mha_varlen_fwd(bq.view({tq, h, d}), bk.view({tk, hk, d}), bv.view({tk, hk, d}),
                          bo.view({tq, h, d}), bl.view({h, tq}), bcq.view({3}), bck.view({3}),
                          seqused, std::nullopt, std::nullopt, std::nullopt, maxq, maxk, dropout,
                          0.f, false, false, -1, -1, 0.f, false, 0, opts);
  };
  CHECK(run({0, 4, 10}, {0, 6, 12}).ok());
  auto invalid = [](const Status& s, const char* what) {
    INFO(s.to_string());
    CHECK(s.code() == StatusCode::invalid_args);
    CHECK(s.message().find(what) != std::string::npos);
  };
  invalid(run({1, 4, 10}, {0, 6, 12}), "cu_seqlens_q[0] must be 0");
  invalid(run({0, 6, 4}, {0, 6, 12}), "non-decreasing");
  invalid(run({0, 4, 11}, {0, 6, 12}), "exceeds");
  invalid(run({0, 4, 10}, {0, 6, 13}), "exceeds");
  invalid(run({0, 4, 10}, {0, 6, 12}, 5), "max_seqlen_q");
  invalid(run({0, 4, 10}, {0, 6, 12}, 10, 5), "max_seqlen_k");
  REQUIRE(bsu.upload({6, 7}).ok());
  invalid(run({0, 4, 10}, {0, 6, 12}, 10, 12, bsu.view({2})), "seqused_k[1]");
  CHECK(run({0, 4, 10}, {0, 6, 12}, 10, 12, std::nullopt, 0.1f).ok());  // dropout: test_dropout.cpp
  // Wrong dtype / shape of cu_seqlens and softmax_lse.
  Status s = mha_varlen_fwd(bq.view({tq, h, d}), bk.view({tk, hk, d}), bv.view({tk, hk, d}),
                            bo.view({tq, h, d}), bl.view({h, tq}), bcf.view({3}), bck.view({3}),
                            std::nullopt, std::nullopt, std::nullopt, std::nullopt, 10, 12, 0.f,
                            0.f, false, false, -1, -1, 0.f, false, 0, opts);
  invalid(s, "cu_seqlens_q must have dtype int32");
  s = mha_varlen_fwd(bq.view({tq, h, d}), bk.view({tk, hk, d}), bv.view({tk, hk, d}),
                     bo.view({tq, h, d}), bl.view({tq, h}), bcq.view({3}), bck.view({3}),
                     std::nullopt, std::nullopt, std::nullopt, std::nullopt, 10, 12, 0.f, 0.f,
                     false, false, -1, -1, 0.f, false, 0, opts);
  invalid(s, "softmax_lse must have shape");
  s = mha_varlen_fwd(bq.view({tq, h, d}), bk.view({tk, hk, d}), bv.view({tk, hk, d}),
                     bo.view({tq, h, d}), bl.view({h, tq}), bcq.view({3}), bck.view({3}),
                     std::nullopt, std::nullopt, std::nullopt, std::nullopt, 10, 12, 0.f, 0.f,
                     false, false, -1, -1, 0.f, false, 129, opts);
  invalid(s, "num_splits");
  // Paged K/V and leftpad_k are not implemented for varlen yet.
  s = mha_varlen_fwd(bq.view({tq, h, d}), bk.view({tk, hk, d}), bv.view({tk, hk, d}),
                     bo.view({tq, h, d}), bl.view({h, tq}), bcq.view({3}), bck.view({3}),
                     std::nullopt, bsu.view({2}), std::nullopt, std::nullopt, 10, 12, 0.f, 0.f,
                     false, false, -1, -1, 0.f, false, 0, opts);
  CHECK(s.code() == StatusCode::unsupported);
  // The backward validates the same way.
  Buffer bdq(be, DType::f16, tq * h * d), bdk(be, DType::f16, tk * hk * d),
      bdv(be, DType::f16, tk * hk * d);
  REQUIRE(bcq.upload({0, 4, 3}).ok());
  s = mha_varlen_bwd(bo.view({tq, h, d}), bq.view({tq, h, d}), bk.view({tk, hk, d}),
                     bv.view({tk, hk, d}), bo.view({tq, h, d}), bl.view({h, tq}),
                     bdq.view({tq, h, d}), bdk.view({tk, hk, d}), bdv.view({tk, hk, d}),
                     bcq.view({3}), bck.view({3}), std::nullopt, 10, 12, 0.f, 0.f, false, false,
                     -1, -1, 0.f, false, std::nullopt, opts);
  invalid(s, "non-decreasing");
}

TEST_CASE("varlen: dropout, forward and backward, per-sequence mask", "[varlen][dropout]") {
  std::vector<VCase> cs;
  for (bool causal : {false, true}) {
    VCase c = make({17, 0, 1, 70}, {23, 5, 1, 64}, 4, 2, 32, DType::bf16);
    c.p.p_dropout = 0.17;
    c.p.dropout_seed = 20261125;
    c.p.dropout_offset = 3;
    c.p.causal = causal;
    cs.push_back(c);
  }
  VCase s = cs[0];  // with num_splits: the combine carries the dropout-scaled pieces
  s.num_splits = 3;
  s.bwd = false;
  cs.push_back(s);
  check_all(cs);
}

#include "params.h"  // kernels/src: make_varlen_fwd_params, for the AttnParams helpers below

TEST_CASE("varlen: AttnParams per-sequence helpers and Sk* = max_seqlen_k", "[varlen][params]") {
  std::vector<float> q(9 * 2 * 4), k(12 * 1 * 4), out(q.size()), lse(2 * 9);
  std::vector<int32_t> cuq{0, 3, 3, 8}, cuk{0, 5, 6, 12};
  const auto Q = TensorView::contiguous(q.data(), DType::f32, {9, 2, 4});
  const auto K = TensorView::contiguous(k.data(), DType::f32, {12, 1, 4});
  const auto O = TensorView::contiguous(out.data(), DType::f32, {9, 2, 4});
  const auto L = TensorView::contiguous(lse.data(), DType::f32, {2, 9});
  const auto CQ = TensorView::contiguous(cuq.data(), DType::i32, {4});
  const auto CK = TensorView::contiguous(cuk.data(), DType::i32, {4});
  AttnParams p;
  REQUIRE(detail::make_varlen_fwd_params(Q, K, K, O, L, CQ, CK, std::nullopt, std::nullopt,
                                         std::nullopt, std::nullopt, 5, 6, 0.f, 0.f, false, false,
                                         2, 5, 0.f, false, 0, &p)
              .ok());
  CHECK(p.batch == 3);
  CHECK(p.actual_seqlen_q(1) == 0);
  CHECK(p.actual_seqlen_q(2) == 5);
  CHECK(p.actual_seqlen_k(2) == 6);
  CHECK(p.q_offset(p.q_stride, 2, 1) == 4 * 8);  // packed row cu_q[2] + 1 = 4
  CHECK(p.kv_offset(p.k_stride, 2, 2) == 8 * 4);
  CHECK(p.lse_offset(2, 1, 1) == 1 * 9 + 4);
  // wr = 5 < Sk* = 6 stays bounded; wr = 6 >= Sk* becomes unbounded, then Sk* (step 4).
  CHECK(p.window_right == 5);
  REQUIRE(detail::make_varlen_fwd_params(Q, K, K, O, L, CQ, CK, std::nullopt, std::nullopt,
                                         std::nullopt, std::nullopt, 5, 6, 0.f, 0.f, false, false,
                                         2, 6, 0.f, false, 0, &p)
              .ok());
  CHECK(p.window_left == 2);
  CHECK(p.window_right == 6);
}

namespace {
// Sequences' keys moved into a paged cache of `page` slots per block, blocks in shuffled order;
// table entries past the pages a sequence uses are -1 (never read). cu_seqlens_k keeps the lengths.
void make_paged(VCase& c, int page) {
  auto& p = c.p;
  int mb = 1;
  for (int b = 0; b < p.batch(); ++b)
    mb = std::max(mb, (p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b] + page - 1) / page);
  const int nblk = p.batch() * mb + 2;
  std::vector<int> blocks(nblk);
  std::iota(blocks.begin(), blocks.end(), 0);
  std::mt19937_64 rng(c.seed + page);
  std::shuffle(blocks.begin(), blocks.end(), rng);
  p.page_block_size = page;
  p.max_blocks_per_seq = mb;
  p.block_table.assign(static_cast<size_t>(p.batch()) * mb, -1);
  for (int b = 0; b < p.batch(); ++b) {
    const int used = (p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b] + page - 1) / page;
    for (int i = 0; i < used; ++i) p.block_table[static_cast<size_t>(b) * mb + i] = blocks[b * mb + i];
  }
  p.total_k = nblk * page;
  c.bwd = false;  // no backward through paged K/V (API.md §2.9)
}
}  // namespace

TEST_CASE("varlen: paged K/V through block_table, any page size", "[varlen]") {
  std::vector<VCase> cs;
  for (int page : {1, 7, 16, 256}) {
    VCase c = make({5, 0, 40, 1}, {30, 4, 300, 0}, 4, 2, 32, DType::f16);
    c.p.causal = page != 16;
    make_paged(c, page);
    cs.push_back(c);
  }
  VCase s = cs[1];  // with splits and seqused_k
  s.num_splits = 3;
  s.use_seqused = true;
  s.p.seqused_k = {29, 4, 150, 0};
  cs.push_back(s);
  check_all(cs);
}

TEST_CASE("varlen: paged block_table errors", "[varlen][errors]") {
  const Backend be = Backend::cpu;
  const int h = 2, d = 16, tq = 4, page = 4, nblk = 3;
  Buffer bq(be, DType::f32, tq * h * d), bk(be, DType::f32, nblk * page * d),
      bo(be, DType::f32, tq * h * d), bl(be, DType::f32, h * tq), bcq(be, DType::i32, 3),
      bck(be, DType::i32, 3), bbt(be, DType::i32, 4);
  REQUIRE(bq.fill(0.1f).ok());
  REQUIRE(bk.fill(0.1f).ok());
  REQUIRE(bcq.upload({0, 2, 4}).ok());
  REQUIRE(bck.upload({0, 5, 8}).ok());  // 5 keys: 2 pages; 3 keys: 1 page
  RunOptions opts;
  opts.backend = be;
  auto run = [&](std::vector<double> table, int maxk = 5) {
    REQUIRE(bbt.upload(table).ok());
    return mha_varlen_fwd(bq.view({tq, h, d}), bk.view({nblk, page, 1, d}),
                          bk.view({nblk, page, 1, d}), bo.view({tq, h, d}), bl.view({h, tq}),
                          bcq.view({3}), bck.view({3}), std::nullopt, std::nullopt,
                          bbt.view({2, 2}), std::nullopt, 2, maxk, 0.f, 0.f, false, false, -1, -1,
                          0.f, false, 0, opts);
  };
  CHECK(run({2, 0, 1, -1}).ok());  // -1 past the used pages is never read
  Status s = run({2, 3, 1, -1});
  CHECK(s.code() == StatusCode::invalid_args);
  CHECK(s.message().find("block_table[0, 1] = 3") != std::string::npos);
  s = run({2, 0, -1, 0});
  CHECK(s.code() == StatusCode::invalid_args);
  CHECK(s.message().find("block_table[1, 0] = -1") != std::string::npos);
  REQUIRE(bck.upload({0, 9, 10}).ok());  // 9 keys > 2 pages of 4
  s = run({2, 0, 1, -1}, 9);
  CHECK(s.code() == StatusCode::invalid_args);
  CHECK(s.message().find("more than its block_table holds") != std::string::npos);
}
