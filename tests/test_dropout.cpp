// Dropout on every backend that implements it, against the fp64 reference, which applies the same
// mask (flashplus/philox.h) itself: forward and backward, GQA, causal, windows, ALiBi, odd sizes.
// Plus the generator's own properties (keep rate, reproducibility) and the error paths.
#include <catch2/catch.hpp>

#include <cmath>

#include "harness.h"
#include "flashplus/philox.h"

using namespace flashplus;
using flashplus::testing::Buffer;
using flashplus::testing::Case;

namespace {

Case make(int b, int sq, int sk, int h, int hk, int d, DType t, double p) {
  Case c;
  c.p.batch = b;
  c.p.seqlen_q = sq;
  c.p.seqlen_k = sk;
  c.p.nheads = h;
  c.p.nheads_k = hk;
  c.p.head_dim = d;
  c.p.p_dropout = p;
  c.p.dropout_seed = 0x5eed0000ull + 977ull * sq + sk;
  c.p.dropout_offset = 17;
  c.dtype = t;
  c.seed = 1000003ull * b + 10007ull * sq + 101ull * sk + 13ull * h + 7ull * hk + d;
  return c;
}

// Every runnable backend implements dropout (the GPU backends since issue 5).
void check_all(const std::vector<Case>& cases) {
  for (Backend be : testing::runnable_backends())
  for (const Case& c : cases) {
    const auto r = testing::run_case(c, be);
    INFO("backend " << backend_name(be) << ": " << c.describe());
    INFO(r.summary());
    CHECK(r.pass());
  }
}

}  // namespace

TEST_CASE("dropout: forward and backward match the reference with the same mask", "[dropout]") {
  std::vector<Case> cs;
  for (DType t : {DType::f32, DType::f16, DType::bf16}) {
    cs.push_back(make(2, 17, 33, 2, 2, 40, t, 0.17));
    cs.push_back(make(1, 129, 70, 4, 1, 64, t, 0.5));  // MQA, off the tile grid
  }
  Case c = make(2, 40, 90, 4, 2, 32, DType::f16, 0.1);
  c.p.causal = true;
  cs.push_back(c);
  Case w = make(1, 50, 50, 2, 1, 32, DType::bf16, 0.3);
  w.p.window_left = 5;
  w.p.window_right = 3;
  cs.push_back(w);
  Case a = make(2, 20, 31, 2, 2, 16, DType::f32, 0.25);
  a.p.alibi = {0.25, 0.125};
  a.p.causal = true;
  cs.push_back(a);
  Case e = make(1, 6, 2, 2, 2, 16, DType::f32, 0.4);  // empty rows stay empty
  e.p.causal = true;
  cs.push_back(e);
  check_all(cs);
}

TEST_CASE("dropout: the kernel applies exactly keep() of philox.h", "[dropout]") {
  // q = 0 makes P uniform (1/sk); v_j = e_j makes out[i][j] = P_ij * keep / (1 - p). In fp32
  // and bf16 (the GPU's tensor-core forward), with an even and an odd Sk* (Philox words of a
  // column pair then straddle two counters).
  struct Shape {
    int sq, sk, d;
  };
  for (Backend be : testing::runnable_backends())
    for (DType t : {DType::f32, DType::bf16})
      for (Shape sh : {Shape{3, 64, 64}, Shape{5, 67, 128}}) {
        const int sq = sh.sq, sk = sh.sk, h = 2, d = sh.d;
        INFO("backend " << backend_name(be) << " " << dtype_name(t) << " sq=" << sq << " sk=" << sk);
        const float p = 0.3f;
        std::vector<double> v(size_t(sk) * d, 0.0);
        for (int j = 0; j < sk; ++j) v[size_t(j) * d + j] = 1.0;
        Buffer bq(be, t, sq * h * d), bk(be, t, sk * d), bv(be, t, sk * d), bo(be, t, sq * h * d),
            bl(be, DType::f32, h * sq);
        REQUIRE(bq.fill(0.f).ok());
        REQUIRE(bk.fill(0.5f).ok());
        REQUIRE(bv.upload(v).ok());
        RunOptions opts;
        opts.backend = be;
        opts.dropout_seed = 42;
        opts.dropout_offset = 7;
        REQUIRE(mha_fwd(bq.view({1, sq, h, d}), bk.view({1, sk, 1, d}), bv.view({1, sk, 1, d}),
                        bo.view({1, sq, h, d}), bl.view({1, h, sq}), std::nullopt, p, 0.f, false,
                        -1, -1, 0.f, false, opts)
                    .ok());
        std::vector<double> out;
        REQUIRE(bo.download(&out).ok());
        const uint32_t thr = dropout_threshold(p);
        const double kept = 1.0 / sk / (1.0 - p);
        const double tol = t == DType::f32 ? 1e-7 : kept * 1e-2;
        int dropped = 0;
        for (int i = 0; i < sq; ++i)
          for (int hh = 0; hh < h; ++hh)
            for (int j = 0; j < sk; ++j) {
              const bool keep = dropout_keep(42, 7, thr, 0, hh, i, j, h, sq, sk);
              dropped += !keep;
              REQUIRE(out[(size_t(i) * h + hh) * d + j] == Approx(keep ? kept : 0.0).margin(tol));
            }
        CHECK(dropped > 0);
      }
}

TEST_CASE("dropout: keep rate, reproducibility, seeds and offsets", "[dropout]") {
  // The keep rate is 1 - p within sampling noise (400k draws: sd ~ 0.0007).
  for (float p : {0.1f, 0.17f, 0.5f, 0.9f}) {
    const uint32_t thr = dropout_threshold(p);
    int64_t kept = 0;
    const int64_t n = 400000;
    for (int64_t i = 0; i < n; ++i) kept += dropout_draw(1234, 0, static_cast<uint64_t>(i)) < thr;
    CHECK(std::fabs(double(kept) / n - (1.0 - p)) < 0.005);
  }
  // Same inputs and seed: bit-identical; another seed or offset: a different output. On every
  // backend, in fp32 and bf16 (the GPU's tensor-core forward).
  for (Backend be : testing::runnable_backends())
  for (DType t : {DType::f32, DType::bf16}) {
  INFO("backend " << backend_name(be) << " " << dtype_name(t));
  Case c = make(1, 20, 20, 2, 2, 32, t, 0.2);
  c.bwd = false;
  auto out_of = [&](uint64_t seed, uint64_t offset) {
    Case k = c;
    k.p.dropout_seed = seed;
    k.p.dropout_offset = offset;
    std::mt19937_64 rng(k.seed);
    const size_t nq = size_t(20) * 2 * 32;
    auto q = testing::random_tensor(nq, t, rng, 1.0);
    Buffer bq(be, t, nq), bo(be, t, nq), bl(be, DType::f32, 40);
    REQUIRE(bq.upload(q).ok());
    RunOptions opts;
    opts.backend = be;
    opts.dropout_seed = seed;
    opts.dropout_offset = offset;
    const auto Q = bq.view({1, 20, 2, 32});
    REQUIRE(mha_fwd(Q, Q, Q, bo.view({1, 20, 2, 32}), bl.view({1, 2, 20}), std::nullopt, 0.2f,
                    0.f, false, -1, -1, 0.f, false, opts)
                .ok());
    std::vector<double> out;
    REQUIRE(bo.download(&out).ok());
    return out;
  };
  const auto a = out_of(1, 0), b = out_of(1, 0), s = out_of(2, 0), o = out_of(1, 1);
  CHECK(a == b);
  CHECK(a != s);
  CHECK(a != o);
  }
}

TEST_CASE("dropout: invalid combinations", "[dropout][errors]") {
  Buffer bq(Backend::cpu, DType::f16, 4 * 2 * 16), bl(Backend::cpu, DType::f32, 8);
  REQUIRE(bq.fill(0.1f).ok());
  const auto Q = bq.view({1, 4, 2, 16});
  const auto L = bl.view({1, 2, 4});
  Status s = mha_fwd(Q, Q, Q, Q, L, std::nullopt, 0.1f, 0.f, false, -1, -1, 5.f, false);
  CHECK(s.code() == StatusCode::invalid_args);
  CHECK(s.message().find("Softcapping does not support dropout") != std::string::npos);
  s = mha_fwd(Q, Q, Q, Q, L, std::nullopt, 1.f, 0.f, false, -1, -1, 0.f, false);
  CHECK(s.code() == StatusCode::invalid_args);
  s = mha_fwd(Q, Q, Q, Q, L, std::nullopt, 0.f, 0.f, false, -1, -1, 0.f, true);
  CHECK(s.code() == StatusCode::invalid_args);
  s = mha_fwd(Q, Q, Q, Q, L, std::nullopt, 0.2f, 0.f, false, -1, -1, 0.f, true);
  CHECK(s.code() == StatusCode::invalid_args);  // return_softmax needs the S_dmask output
  CHECK(s.message().find("s_dmask") != std::string::npos);
  Buffer bm(Backend::cpu, DType::f16, 2 * 128 * 128);
  s = mha_fwd(Q, Q, Q, Q, L, std::nullopt, 0.2f, 0.f, false, -1, -1, 0.f, false,
              bm.view({1, 2, 128, 128}));
  CHECK(s.code() == StatusCode::invalid_args);  // S_dmask given, return_softmax off
  s = mha_fwd(Q, Q, Q, Q, L, std::nullopt, 0.2f, 0.f, false, -1, -1, 0.f, true,
              bm.view({1, 2, 128, 64}));
  CHECK(s.code() == StatusCode::invalid_args);  // columns must be round128(sk)
  s = mha_bwd(Q, Q, Q, Q, Q, L, Q, Q, Q, std::nullopt, 0.1f, 0.f, false, -1, -1, 3.f, false);
  CHECK(s.code() == StatusCode::invalid_args);
}

TEST_CASE("dropout: return_softmax fills S_dmask as the reference's signed probabilities",
          "[dropout][dmask]") {
  struct Shape {
    int sq, sk, h, hk, d;
    bool causal;
    int wl, wr;
    bool alibi;
  };
  // Odd sizes, GQA, a window, causal with sq > sk (empty rows), ALiBi; padding past 128.
  for (const Shape& sh : {Shape{37, 53, 4, 2, 40, false, -1, -1, false},
                          Shape{130, 70, 2, 1, 64, true, -1, -1, true},
                          Shape{19, 200, 3, 3, 32, false, 20, 5, false}}) {
    const int B = 2;
    const float pd = 0.25f;
    std::mt19937_64 rng(977u * sh.sq + sh.sk);
    const size_t nq = size_t(B) * sh.sq * sh.h * sh.d, nk = size_t(B) * sh.sk * sh.hk * sh.d;
    auto q = testing::random_tensor(nq, DType::f32, rng, 1.0);
    auto k = testing::random_tensor(nk, DType::f32, rng, 1.0);
    auto v = testing::random_tensor(nk, DType::f32, rng, 1.0);
    std::vector<double> slopes;
    for (int i = 0; i < sh.h; ++i) slopes.push_back(0.05 + 0.1 * i);
    const int R = (sh.sq + 127) / 128 * 128, C = (sh.sk + 127) / 128 * 128;
    Buffer bq(Backend::cpu, DType::f32, nq), bk(Backend::cpu, DType::f32, nk),
        bv(Backend::cpu, DType::f32, nk), bo(Backend::cpu, DType::f32, nq),
        bl(Backend::cpu, DType::f32, size_t(B) * sh.h * sh.sq),
        bm(Backend::cpu, DType::f32, size_t(B) * sh.h * R * C),
        ba(Backend::cpu, DType::f32, sh.h);
    REQUIRE(bq.upload(q).ok());
    REQUIRE(bk.upload(k).ok());
    REQUIRE(bv.upload(v).ok());
    REQUIRE(ba.upload(slopes).ok());
    REQUIRE(bm.fill(12345.f).ok());  // poison: every element must be written
    RunOptions opts;
    opts.backend = Backend::cpu;
    opts.dropout_seed = 99;
    opts.dropout_offset = 3;
    std::optional<TensorView> alibi;
    if (sh.alibi) alibi = ba.view({sh.h});
    const Status st = mha_fwd(bq.view({B, sh.sq, sh.h, sh.d}), bk.view({B, sh.sk, sh.hk, sh.d}),
                              bv.view({B, sh.sk, sh.hk, sh.d}), bo.view({B, sh.sq, sh.h, sh.d}),
                              bl.view({B, sh.h, sh.sq}), alibi, pd, 0.f, sh.causal, sh.wl, sh.wr,
                              0.f, true, bm.view({B, sh.h, R, C}), opts);
    REQUIRE(st.ok());
    std::vector<double> got;
    REQUIRE(bm.download(&got).ok());

    ref::Problem p;
    p.batch = B;
    p.seqlen_q = sh.sq;
    p.seqlen_k = sh.sk;
    p.nheads = sh.h;
    p.nheads_k = sh.hk;
    p.head_dim = sh.d;
    p.causal = sh.causal;
    p.window_left = sh.wl;
    p.window_right = sh.wr;
    if (sh.alibi) p.alibi = slopes;
    p.p_dropout = pd;
    p.dropout_seed = 99;
    p.dropout_offset = 3;
    p.want_probs = true;
    const auto r = ref::forward(p, q, k, v);
    int negatives = 0, mismatched_sign = 0;
    double max_err = 0.0;
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < sh.h; ++h)
        for (int i = 0; i < R; ++i)
          for (int j = 0; j < C; ++j) {
            const double g = got[((size_t(b) * sh.h + h) * R + i) * C + j];
            const double e = i < sh.sq && j < sh.sk
                                 ? r.probs[((size_t(b) * sh.h + h) * sh.sq + i) * sh.sk + j]
                                 : 0.0;
            max_err = std::max(max_err, std::fabs(g - e));
            negatives += e < 0;
            if (e != 0.0 && (g < 0) != (e < 0)) ++mismatched_sign;
          }
    INFO("sq " << sh.sq << " sk " << sh.sk);
    CHECK(max_err < 1e-5);
    CHECK(mismatched_sign == 0);
    CHECK(negatives > 0);
  }
}
