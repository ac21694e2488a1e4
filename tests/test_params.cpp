// Every argument error is reported once, at the API boundary, with a message — never a crash.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <vector>

#include "flashplus/api.h"
#include "flashplus/flashplus_c.h"
#include "params.h"  // kernels/src: canonicalize_window

using namespace flashplus;

namespace {

// Valid fwd arguments on the CPU (b=2, sq=5, sk=7, h=4, hk=2, d=16) that each test breaks once.
struct ValidFwd {
  std::vector<float> qb, kb, vb, ob, lb;
  TensorView q, k, v, out, lse;
  std::optional<TensorView> alibi;
  float scale = 0.f, softcap = 0.f;
  bool causal = false;
  int wl = -1, wr = -1;
  ValidFwd() : qb(2 * 5 * 4 * 16, 0.5f), kb(2 * 7 * 2 * 16, 0.25f), vb(kb), ob(qb), lb(2 * 4 * 5) {
    q = TensorView::contiguous(qb.data(), DType::f32, {2, 5, 4, 16});
    k = TensorView::contiguous(kb.data(), DType::f32, {2, 7, 2, 16});
    v = TensorView::contiguous(vb.data(), DType::f32, {2, 7, 2, 16});
    out = TensorView::contiguous(ob.data(), DType::f32, {2, 5, 4, 16});
    lse = TensorView::contiguous(lb.data(), DType::f32, {2, 4, 5});
  }
  Status run() const {
    return mha_fwd(q, k, v, out, lse, alibi, 0.f, scale, causal, wl, wr, softcap, false);
  }
};

void require_invalid(const Status& st, const std::string& fragment) {
  INFO("status: " << st.to_string());
  REQUIRE_FALSE(st.ok());
  CHECK(st.code() == StatusCode::invalid_args);
  CHECK(st.message().find(fragment) != std::string::npos);
}

}  // namespace

TEST_CASE("valid arguments run", "[params]") {
  ValidFwd a;
  Status st = a.run();
  INFO(st.to_string());
  REQUIRE(st.ok());
}

TEST_CASE("argument errors are reported, not crashed on", "[params]") {
  ValidFwd a;
  SECTION("mixed dtypes") {
    a.k.dtype = DType::f16;
    require_invalid(a.run(), "k must have dtype fp32");
  }
  SECTION("integer q") {
    a.q.dtype = DType::i32;
    require_invalid(a.run(), "q must have dtype");
  }
  SECTION("shape mismatch between k and v") {
    a.v.shape[1] = 6;
    require_invalid(a.run(), "v must have shape (2, 7, 2, 16)");
  }
  SECTION("head_dim mismatch") {
    a.k.shape[3] = 8;
    require_invalid(a.run(), "k must have shape");
  }
  SECTION("out shape") {
    a.out.shape[2] = 3;
    require_invalid(a.run(), "out must have shape");
  }
  SECTION("lse shape") {
    a.lse.shape[2] = 4;
    require_invalid(a.run(), "softmax_lse must have shape (2, 4, 5)");
  }
  SECTION("nheads not divisible by nheads_k") {
    a.q.shape[2] = 3;
    a.out.shape[2] = 3;
    a.lse.shape[1] = 3;
    require_invalid(a.run(), "must divide");
  }
  SECTION("head_dim 0") {
    for (TensorView* t : {&a.q, &a.k, &a.v, &a.out}) t->shape[3] = 0;
    require_invalid(a.run(), "head_dim must be in 1..256");
  }
  SECTION("head_dim 257") {
    for (TensorView* t : {&a.q, &a.k, &a.v, &a.out}) t->shape[3] = 257;
    require_invalid(a.run(), "head_dim must be in 1..256");
  }
  SECTION("non-unit stride in the last dimension") {
    a.v.stride[3] = 2;
    require_invalid(a.run(), "v must have contiguous last dimension");
  }
  SECTION("null pointer") {
    a.k.data = nullptr;
    require_invalid(a.run(), "k is a null pointer");
  }
  SECTION("null output") {
    a.out.data = nullptr;
    require_invalid(a.run(), "out is a null pointer");
  }
  SECTION("window below -1") {
    a.wl = -2;
    require_invalid(a.run(), "window sizes must be >= -1");
  }
  SECTION("right window below -1") {
    a.wr = -5;
    require_invalid(a.run(), "window sizes must be >= -1");
  }
  SECTION("negative softcap") {
    a.softcap = -1.f;
    require_invalid(a.run(), "softcap must be >= 0");
  }
  SECTION("NaN softcap") {
    a.softcap = std::numeric_limits<float>::quiet_NaN();
    require_invalid(a.run(), "softcap");
  }
  SECTION("NaN scale") {
    a.scale = std::numeric_limits<float>::quiet_NaN();
    require_invalid(a.run(), "softmax_scale must be finite");
  }
  SECTION("infinite scale") {
    a.scale = std::numeric_limits<float>::infinity();
    require_invalid(a.run(), "softmax_scale must be finite");
  }
  SECTION("3-d q") {
    a.q.ndim = 3;
    require_invalid(a.run(), "q must have 4 dimensions");
  }
  SECTION("batch 0") {
    for (TensorView* t : {&a.q, &a.k, &a.v, &a.out, &a.lse}) t->shape[0] = 0;
    require_invalid(a.run(), "batch size must be positive");
  }
  SECTION("alibi wrong dtype") {
    std::vector<float> s(4, 0.1f);
    a.alibi = TensorView::contiguous(s.data(), DType::f16, {4});
    require_invalid(a.run(), "ALiBi slopes must have dtype fp32");
  }
  SECTION("alibi wrong shape") {
    std::vector<float> s(3, 0.1f);
    a.alibi = TensorView::contiguous(s.data(), DType::f32, {3});
    require_invalid(a.run(), "alibi_slopes must have shape (4) or (2, 4)");
  }
  SECTION("tensors on different devices") {
    a.v.device = DeviceKind::cuda;
    require_invalid(a.run(), "v must be on the same device as q");
  }
  SECTION("dropout out of range") {
    Status st = mha_fwd(a.q, a.k, a.v, a.out, a.lse, std::nullopt, 1.5f, 0.f, false, -1, -1,
                        0.f, false);
    require_invalid(st, "p_dropout must be in [0, 1)");
  }
  SECTION("return_softmax without dropout") {
    Status st = mha_fwd(a.q, a.k, a.v, a.out, a.lse, std::nullopt, 0.f, 0.f, false, -1, -1,
                        0.f, true);
    require_invalid(st, "return_softmax is only supported when p_dropout > 0.0");
  }
}

TEST_CASE("a backend that is not compiled or mismatches memory is refused", "[params]") {
  ValidFwd a;
  RunOptions o;
  o.backend = Backend::hip;
  Status st = mha_fwd(a.q, a.k, a.v, a.out, a.lse, std::nullopt, 0.f, 0.f, false, -1, -1, 0.f,
                      false, o);
  REQUIRE_FALSE(st.ok());
  // Either not compiled (unsupported) or compiled but the tensors are host memory (invalid).
  CHECK((st.code() == StatusCode::unsupported || st.code() == StatusCode::invalid_args));
}

TEST_CASE("backward argument errors", "[params]") {
  ValidFwd a;
  std::vector<float> dob(a.qb.size(), 0.1f), dqb(a.qb.size()), dkb(a.kb.size()), dvb(a.kb.size());
  TensorView dout = TensorView::contiguous(dob.data(), DType::f32, {2, 5, 4, 16});
  TensorView dq = TensorView::contiguous(dqb.data(), DType::f32, {2, 5, 4, 16});
  TensorView dk = TensorView::contiguous(dkb.data(), DType::f32, {2, 7, 2, 16});
  TensorView dv = TensorView::contiguous(dvb.data(), DType::f32, {2, 7, 2, 16});
  auto run = [&] {
    return mha_bwd(dout, a.q, a.k, a.v, a.out, a.lse, dq, dk, dv, std::nullopt, 0.f, 0.f, false,
                   -1, -1, 0.f, false);
  };
  REQUIRE(a.run().ok());
  SECTION("valid") { REQUIRE(run().ok()); }
  SECTION("dk shaped like q") {
    dk = TensorView::contiguous(dkb.data(), DType::f32, {2, 7, 4, 8});
    require_invalid(run(), "dk must have shape (2, 7, 2, 16)");
  }
  SECTION("dout dtype") {
    dout.dtype = DType::bf16;
    require_invalid(run(), "dout must have dtype fp32");
  }
  SECTION("dq null") {
    dq.data = nullptr;
    require_invalid(run(), "dq is a null pointer");
  }
}

TEST_CASE("window canonicalisation follows upstream (API.md 2.3)", "[params]") {
  using detail::canonicalize_window;
  SECTION("no mask stays unbounded") {
    auto w = canonicalize_window(8, 8, false, -1, -1, false);
    CHECK(w.left == -1);
    CHECK(w.right == -1);
    CHECK_FALSE(w.is_causal);
  }
  SECTION("causal is pure causal, left bound replaced by seqlen_k") {
    auto w = canonicalize_window(4, 9, true, -1, -1, false);
    CHECK(w.is_causal);
    CHECK(w.left == 9);
    CHECK(w.right == 0);
  }
  SECTION("causal with one query row and no ALiBi is non-causal") {
    auto w = canonicalize_window(1, 9, true, -1, -1, false);
    CHECK_FALSE(w.is_causal);
    CHECK(w.left == -1);
    CHECK(w.right == -1);
  }
  SECTION("causal with one query row and ALiBi stays causal") {
    auto w = canonicalize_window(1, 9, true, -1, -1, true);
    CHECK(w.is_causal);
  }
  SECTION("window (-1, 0) is pure causal too") {
    auto w = canonicalize_window(6, 6, false, -1, 0, false);
    CHECK(w.is_causal);
  }
  SECTION("too-wide windows become unbounded") {
    auto w = canonicalize_window(6, 6, false, 6, 100, false);
    CHECK(w.left == -1);
    CHECK(w.right == -1);
  }
  SECTION("causal with a left window keeps it") {
    auto w = canonicalize_window(6, 6, true, 2, -1, false);
    CHECK_FALSE(w.is_causal);
    CHECK(w.left == 2);
    CHECK(w.right == 0);
  }
  SECTION("a bounded right side with wr >= seqlen_k is re-bounded at seqlen_k") {
    auto w = canonicalize_window(10, 4, false, 1, 7, false);
    CHECK(w.left == 1);
    CHECK(w.right == 4);
  }
}

// One AttnParams per (sq, sk, window, causal) mask case with Sq <= Sk* + 1 (where the literal
// rule of API.md 2.3 and the canonicalised window agree), the window canonicalised as the API
// does. f(p, window_left as passed, effective window_right (0 when causal)).
namespace {
template <class F>
void for_each_mask_case(std::initializer_list<int> sqs, std::initializer_list<int> sks,
                        std::initializer_list<int> wls, std::initializer_list<int> wrs, F&& f) {
  for (int sq : sqs)
    for (int sk : sks)
      for (int wl : wls)
        for (int wr : wrs)
          for (bool causal : {false, true}) {
            if (sq > sk + 1) continue;
            const auto w = detail::canonicalize_window(sq, sk, causal, wl, wr, false);
            AttnParams p;
            p.seqlen_q = sq;
            p.seqlen_k = sk;
            p.window_left = w.left;
            p.window_right = w.right;
            INFO("sq=" << sq << " sk=" << sk << " wl=" << wl << " wr=" << wr
                       << " causal=" << causal);
            f(p, wl, causal ? 0 : wr);
          }
}

}  // namespace

TEST_CASE("query_range is key_range solved for the query rows", "[params]") {
  // Row i is in query_range(j0, j1) exactly when key_range(i) meets [j0, j1), for every key block
  // inside [0, sk) (the backward kernels visit only those rows).
  for_each_mask_case({1, 4, 9}, {1, 6, 13}, {-1, 0, 3}, {-1, 0, 2},
                     [](const AttnParams& p, int, int) {
    for (int j0 = 0; j0 < p.seqlen_k; ++j0)
      for (int j1 = j0 + 1; j1 <= p.seqlen_k; ++j1) {
        int ilo, ihi;
        p.query_range(j0, j1, &ilo, &ihi);
        for (int i = 0; i < p.seqlen_q; ++i) {
          int lo, hi;
          p.key_range(i, &lo, &hi);
          const bool meets = std::max(lo, j0) < std::min(hi, j1);
          INFO("[" << j0 << "," << j1 << ") i=" << i);
          CHECK(meets == (i >= ilo && i <= ihi));
        }
      }
  });
}

TEST_CASE("query_range of a sequence is key_range solved for its own lengths", "[params]") {
  // Varlen: the window is canonicalised once with Sq*, Sk* (the max lengths); sequence b then
  // has its own sq <= Sq*, sk <= Sk* (sq > sk included: rows that see no key). The varlen
  // backward kernels visit query_range(j0, j1, sq, sk) for the keys [j0, j1) of the sequence.
  for_each_mask_case({4, 9}, {6, 13}, {-1, 0, 3}, {-1, 0, 2}, [](const AttnParams& p, int, int) {
    for (int sq = 0; sq <= p.seqlen_q; ++sq)
      for (int sk = 1; sk <= p.seqlen_k; ++sk)
        for (int j0 = 0; j0 < sk; ++j0)
          for (int j1 = j0 + 1; j1 <= sk; ++j1) {
            int ilo, ihi;
            p.query_range(j0, j1, sq, sk, &ilo, &ihi);
            for (int i = 0; i < sq; ++i) {
              int lo, hi;
              p.key_range(i, sq, sk, &lo, &hi);
              const bool meets = std::max(lo, j0) < std::min(hi, j1);
              INFO("sq=" << sq << " sk=" << sk << " [" << j0 << "," << j1 << ") i=" << i);
              CHECK(meets == (i >= ilo && i <= ihi));
            }
            // Nothing outside the sequence's rows.
            CHECK(ilo >= 0);
            CHECK(ihi <= sq - 1);
          }
    // The fixed-length overload is the per-sequence one at (seqlen_q, seqlen_k).
    int a0, a1, b0, b1;
    p.query_range(0, p.seqlen_k, &a0, &a1);
    p.query_range(0, p.seqlen_k, p.seqlen_q, p.seqlen_k, &b0, &b1);
    CHECK(a0 == b0);
    CHECK(a1 == b1);
  });
}

TEST_CASE("key_range matches the visibility rule", "[params]") {
  // Brute force the literal rule of API.md 2.3 against AttnParams::key_range after
  // canonicalisation.
  for_each_mask_case({1, 3, 7}, {0, 1, 5, 8}, {-1, 0, 2}, {-1, 0, 3},
                     [](const AttnParams& p, int wl, int wr_eff) {
    const int sq = p.seqlen_q, sk = p.seqlen_k, off = sk - sq;
    for (int i = 0; i < sq; ++i) {
      int lo, hi;
      p.key_range(i, &lo, &hi);
      for (int j = 0; j < sk; ++j) {
        bool vis = true;
        if (wl >= 0 && j < i + off - wl) vis = false;
        if (wr_eff >= 0 && j > i + off + wr_eff) vis = false;
        INFO("i=" << i << " j=" << j);
        CHECK(vis == (j >= lo && j < hi));
      }
    }
  });
}

// Found by tests/fuzz/fuzz_c_api (issue 17): a cu_seqlens pointer 2 bytes off its int32
// alignment was read by the host-side length checks (UBSan: misaligned load). Every tensor must
// be aligned to its element size; each buffer below has room for the shifted view, so a missing
// check reads no further than the buffer.
TEST_CASE("misaligned tensors are refused before anything is read", "[params]") {
  SECTION("fwd: q at an odd address") {
    ValidFwd a;
    std::vector<float> shifted(a.qb.size() + 1, 0.5f);
    a.q.data = reinterpret_cast<char*>(shifted.data()) + 2;
    require_invalid(a.run(), "q is not aligned to its 4-byte elements");
  }
  SECTION("fwd: fp16 out one byte off") {
    std::vector<uint16_t> qb(2 * 5 * 4 * 16 + 1, 0x3c00), kb(2 * 7 * 2 * 16, 0x3800), ob(qb);
    std::vector<float> lb(2 * 4 * 5);
    const auto q = TensorView::contiguous(qb.data(), DType::f16, {2, 5, 4, 16});
    const auto k = TensorView::contiguous(kb.data(), DType::f16, {2, 7, 2, 16});
    auto out = TensorView::contiguous(ob.data(), DType::f16, {2, 5, 4, 16});
    out.data = reinterpret_cast<char*>(ob.data()) + 1;
    const auto lse = TensorView::contiguous(lb.data(), DType::f32, {2, 4, 5});
    require_invalid(mha_fwd(q, k, k, out, lse, std::nullopt, 0.f, 0.f, false, -1, -1, 0.f, false),
                    "out is not aligned to its 2-byte elements");
  }
  SECTION("varlen: cu_seqlens_q two bytes off") {
    std::vector<float> qb(9 * 2 * 16, 0.5f), ob(qb), lb(2 * 9);
    std::vector<int32_t> cu(4 + 1, 0);
    const int32_t lens[] = {0, 4, 9};
    char* cu_shifted = reinterpret_cast<char*>(cu.data()) + 2;
    std::memcpy(cu_shifted, lens, sizeof lens);
    std::vector<int32_t> cuk = {0, 4, 9};
    VarlenFwdArgs a;
    a.q = TensorView::contiguous(qb.data(), DType::f32, {9, 2, 16});
    a.k = a.q;
    a.v = a.q;
    a.out = TensorView::contiguous(ob.data(), DType::f32, {9, 2, 16});
    a.softmax_lse = TensorView::contiguous(lb.data(), DType::f32, {2, 9});
    a.cu_seqlens_q = TensorView::contiguous(cu_shifted, DType::i32, {3});
    a.cu_seqlens_k = TensorView::contiguous(cuk.data(), DType::i32, {3});
    a.max_seqlen_q = a.max_seqlen_k = 5;
    a.opts.backend = Backend::cpu;
    require_invalid(mha_varlen_fwd(a), "cu_seqlens_q is not aligned to its 4-byte elements");
    a.cu_seqlens_q = TensorView::contiguous(cuk.data(), DType::i32, {3});
    CHECK(mha_varlen_fwd(a).ok());
  }
}

// Found by tests/fuzz/fuzz_c_api (issue 17): a DLTensor whose device_type has no enumerator in
// our dlpack.h (a C caller, or a newer DLPack) was loaded as a DLDeviceType (UBSan: invalid
// enum load). It is an unsupported device, reported with its number.
TEST_CASE("the C ABI refuses an unknown DLPack device type by number", "[params]") {
  std::vector<float> buf(2 * 3 * 1 * 8, 0.5f), lse(2 * 3);
  int64_t shape[] = {2, 3, 1, 8}, lse_shape[] = {2, 1, 3};
  DLTensor t{};
  t.data = buf.data();
  t.device = {kDLCPU, 0};
  t.ndim = 4;
  t.dtype = {kDLFloat, 32, 1};
  t.shape = shape;
  DLTensor l = t;
  l.data = lse.data();
  l.ndim = 3;
  l.shape = lse_shape;
  flashplus_fwd_args a{};
  a.struct_size = sizeof a;
  a.q = a.k = a.v = a.out = &t;
  a.softmax_lse = &l;
  a.window_size_left = a.window_size_right = -1;
  a.opts.backend = FLASHPLUS_BACKEND_CPU;
  REQUIRE(flashplus_mha_fwd(&a) == FLASHPLUS_OK);
  DLTensor odd = t;
  const int32_t foreign = 99;
  std::memcpy(&odd.device.device_type, &foreign, sizeof foreign);
  a.k = &odd;
  CHECK(flashplus_mha_fwd(&a) == FLASHPLUS_UNSUPPORTED);
  CHECK(std::string(flashplus_last_error()).find("k is on DLPack device type 99") != std::string::npos);
}
