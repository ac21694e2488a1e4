// mha_fwd_kvcache on the CPU backend against the fp64 reference (ref::kvcache_forward: the cache
// updated by the reference itself, rotary in fp64, one fixed-length problem per sequence).
// Besides out and lse, every case checks the cache afterwards: the appended slots hold the
// (rotated) new keys and values, every other slot is bit-identical to before.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "harness.h"

using namespace flashplus;
using flashplus::testing::Buffer;

namespace {

struct KCase {
  ref::KvcacheProblem p;
  DType dtype = DType::f16;
  bool alibi_per_batch = false;
  bool with_seqlens = true;  // pass cache_seqlens (required with k_new)
  int num_splits = 1;
  uint64_t seed = 1;
  std::string describe() const {
    std::string sl;
    for (int x : p.cache_seqlens) sl += std::to_string(x) + ",";
    return fmt::format(
        "b={} sq={} h={} hk={} d={} {} {} cap={} page={} seqlens=[{}] new={} batch_idx={} "
        "leftpad={} rotary={}{} causal={} win=({},{}) softcap={} alibi={} splits={} seed={}",
        p.batch, p.seqlen_q, p.nheads, p.nheads_k, p.head_dim, dtype_name(dtype),
        p.paged() ? "paged" : "contiguous", p.capacity(), p.page_block_size, sl, p.seqlen_new,
        !p.cache_batch_idx.empty(), !p.cache_leftpad.empty(), p.rotary_dim,
        p.rotary_interleaved ? "i" : "", p.causal, p.window_left, p.window_right, p.softcap,
        p.alibi.size(), num_splits, seed);
  }
};

// A contiguous cache of `cap` slots per row; batch_cache = batch unless given.
KCase contiguous(int b, int sq, int h, int hk, int d, int cap, std::vector<int> seqlens, int s_new,
                 DType t = DType::f16) {
  KCase c;
  c.dtype = t;
  auto& p = c.p;
  p.batch = b;
  p.seqlen_q = sq;
  p.nheads = h;
  p.nheads_k = hk;
  p.head_dim = d;
  p.batch_cache = b;
  p.seqlen_cache = cap;
  p.cache_seqlens = std::move(seqlens);
  p.seqlen_new = s_new;
  c.seed = 1000003ull * b + 10007ull * sq + 101ull * cap + 13ull * h + 7ull * hk + d + s_new;
  return c;
}

// Turn a case into a paged one: pages of `page` slots, max_blocks_per_seq = ceil(cap / page),
// blocks handed out in a shuffled order; table entries past a sequence's used pages are -1
// (must never be read).
void make_paged(KCase& c, int page) {
  auto& p = c.p;
  const int mb = (p.seqlen_cache + page - 1) / page;
  p.page_block_size = page;
  p.max_blocks_per_seq = mb;
  p.num_blocks = p.batch * mb + 3;  // a few spare blocks
  std::vector<int> blocks(p.num_blocks);
  std::iota(blocks.begin(), blocks.end(), 0);
  std::mt19937_64 rng(c.seed + page);
  std::shuffle(blocks.begin(), blocks.end(), rng);
  p.block_table.assign(static_cast<size_t>(p.batch) * mb, -1);
  for (int b = 0; b < p.batch; ++b) {
    const int end = p.cache_seqlens.empty() ? p.capacity() : p.cache_seqlens[b] + p.seqlen_new;
    const int used = (end + page - 1) / page;
    for (int i = 0; i < used; ++i) p.block_table[static_cast<size_t>(b) * mb + i] = blocks[b * mb + i];
  }
}

void add_rotary(KCase& c, int rotary_dim, bool interleaved) {
  auto& p = c.p;
  p.rotary_dim = rotary_dim;
  p.rotary_interleaved = interleaved;
  const int half = rotary_dim / 2, ro = p.capacity() + 5;
  p.rotary_cos.resize(static_cast<size_t>(ro) * half);
  p.rotary_sin.resize(p.rotary_cos.size());
  for (int pos = 0; pos < ro; ++pos)
    for (int j = 0; j < half; ++j) {
      const double ang = pos * std::pow(10000.0, -2.0 * j / rotary_dim);
      // Stored in q's dtype: the reference sees the rounded values too.
      p.rotary_cos[static_cast<size_t>(pos) * half + j] = round_to(c.dtype, static_cast<float>(std::cos(ang)));
      p.rotary_sin[static_cast<size_t>(pos) * half + j] = round_to(c.dtype, static_cast<float>(std::sin(ang)));
    }
}

std::vector<double> to_double(const std::vector<int>& v) { return {v.begin(), v.end()}; }

struct KOutcome {
  Status status;
  ref::Check out, lse, kc, vc;
  int64_t cache_changed = 0;  // slots outside the appended ones that changed
  std::vector<double> out_raw, lse_raw;
  bool pass() const {
    return status.ok() && out.pass && lse.pass && kc.pass && vc.pass && cache_changed == 0;
  }
  std::string summary() const {
    auto one = [](const char* n, const ref::Check& c) {
      return fmt::format("{}: err {:.3g} tol {:.3g} nonfinite {} {}", n, c.max_abs_err,
                         c.tolerance, c.bad_nonfinite, c.pass ? "ok" : "FAIL");
    };
    return fmt::format("{} | {} | {} | {} | {} | other slots changed {}", status.to_string(),
                       one("out", out), one("lse", lse), one("k_cache", kc), one("v_cache", vc),
                       cache_changed);
  }
};

KOutcome run_kv(const KCase& c) {
  const auto& p = c.p;
  const Backend be = Backend::cpu;
  std::mt19937_64 rng(c.seed);
  const int B = p.batch, d = p.head_dim;
  const int64_t rows = p.paged() ? int64_t(p.num_blocks) * p.page_block_size
                                 : int64_t(p.batch_cache) * p.seqlen_cache;
  const size_t wq = size_t(p.nheads) * d, wk = size_t(p.nheads_k) * d;
  const size_t nq = wq * B * p.seqlen_q, nc = wk * rows, nn = wk * B * p.seqlen_new;
  auto q = testing::random_tensor(nq, c.dtype, rng, 1.0);
  auto kc = testing::random_tensor(nc, c.dtype, rng, 1.0);
  auto vc = testing::random_tensor(nc, c.dtype, rng, 1.0);
  auto kn = testing::random_tensor(nn, c.dtype, rng, 1.0);
  auto vn = testing::random_tensor(nn, c.dtype, rng, 1.0);
  KOutcome r;
  Buffer bq(be, c.dtype, nq), bkc(be, c.dtype, nc), bvc(be, c.dtype, nc), bkn(be, c.dtype, nn),
      bvn(be, c.dtype, nn), bo(be, c.dtype, nq), bl(be, DType::f32, size_t(B) * p.nheads * p.seqlen_q),
      bsl(be, DType::i32, B), bbi(be, DType::i32, B), blp(be, DType::i32, B),
      bbt(be, DType::i32, std::max<size_t>(1, p.block_table.size())),
      bcos(be, c.dtype, std::max<size_t>(1, p.rotary_cos.size())),
      bsin(be, c.dtype, std::max<size_t>(1, p.rotary_sin.size()));
  (void)bq.upload(q);
  (void)bkc.upload(kc);
  (void)bvc.upload(vc);
  (void)bkn.upload(kn);
  (void)bvn.upload(vn);
  (void)bo.fill(12345.f);
  (void)bl.fill(12345.f);
  const int64_t c0 = p.paged() ? p.num_blocks : p.batch_cache;
  const int64_t c1 = p.paged() ? p.page_block_size : p.seqlen_cache;
  std::optional<TensorView> knew, vnew, seqlens, cos, sin, bidx, lpad, btab, alibi;
  if (p.seqlen_new > 0) {
    knew = bkn.view({B, p.seqlen_new, p.nheads_k, d});
    vnew = bvn.view({B, p.seqlen_new, p.nheads_k, d});
  }
  if (c.with_seqlens && !p.cache_seqlens.empty()) {
    (void)bsl.upload(to_double(p.cache_seqlens));
    seqlens = bsl.view({B});
  }
  if (!p.cache_batch_idx.empty()) {
    (void)bbi.upload(to_double(p.cache_batch_idx));
    bidx = bbi.view({B});
  }
  if (!p.cache_leftpad.empty()) {
    (void)blp.upload(to_double(p.cache_leftpad));
    lpad = blp.view({B});
  }
  if (p.paged()) {
    (void)bbt.upload(to_double(p.block_table));
    btab = bbt.view({B, p.max_blocks_per_seq});
  }
  if (p.rotary_dim > 0) {
    (void)bcos.upload(p.rotary_cos);
    (void)bsin.upload(p.rotary_sin);
    const int64_t ro = static_cast<int64_t>(p.rotary_cos.size()) / (p.rotary_dim / 2);
    cos = bcos.view({ro, p.rotary_dim / 2});
    sin = bsin.view({ro, p.rotary_dim / 2});
  }
  std::optional<Buffer> balibi;
  if (!p.alibi.empty()) {
    balibi.emplace(be, DType::f32, p.alibi.size());
    (void)balibi->upload(p.alibi);
    alibi = c.alibi_per_batch ? balibi->view({B, p.nheads}) : balibi->view({p.nheads});
  }
  RunOptions opts;
  opts.backend = be;
  r.status = mha_fwd_kvcache(
      bq.view({B, p.seqlen_q, p.nheads, d}), bkc.view({c0, c1, p.nheads_k, d}),
      bvc.view({c0, c1, p.nheads_k, d}), knew, vnew, seqlens, cos, sin, bidx, lpad, btab, alibi,
      bo.view({B, p.seqlen_q, p.nheads, d}), bl.view({B, p.nheads, p.seqlen_q}),
      static_cast<float>(p.softmax_scale), p.causal, p.window_left, p.window_right,
      static_cast<float>(p.softcap), p.rotary_interleaved, c.num_splits, opts);
  if (!r.status.ok()) return r;
  std::vector<double> out, lse, kc2, vc2;
  (void)bo.download(&out);
  (void)bl.download(&lse);
  (void)bkc.download(&kc2);
  (void)bvc.download(&vc2);
  const auto rf = ref::kvcache_forward(p, q, kc, vc, kn, vn);
  const auto nf = ref::kvcache_forward_naive(p, q, kc, vc, kn, vn, c.dtype);
  const bool sc = p.softcap > 0;
  r.out = ref::compare(rf.fwd.out, out, nf.fwd.out, c.dtype, sc);
  r.lse = ref::compare(rf.fwd.lse, lse, nf.fwd.lse, c.dtype, sc);
  r.kc = ref::compare(rf.k_cache, kc2, nf.k_cache, c.dtype, false);
  r.vc = ref::compare(rf.v_cache, vc2, nf.v_cache, c.dtype, false);
  std::vector<bool> appended(rows, false);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < p.seqlen_new; ++t) appended[p.cache_row(b, p.cache_seqlens[b] + t)] = true;
  for (size_t i = 0; i < kc2.size(); ++i)
    if (!appended[i / wk] && (kc2[i] != kc[i] || vc2[i] != vc[i])) ++r.cache_changed;
  r.out_raw = out;
  r.lse_raw = lse;
  return r;
}

void check_all(const std::vector<KCase>& cases) {
  for (const KCase& c : cases) {
    const auto r = run_kv(c);
    INFO(c.describe());
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

TEST_CASE("kv cache: contiguous decoding, every dtype, with and without new tokens", "[kvcache]") {
  std::vector<KCase> cs;
  for (DType t : {DType::f32, DType::f16, DType::bf16}) {
    cs.push_back(contiguous(3, 1, 4, 2, 64, 100, {17, 0, 99}, 1, t));  // decode one token
    cs.push_back(contiguous(2, 1, 2, 2, 40, 50, {10, 33}, 0, t));      // attend only
  }
  KCase full = contiguous(2, 3, 2, 1, 32, 70, {}, 0, DType::f16);  // no cache_seqlens: capacity
  full.with_seqlens = false;
  cs.push_back(full);
  check_all(cs);
}

TEST_CASE("kv cache: paged caches with any page size", "[kvcache]") {
  std::vector<KCase> cs;
  for (int page : {1, 7, 16, 256}) {
    KCase c = contiguous(3, 2, 4, 2, 32, 300, {5, 260, 41}, 2, DType::bf16);
    c.p.causal = true;
    make_paged(c, page);
    cs.push_back(c);
  }
  check_all(cs);
}

TEST_CASE("kv cache: seqlen_q > 1 with causal and windows, sq > keys gives empty rows", "[kvcache]") {
  std::vector<KCase> cs;
  for (auto [wl, wr] : std::vector<std::pair<int, int>>{{-1, -1}, {8, 0}, {3, 2}}) {
    for (bool causal : {false, true}) {
      KCase c = contiguous(2, 9, 2, 1, 32, 80, {30, 3}, 4, DType::f16);
      c.p.causal = causal;
      c.p.window_left = wl;
      c.p.window_right = wr;
      cs.push_back(c);
    }
  }
  // 6 queries, 2 keys, causal: the first 4 rows see nothing (out 0, lse +inf).
  KCase e = contiguous(1, 6, 2, 2, 16, 20, {2}, 0, DType::f32);
  e.p.causal = true;
  cs.push_back(e);
  check_all(cs);
}

TEST_CASE("kv cache: rotary, interleaved and not, on q and the appended keys", "[kvcache]") {
  std::vector<KCase> cs;
  for (bool inter : {false, true}) {
    for (bool causal : {false, true}) {
      KCase c = contiguous(2, 3, 4, 2, 64, 90, {20, 51}, 3, DType::f16);
      c.p.causal = causal;
      add_rotary(c, 32, inter);
      cs.push_back(c);
    }
    KCase f = contiguous(2, 1, 2, 1, 32, 40, {0, 39}, 1, DType::f32);  // full rotary_dim = d
    add_rotary(f, 32, inter);
    cs.push_back(f);
    KCase pg = contiguous(2, 2, 2, 2, 48, 60, {11, 30}, 2, DType::bf16);  // paged + rotary
    pg.p.causal = true;
    make_paged(pg, 7);
    add_rotary(pg, 16, inter);
    cs.push_back(pg);
  }
  check_all(cs);
}

TEST_CASE("kv cache: cache_batch_idx and cache_leftpad", "[kvcache]") {
  std::vector<KCase> cs;
  KCase bi = contiguous(3, 2, 2, 1, 32, 40, {5, 12, 30}, 2, DType::f16);
  bi.p.batch_cache = 5;
  bi.p.cache_batch_idx = {4, 0, 2};
  bi.p.causal = true;
  cs.push_back(bi);
  for (bool causal : {false, true}) {
    KCase lp = contiguous(3, 2, 4, 2, 32, 64, {20, 40, 7}, 2, DType::f16);
    lp.p.cache_leftpad = {3, 0, 9};  // the last one sees no keys at all
    lp.p.causal = causal;
    lp.p.alibi = slopes(4);          // ALiBi counts keys from the leftpad
    cs.push_back(lp);
  }
  KCase rl = contiguous(2, 2, 2, 2, 32, 50, {20, 30}, 2, DType::bf16);  // leftpad + rotary
  rl.p.cache_leftpad = {5, 1};
  rl.p.causal = true;
  add_rotary(rl, 16, false);
  cs.push_back(rl);
  check_all(cs);
}

TEST_CASE("kv cache: GQA, softcap, ALiBi per batch", "[kvcache]") {
  std::vector<KCase> cs;
  KCase sc = contiguous(2, 2, 8, 2, 64, 100, {40, 77}, 1, DType::bf16);
  sc.p.softcap = 2.0;
  sc.p.softmax_scale = 0.5;
  cs.push_back(sc);
  for (bool causal : {false, true}) {
    KCase a = contiguous(2, 3, 4, 1, 32, 60, {25, 50}, 1, DType::f16);
    a.alibi_per_batch = true;
    a.p.alibi = slopes(8);
    a.p.causal = causal;
    cs.push_back(a);
  }
  check_all(cs);
}

TEST_CASE("kv cache: num_splits 1/2/3/0 give equal results; empty pieces and rows", "[kvcache]") {
  std::vector<KCase> bases;
  KCase a = contiguous(2, 1, 2, 1, 64, 400, {300, 10}, 1, DType::f32);  // seq 1: empty pieces
  bases.push_back(a);
  KCase b = contiguous(1, 5, 2, 2, 32, 300, {1}, 0, DType::f16);  // causal, rows 0..3 empty
  b.p.causal = true;
  bases.push_back(b);
  KCase c = contiguous(2, 4, 4, 2, 32, 260, {200, 130}, 4, DType::bf16);
  c.p.causal = true;
  make_paged(c, 16);  // before add_rotary: paging rounds the capacity up to whole pages
  add_rotary(c, 32, true);
  bases.push_back(c);
  for (const KCase& base : bases) {
    std::vector<KOutcome> rs;
    for (int ns : {1, 2, 3, 0, 128}) {
      KCase k = base;
      k.num_splits = ns;
      rs.push_back(run_kv(k));
      INFO(k.describe() << " | " << rs.back().summary());
      CHECK(rs.back().pass());
    }
    for (size_t i = 1; i < rs.size(); ++i) {
      REQUIRE(rs[i].out_raw.size() == rs[0].out_raw.size());
      for (size_t e = 0; e < rs[0].out_raw.size(); ++e) {
        INFO("split variant " << i << " element " << e);
        REQUIRE(std::fabs(rs[i].out_raw[e] - rs[0].out_raw[e]) <= 2 * ref::default_atol(base.dtype));
      }
      for (size_t e = 0; e < rs[0].lse_raw.size(); ++e) {
        if (std::isinf(rs[0].lse_raw[e])) {
          REQUIRE(rs[i].lse_raw[e] == rs[0].lse_raw[e]);  // +inf for empty rows on every path
        } else {
          REQUIRE(std::fabs(rs[i].lse_raw[e] - rs[0].lse_raw[e]) <= 1e-5);
        }
      }
    }
  }
}

TEST_CASE("kv cache: invalid arguments are reported and nothing is read or written",
          "[kvcache][errors]") {
  const Backend be = Backend::cpu;
  const int B = 2, sq = 1, h = 2, hk = 1, d = 16, cap = 32, page = 8, nblk = 6;
  Buffer bq(be, DType::f16, B * sq * h * d), bkc(be, DType::f16, B * cap * hk * d),
      bvc(be, DType::f16, B * cap * hk * d), bkn(be, DType::f16, B * 2 * hk * d),
      bvn(be, DType::f16, B * 2 * hk * d), bo(be, DType::f16, B * sq * h * d),
      bl(be, DType::f32, B * h * sq), bsl(be, DType::i32, B), bbt(be, DType::i32, B * 4),
      bbi(be, DType::i32, B), blp(be, DType::i32, B), bcos(be, DType::f16, 40 * 4),
      bcos32(be, DType::f32, 40 * 4), bkc32(be, DType::f32, B * cap * hk * d);
  REQUIRE(bq.fill(0.5f).ok());
  REQUIRE(bkc.fill(0.25f).ok());
  REQUIRE(bvc.fill(0.75f).ok());
  REQUIRE(bkn.fill(1.f).ok());
  REQUIRE(bvn.fill(1.f).ok());
  REQUIRE(bcos.fill(1.f).ok());
  REQUIRE(bcos32.fill(1.f).ok());
  RunOptions opts;
  opts.backend = be;
  const auto Q = bq.view({B, sq, h, d});
  const auto KC = bkc.view({B, cap, hk, d}), VC = bvc.view({B, cap, hk, d});
  const auto KP = bkc.view({nblk, page, hk, d}), VP = bvc.view({nblk, page, hk, d});
  const auto O = bo.view({B, sq, h, d});
  const auto L = bl.view({B, h, sq});
  const auto KN = bkn.view({B, 2, hk, d}), VN = bvn.view({B, 2, hk, d});
  auto invalid = [](const Status& s, const char* what) {
    INFO(s.to_string());
    CHECK(s.code() == StatusCode::invalid_args);
    CHECK(s.message().find(what) != std::string::npos);
  };
  const std::optional<TensorView> none;
  // cache_seqlens + seqlen_new beyond the capacity.
  REQUIRE(bsl.upload({30, 31}).ok());
  invalid(mha_fwd_kvcache(Q, KC, VC, KN, VN, bsl.view({B}), none, none, none, none, none, none, O,
                          L, 0.f, false, -1, -1, 0.f, false, 1, opts),
          "exceeds the cache capacity");
  REQUIRE(bsl.upload({-1, 3}).ok());
  invalid(mha_fwd_kvcache(Q, KC, VC, none, none, bsl.view({B}), none, none, none, none, none,
                          none, O, L, 0.f, false, -1, -1, 0.f, false, 1, opts),
          "negative");
  // Out-of-range block table entry among the pages in use (seq 1 needs 2 pages of 8).
  REQUIRE(bsl.upload({3, 14}).ok());
  REQUIRE(bbt.upload({0, -1, -1, -1, 1, 6, -1, -1}).ok());
  invalid(mha_fwd_kvcache(Q, KP, VP, KN, VN, bsl.view({B}), none, none, none, none,
                          bbt.view({B, 4}), none, O, L, 0.f, false, -1, -1, 0.f, false, 1, opts),
          "block_table[1, 1] = 6");
  // Entries past the used pages are never read: -1 there is fine.
  REQUIRE(bbt.upload({0, -1, -1, -1, 1, 2, -1, -1}).ok());
  CHECK(mha_fwd_kvcache(Q, KP, VP, none, none, bsl.view({B}), none, none, none, none,
                        bbt.view({B, 4}), none, O, L, 0.f, false, -1, -1, 0.f, false, 1, opts)
            .ok());
  // Rotary without new keys; rotary in the wrong dtype; sin without cos.
  REQUIRE(bsl.upload({3, 4}).ok());
  invalid(mha_fwd_kvcache(Q, KC, VC, none, none, bsl.view({B}), bcos.view({40, 4}),
                          bcos.view({40, 4}), none, none, none, none, O, L, 0.f, false, -1, -1,
                          0.f, false, 1, opts),
          "new key / value");
  invalid(mha_fwd_kvcache(Q, KC, VC, KN, VN, bsl.view({B}), bcos32.view({40, 4}),
                          bcos32.view({40, 4}), none, none, none, none, O, L, 0.f, false, -1, -1,
                          0.f, false, 1, opts),
          "same dtype as query");
  invalid(mha_fwd_kvcache(Q, KC, VC, KN, VN, bsl.view({B}), bcos.view({40, 4}), none, none, none,
                          none, none, O, L, 0.f, false, -1, -1, 0.f, false, 1, opts),
          "rotary sin");
  invalid(mha_fwd_kvcache(Q, KC, VC, KN, VN, bsl.view({B}), bcos.view({20, 4}),
                          bcos.view({20, 4}), none, none, none, none, O, L, 0.f, false, -1, -1,
                          0.f, false, 1, opts),
          "at least the seqlen of KV cache");
  // Cache dtype mismatch; k_new without cache_seqlens or without v_new.
  invalid(mha_fwd_kvcache(Q, bkc32.view({B, cap, hk, d}), VC, none, none, bsl.view({B}), none,
                          none, none, none, none, none, O, L, 0.f, false, -1, -1, 0.f, false, 1,
                          opts),
          "k_cache must have dtype fp16");
  invalid(mha_fwd_kvcache(Q, KC, VC, KN, VN, none, none, none, none, none, none, none, O, L, 0.f,
                          false, -1, -1, 0.f, false, 1, opts),
          "seqlens_k must also be passed");
  invalid(mha_fwd_kvcache(Q, KC, VC, KN, none, bsl.view({B}), none, none, none, none, none, none,
                          O, L, 0.f, false, -1, -1, 0.f, false, 1, opts),
          "value must also be passed");
  // cache_batch_idx out of range, or with a block table; leftpad beyond the end.
  REQUIRE(bbi.upload({0, 2}).ok());
  invalid(mha_fwd_kvcache(Q, KC, VC, none, none, bsl.view({B}), none, none, bbi.view({B}), none,
                          none, none, O, L, 0.f, false, -1, -1, 0.f, false, 1, opts),
          "cache_batch_idx[1] = 2");
  invalid(mha_fwd_kvcache(Q, KP, VP, none, none, bsl.view({B}), none, none, bbi.view({B}), none,
                          bbt.view({B, 4}), none, O, L, 0.f, false, -1, -1, 0.f, false, 1, opts),
          "cache_batch_idx");
  REQUIRE(blp.upload({0, 5}).ok());
  invalid(mha_fwd_kvcache(Q, KC, VC, none, none, bsl.view({B}), none, none, none, blp.view({B}),
                          none, none, O, L, 0.f, false, -1, -1, 0.f, false, 1, opts),
          "cache_leftpad[1] = 5");
  invalid(mha_fwd_kvcache(Q, KC, VC, none, none, bsl.view({B}), none, none, none, none, none,
                          none, O, L, 0.f, false, -1, -1, 0.f, false, 129, opts),
          "num_splits");
  // Nothing above touched the cache.
  std::vector<double> kc, vc;
  REQUIRE(bkc.download(&kc).ok());
  REQUIRE(bvc.download(&vc).ok());
  CHECK(std::all_of(kc.begin(), kc.end(), [](double x) { return x == 0.25; }));
  CHECK(std::all_of(vc.begin(), vc.end(), [](double x) { return x == 0.75; }));
}

#include "params.h"  // kernels/src: make_kvcache_params, for the AttnParams helpers below

TEST_CASE("kv cache: AttnParams geometry helpers (what GPU kernels will use)", "[kvcache][params]") {
  // Paged cache: 5 blocks of 3 slots, 2 sequences with 3 table entries each.
  std::vector<uint16_t> q(2 * 2 * 2 * 8), cache(5 * 3 * 1 * 8), out(q.size());
  std::vector<float> lse(2 * 2 * 2);
  std::vector<int32_t> seqlens{4, 7}, table{4, 0, -1, 2, 3, 1};
  const auto Q = TensorView::contiguous(q.data(), DType::f16, {2, 2, 2, 8});
  const auto C = TensorView::contiguous(cache.data(), DType::f16, {5, 3, 1, 8});
  const auto O = TensorView::contiguous(out.data(), DType::f16, {2, 2, 2, 8});
  const auto L = TensorView::contiguous(lse.data(), DType::f32, {2, 2, 2});
  const auto S = TensorView::contiguous(seqlens.data(), DType::i32, {2});
  const auto T = TensorView::contiguous(table.data(), DType::i32, {2, 3});
  AttnParams p;
  REQUIRE(detail::make_kvcache_params(Q, C, C, std::nullopt, std::nullopt, S, std::nullopt,
                                      std::nullopt, std::nullopt, std::nullopt, T, std::nullopt, O,
                                      L, 0.f, true, -1, -1, 0.f, false, 0, &p)
              .ok());
  CHECK(p.seqlen_k == 9);  // capacity = 3 blocks * 3 slots = Sk*
  CHECK(p.actual_seqlen_k(0) == 4);
  CHECK(p.actual_seqlen_k(1) == 7);
  // Sequence 1, key 5: page 5 / 3 = 1 -> table entry 3 -> block 3, slot 5 % 3 = 2.
  CHECK(p.kv_offset(p.k_stride, 1, 5) == (3 * 3 + 2) * 8);
  CHECK(p.kv_offset(p.k_stride, 0, 3) == (0 * 3 + 0) * 8);  // page 1 of seq 0 is block 0
  CHECK(p.lse_offset(1, 1, 1) == 1 * 4 + 1 * 2 + 1);
  CHECK(p.has_window());  // causal -> bounded (wl = Sk*, wr = 0)
  CHECK(p.window_left == 9);
  CHECK(p.window_right == 0);
  CHECK(p.rotary_pos_q(1, 1) == 8);  // causal: cache_seqlens[b] + i
}
