// The C ABI (flashplus/flashplus_c.h) against the C++ API it wraps: on random inputs every entry
// point must write bit-identical results (the same struct reaches the same kernels); bad input
// must come back as the documented status with a message naming the argument, never a crash;
// flashplus_last_error() is per thread and cleared by a successful call.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "flashplus/api.h"
#include "flashplus/flashplus_c.h"
#include "flashplus/numerics.h"

using namespace flashplus;

namespace {

// A host tensor seen both ways: as a TensorView (C++ API) and as a DLTensor (C ABI), over the
// same bytes. Not copyable: the DLTensor points into it.
struct HostTensor {
  DType dtype;
  int ndim;
  int64_t shape[4] = {0, 0, 0, 0};
  std::vector<uint8_t> bytes;
  DLTensor dl{};

  HostTensor(DType t, std::vector<int64_t> s) : dtype(t), ndim(static_cast<int>(s.size())) {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) shape[i] = s[i], n *= s[i];
    bytes.assign(static_cast<size_t>(n) * dtype_size(t), 0xA5);  // poison: unwritten stays so
    dl.data = bytes.data();
    dl.device = {kDLCPU, 0};
    dl.ndim = ndim;
    dl.dtype.code = t == DType::i32 ? kDLInt : t == DType::bf16 ? kDLBfloat : kDLFloat;
    dl.dtype.bits = static_cast<uint8_t>(dtype_size(t) * 8);
    dl.dtype.lanes = 1;
    dl.shape = shape;
    dl.strides = nullptr;
    dl.byte_offset = 0;
  }
  HostTensor(const HostTensor&) = delete;
  HostTensor& operator=(const HostTensor&) = delete;

  int64_t numel() const { return static_cast<int64_t>(bytes.size() / dtype_size(dtype)); }
  TensorView view() {
    TensorView v;
    v.data = bytes.data();
    v.dtype = dtype;
    v.ndim = ndim;
    int64_t st = 1;
    for (int i = ndim - 1; i >= 0; --i) v.shape[i] = shape[i], v.stride[i] = st, st *= shape[i];
    return v;
  }
  void fill_random(std::mt19937_64& rng, float scale = 1.f) {
    std::normal_distribution<float> d(0.f, scale);
    for (int64_t i = 0; i < numel(); ++i) {
      float x = d(rng);
      if (round_to(dtype, x) == 0.f) x = 0.03125f;  // never zero
      store_float(bytes.data(), dtype, i, x);
    }
  }
  void set_ints(const std::vector<int32_t>& x) {
    REQUIRE(dtype == DType::i32);
    REQUIRE(static_cast<int64_t>(x.size()) == numel());
    std::memcpy(bytes.data(), x.data(), bytes.size());
  }
  void copy_from(const HostTensor& o) { bytes = o.bytes, dl.data = bytes.data(); }
};

using T = std::unique_ptr<HostTensor>;
T make(DType t, std::vector<int64_t> s) { return std::make_unique<HostTensor>(t, std::move(s)); }
T random(DType t, std::vector<int64_t> s, std::mt19937_64& rng, float scale = 1.f) {
  T x = make(t, std::move(s));
  x->fill_random(rng, scale);
  return x;
}
T ints(std::vector<int64_t> s, const std::vector<int32_t>& v) {
  T x = make(DType::i32, std::move(s));
  x->set_ints(v);
  return x;
}
// A fresh output like `o` (same poison), for the second call.
T twin(const HostTensor& o) {
  T x = make(o.dtype, std::vector<int64_t>(o.shape, o.shape + o.ndim));
  x->copy_from(o);
  return x;
}

bool same_bytes(const HostTensor& a, const HostTensor& b) { return a.bytes == b.bytes; }
// Whether any byte differs from the poison a fresh tensor holds (the call wrote something).
bool written(const HostTensor& a) {
  for (uint8_t x : a.bytes)
    if (x != 0xA5) return true;
  return false;
}

flashplus_run_options c_opts(const RunOptions& o) {
  flashplus_run_options c{};
  c.backend = FLASHPLUS_BACKEND_CPU;
  REQUIRE(o.backend == Backend::cpu);
  c.num_threads = o.num_threads;
  c.stream = o.stream;
  c.dropout_seed = o.dropout_seed;
  c.dropout_offset = o.dropout_offset;
  return c;
}

RunOptions cpu_opts(int threads, uint64_t seed = 0, uint64_t offset = 0) {
  RunOptions o;
  o.backend = Backend::cpu;
  o.num_threads = threads;
  o.dropout_seed = seed;
  o.dropout_offset = offset;
  return o;
}

#define REQUIRE_C_OK(call)                                                        \
  do {                                                                            \
    const flashplus_status _s = (call);                                           \
    INFO(flashplus_status_name(_s) << ": " << flashplus_last_error());            \
    REQUIRE(_s == FLASHPLUS_OK);                                                  \
  } while (0)

// ---- one setup per entry point -------------------------------------------------------------
// Each builds its inputs once, runs the C++ API into one set of outputs and the C ABI into a
// twin set, then compares bytes.

struct FwdSetup {
  T q, k, v, alibi, out, lse, dmask;
  FwdArgs cpp;
  flashplus_fwd_args c{};
  T out2, lse2, dmask2;

  FwdSetup(DType dt, int b, int sq, int sk, int h, int hk, int d, uint64_t seed, bool dropout) {
    std::mt19937_64 rng(seed);
    q = random(dt, {b, sq, h, d}, rng);
    k = random(dt, {b, sk, hk, d}, rng);
    v = random(dt, {b, sk, hk, d}, rng);
    alibi = make(DType::f32, {b, h});
    for (int i = 0; i < b * h; ++i) store_float(alibi->bytes.data(), DType::f32, i, 0.1f + 0.07f * i);
    out = make(dt, {b, sq, h, d});
    lse = make(DType::f32, {b, h, sq});
    cpp.q = q->view(), cpp.k = k->view(), cpp.v = v->view(), cpp.out = out->view(),
    cpp.softmax_lse = lse->view();
    cpp.alibi_slopes = alibi->view();
    cpp.is_causal = !dropout;
    cpp.window_size_left = dropout ? 5 : -1;
    cpp.window_size_right = dropout ? 3 : -1;
    cpp.softcap = dropout ? 0.f : 7.5f;
    cpp.softmax_scale = 0.21f;
    if (dropout) {
      const auto r128 = [](int x) { return (x + 127) / 128 * 128; };
      dmask = make(dt, {b, h, r128(sq), r128(sk)});
      cpp.p_dropout = 0.17f;
      cpp.return_softmax = true;
      cpp.s_dmask = dmask->view();
    }
    cpp.opts = cpu_opts(3, 0x1234567890ull, 77);

    out2 = twin(*out), lse2 = twin(*lse);
    if (dmask) dmask2 = twin(*dmask);
    c.struct_size = sizeof c;
    c.q = &q->dl, c.k = &k->dl, c.v = &v->dl, c.out = &out2->dl, c.softmax_lse = &lse2->dl;
    c.alibi_slopes = &alibi->dl;
    c.s_dmask = dmask2 ? &dmask2->dl : nullptr;
    c.p_dropout = cpp.p_dropout;
    c.softmax_scale = cpp.softmax_scale;
    c.is_causal = cpp.is_causal;
    c.window_size_left = cpp.window_size_left;
    c.window_size_right = cpp.window_size_right;
    c.softcap = cpp.softcap;
    c.return_softmax = cpp.return_softmax;
    c.opts = c_opts(cpp.opts);
  }
};

}  // namespace

TEST_CASE("c_api: fwd is bit-identical to mha_fwd", "[c_api]") {
  struct Shape { DType dt; int b, sq, sk, h, hk, d; bool dropout; };
  for (const Shape& s : {Shape{DType::bf16, 2, 7, 13, 4, 2, 40, false},
                         Shape{DType::f16, 1, 19, 11, 3, 1, 64, true},
                         Shape{DType::f32, 3, 5, 5, 2, 2, 24, false}}) {
    INFO(fmt::format("{} b={} sq={} sk={} h={} hk={} d={} dropout={}", dtype_name(s.dt), s.b, s.sq,
                     s.sk, s.h, s.hk, s.d, s.dropout));
    FwdSetup f(s.dt, s.b, s.sq, s.sk, s.h, s.hk, s.d, 1000 + s.d, s.dropout);
    const Status st = mha_fwd(f.cpp);
    REQUIRE(st.ok());
    REQUIRE_C_OK(flashplus_mha_fwd(&f.c));
    CHECK(same_bytes(*f.out, *f.out2));
    CHECK(same_bytes(*f.lse, *f.lse2));
    if (f.dmask) CHECK(same_bytes(*f.dmask, *f.dmask2));
    // The outputs were written (not both left at the poison).
    CHECK(written(*f.out));
    CHECK(std::string(flashplus_last_error()).empty());
  }
}

TEST_CASE("c_api: bwd is bit-identical to mha_bwd", "[c_api]") {
  for (bool dropout : {false, true}) {
    INFO("dropout " << dropout);
    const DType dt = dropout ? DType::f16 : DType::bf16;
    const int b = 2, sq = 9, sk = 14, h = 4, hk = 2, d = 32;
    FwdSetup f(dt, b, sq, sk, h, hk, d, 55 + dropout, dropout);
    f.cpp.return_softmax = false;
    f.cpp.s_dmask.reset();
    REQUIRE(mha_fwd(f.cpp).ok());
    std::mt19937_64 rng(99);
    T dout = random(dt, {b, sq, h, d}, rng);
    T dq = make(dt, {b, sq, h, d}), dk = make(dt, {b, sk, hk, d}), dv = make(dt, {b, sk, hk, d});
    T sd = make(DType::f32, {b, h, sq});
    BwdArgs a;
    a.dout = dout->view(), a.q = f.q->view(), a.k = f.k->view(), a.v = f.v->view(),
    a.out = f.out->view(), a.softmax_lse = f.lse->view(), a.dq = dq->view(), a.dk = dk->view(),
    a.dv = dv->view();
    a.alibi_slopes = f.alibi->view();
    a.softmax_d = sd->view();
    a.p_dropout = f.cpp.p_dropout;
    a.softmax_scale = f.cpp.softmax_scale;
    a.is_causal = f.cpp.is_causal;
    a.window_size_left = f.cpp.window_size_left;
    a.window_size_right = f.cpp.window_size_right;
    a.softcap = f.cpp.softcap;
    a.deterministic = true;
    a.opts = f.cpp.opts;
    const Status st = mha_bwd(a);
    INFO(st.to_string());
    REQUIRE(st.ok());

    T dq2 = twin(*dq), dk2 = twin(*dk), dv2 = twin(*dv), sd2 = twin(*sd);
    flashplus_bwd_args c{};
    c.struct_size = sizeof c;
    c.dout = &dout->dl, c.q = &f.q->dl, c.k = &f.k->dl, c.v = &f.v->dl, c.out = &f.out->dl,
    c.softmax_lse = &f.lse->dl, c.dq = &dq2->dl, c.dk = &dk2->dl, c.dv = &dv2->dl;
    c.alibi_slopes = &f.alibi->dl;
    c.softmax_d = &sd2->dl;
    c.p_dropout = a.p_dropout;
    c.softmax_scale = a.softmax_scale;
    c.is_causal = a.is_causal;
    c.window_size_left = a.window_size_left;
    c.window_size_right = a.window_size_right;
    c.softcap = a.softcap;
    c.deterministic = 1;
    c.opts = c_opts(a.opts);
    REQUIRE_C_OK(flashplus_mha_bwd(&c));
    CHECK(same_bytes(*dq, *dq2));
    CHECK(same_bytes(*dk, *dk2));
    CHECK(same_bytes(*dv, *dv2));
    CHECK(same_bytes(*sd, *sd2));
    CHECK(written(*dq));
  }
}

TEST_CASE("c_api: varlen fwd and bwd are bit-identical to the C++ API", "[c_api]") {
  const DType dt = DType::f16;
  const int h = 3, hk = 1, d = 24;
  const std::vector<int32_t> cq = {0, 3, 3, 8}, ck = {0, 4, 6, 12};  // a zero-length query seq
  const int total_q = 8, total_k = 12, b = 3, max_q = 5, max_k = 6;
  std::mt19937_64 rng(31337);
  T q = random(dt, {total_q, h, d}, rng), k = random(dt, {total_k, hk, d}, rng),
    v = random(dt, {total_k, hk, d}, rng);
  T cu_q = ints({b + 1}, cq), cu_k = ints({b + 1}, ck), used = ints({b}, {4, 1, 5});
  T alibi = make(DType::f32, {h});
  for (int i = 0; i < h; ++i) store_float(alibi->bytes.data(), DType::f32, i, 0.3f * (i + 1));
  T out = make(dt, {total_q, h, d}), lse = make(DType::f32, {h, total_q});

  VarlenFwdArgs a;
  a.q = q->view(), a.k = k->view(), a.v = v->view(), a.out = out->view(),
  a.softmax_lse = lse->view(), a.cu_seqlens_q = cu_q->view(), a.cu_seqlens_k = cu_k->view();
  a.alibi_slopes = alibi->view();
  a.max_seqlen_q = max_q, a.max_seqlen_k = max_k;
  a.is_causal = true;
  a.zero_tensors = true;
  a.opts = cpu_opts(2);
  T out2 = twin(*out), lse2 = twin(*lse);
  flashplus_varlen_fwd_args c{};
  c.struct_size = sizeof c;
  c.q = &q->dl, c.k = &k->dl, c.v = &v->dl, c.out = &out2->dl, c.softmax_lse = &lse2->dl,
  c.cu_seqlens_q = &cu_q->dl, c.cu_seqlens_k = &cu_k->dl, c.alibi_slopes = &alibi->dl;
  c.max_seqlen_q = max_q, c.max_seqlen_k = max_k;
  c.is_causal = 1, c.zero_tensors = 1;
  c.window_size_left = c.window_size_right = -1;
  c.opts = c_opts(a.opts);

  SECTION("forward, with seqused_k and num_splits") {
    a.seqused_k = used->view();
    a.num_splits = 2;
    a.softcap = 4.f;
    c.seqused_k = &used->dl;
    c.num_splits = 2;
    c.softcap = 4.f;
    const Status st = mha_varlen_fwd(a);
    INFO(st.to_string());
    REQUIRE(st.ok());
    REQUIRE_C_OK(flashplus_mha_varlen_fwd(&c));
    CHECK(same_bytes(*out, *out2));
    CHECK(same_bytes(*lse, *lse2));
  }
  SECTION("backward") {
    a.softmax_scale = 0.3f;
    REQUIRE(mha_varlen_fwd(a).ok());
    T dout = random(dt, {total_q, h, d}, rng);
    T dq = make(dt, {total_q, h, d}), dk = make(dt, {total_k, hk, d}), dv = make(dt, {total_k, hk, d});
    T sd = make(DType::f32, {h, total_q});
    VarlenBwdArgs g;
    g.dout = dout->view(), g.q = q->view(), g.k = k->view(), g.v = v->view(), g.out = out->view(),
    g.softmax_lse = lse->view(), g.dq = dq->view(), g.dk = dk->view(), g.dv = dv->view(),
    g.cu_seqlens_q = cu_q->view(), g.cu_seqlens_k = cu_k->view();
    g.alibi_slopes = alibi->view();
    g.softmax_d = sd->view();
    g.max_seqlen_q = max_q, g.max_seqlen_k = max_k;
    g.is_causal = true, g.zero_tensors = true, g.deterministic = true;
    g.softmax_scale = 0.3f;
    g.opts = a.opts;
    const Status st = mha_varlen_bwd(g);
    INFO(st.to_string());
    REQUIRE(st.ok());

    T dq2 = twin(*dq), dk2 = twin(*dk), dv2 = twin(*dv), sd2 = twin(*sd);
    flashplus_varlen_bwd_args cb{};
    cb.struct_size = sizeof cb;
    cb.dout = &dout->dl, cb.q = &q->dl, cb.k = &k->dl, cb.v = &v->dl, cb.out = &out->dl,
    cb.softmax_lse = &lse->dl, cb.dq = &dq2->dl, cb.dk = &dk2->dl, cb.dv = &dv2->dl,
    cb.cu_seqlens_q = &cu_q->dl, cb.cu_seqlens_k = &cu_k->dl, cb.alibi_slopes = &alibi->dl,
    cb.softmax_d = &sd2->dl;
    cb.max_seqlen_q = max_q, cb.max_seqlen_k = max_k;
    cb.softmax_scale = 0.3f;
    cb.is_causal = 1, cb.zero_tensors = 1, cb.deterministic = 1;
    cb.window_size_left = cb.window_size_right = -1;
    cb.opts = c_opts(g.opts);
    REQUIRE_C_OK(flashplus_mha_varlen_bwd(&cb));
    CHECK(same_bytes(*dq, *dq2));
    CHECK(same_bytes(*dk, *dk2));
    CHECK(same_bytes(*dv, *dv2));
    CHECK(same_bytes(*sd, *sd2));
  }
}

TEST_CASE("c_api: kvcache with a paged cache, append and rotary is bit-identical", "[c_api]") {
  const DType dt = DType::bf16;
  const int b = 2, sq = 2, h = 4, hk = 2, d = 32, page = 5, blocks = 7, mb = 3, s_new = 2;
  const int rot = 16, seqlen_ro = mb * page + 1;
  std::mt19937_64 rng(4242);
  T q = random(dt, {b, sq, h, d}, rng);
  T kc = random(dt, {blocks, page, hk, d}, rng), vc = random(dt, {blocks, page, hk, d}, rng);
  T kn = random(dt, {b, s_new, hk, d}, rng), vn = random(dt, {b, s_new, hk, d}, rng);
  T seqlens = ints({b}, {4, 9});
  T table = ints({b, mb}, {3, 0, 5, 6, 1, 2});
  T cos = make(dt, {seqlen_ro, rot / 2}), sin = make(dt, {seqlen_ro, rot / 2});
  for (int p = 0; p < seqlen_ro; ++p)
    for (int j = 0; j < rot / 2; ++j) {
      const float ang = p * std::pow(10000.f, -2.f * j / rot);
      store_float(cos->bytes.data(), dt, p * rot / 2 + j, std::cos(ang));
      store_float(sin->bytes.data(), dt, p * rot / 2 + j, std::sin(ang));
    }
  T out = make(dt, {b, sq, h, d}), lse = make(DType::f32, {b, h, sq});
  T kc2 = twin(*kc), vc2 = twin(*vc), out2 = twin(*out), lse2 = twin(*lse);
  const auto kc_before = kc->bytes;

  for (bool interleaved : {false, true}) {
    INFO("interleaved " << interleaved);
    KvcacheArgs a;
    a.q = q->view(), a.kcache = kc->view(), a.vcache = vc->view();
    a.k_new = kn->view(), a.v_new = vn->view(), a.cache_seqlens = seqlens->view();
    a.rotary_cos = cos->view(), a.rotary_sin = sin->view(), a.block_table = table->view();
    a.out = out->view(), a.softmax_lse = lse->view();
    a.is_causal = true;
    a.softcap = 12.f;
    a.is_rotary_interleaved = interleaved;
    a.num_splits = 3;
    a.opts = cpu_opts(2);
    const Status st = mha_fwd_kvcache(a);
    INFO(st.to_string());
    REQUIRE(st.ok());

    flashplus_kvcache_args c{};
    c.struct_size = sizeof c;
    c.q = &q->dl, c.kcache = &kc2->dl, c.vcache = &vc2->dl, c.k_new = &kn->dl, c.v_new = &vn->dl;
    c.cache_seqlens = &seqlens->dl, c.rotary_cos = &cos->dl, c.rotary_sin = &sin->dl;
    c.block_table = &table->dl, c.out = &out2->dl, c.softmax_lse = &lse2->dl;
    c.is_causal = 1;
    c.window_size_left = c.window_size_right = -1;
    c.softcap = 12.f;
    c.is_rotary_interleaved = interleaved;
    c.num_splits = 3;
    c.opts = c_opts(a.opts);
    REQUIRE_C_OK(flashplus_mha_fwd_kvcache(&c));
    CHECK(same_bytes(*out, *out2));
    CHECK(same_bytes(*lse, *lse2));
    CHECK(same_bytes(*kc, *kc2));  // the appended slots, rotated the same way
    CHECK(same_bytes(*vc, *vc2));
    CHECK(kc->bytes != kc_before);  // the append did happen
  }
}

// ---- bad input ---------------------------------------------------------------------------------

namespace {

// A valid fwd call whose C args a row mutates; the DLTensors are copies the row may change.
struct BadFwd {
  FwdSetup f{DType::f16, 1, 3, 4, 2, 2, 16, 5, false};
  DLTensor q, k, v;
  int64_t shape5[5] = {1, 3, 2, 16, 1};
  BadFwd() : q(f.q->dl), k(f.k->dl), v(f.v->dl) {
    f.c.q = &q, f.c.k = &k, f.c.v = &v;
  }
};

struct BadRow {
  const char* what;
  std::function<void(BadFwd&)> mutate;
  flashplus_status status;
  const char* fragment;
};

}  // namespace

TEST_CASE("c_api: bad input gives the documented status and names the argument", "[c_api]") {
  const std::vector<BadRow> rows = {
      {"wrong struct_size", [](BadFwd& b) { b.f.c.struct_size -= 8; }, FLASHPLUS_INVALID_ARGS,
       "struct_size"},
      {"struct_size 0", [](BadFwd& b) { b.f.c.struct_size = 0; }, FLASHPLUS_INVALID_ARGS,
       "struct_size is 0"},
      {"NULL q", [](BadFwd& b) { b.f.c.q = nullptr; }, FLASHPLUS_INVALID_ARGS,
       "q is required but NULL"},
      {"NULL softmax_lse", [](BadFwd& b) { b.f.c.softmax_lse = nullptr; },
       FLASHPLUS_INVALID_ARGS, "softmax_lse is required but NULL"},
      {"ndim 5", [](BadFwd& b) { b.k.ndim = 5, b.k.shape = b.shape5; }, FLASHPLUS_INVALID_ARGS,
       "k has 5 dimensions"},
      {"negative ndim", [](BadFwd& b) { b.k.ndim = -1; }, FLASHPLUS_INVALID_ARGS,
       "k has -1 dimensions"},
      {"NULL shape", [](BadFwd& b) { b.v.shape = nullptr; }, FLASHPLUS_INVALID_ARGS,
       "v has a NULL shape"},
      {"lanes 2", [](BadFwd& b) { b.q.dtype.lanes = 2; }, FLASHPLUS_INVALID_ARGS,
       "q has 2 lanes"},
      {"int64", [](BadFwd& b) { b.q.dtype = {kDLInt, 64, 1}; }, FLASHPLUS_INVALID_ARGS,
       "q has dtype int64"},
      {"float64", [](BadFwd& b) { b.v.dtype = {kDLFloat, 64, 1}; }, FLASHPLUS_INVALID_ARGS,
       "v has dtype float64"},
      {"uint8", [](BadFwd& b) { b.k.dtype = {kDLUInt, 8, 1}; }, FLASHPLUS_INVALID_ARGS,
       "k has dtype uint8"},
      {"unknown dtype code", [](BadFwd& b) { b.k.dtype = {42, 16, 1}; }, FLASHPLUS_INVALID_ARGS,
       "k has dtype"},
      {"Vulkan memory", [](BadFwd& b) { b.q.device.device_type = kDLVulkan; },
       FLASHPLUS_UNSUPPORTED, "q is on DLPack device type 7"},
      {"negative extent", [](BadFwd& b) { b.f.q->shape[1] = -3; }, FLASHPLUS_INVALID_ARGS,
       "q has a negative extent -3 in dimension 1"},
      {"element count overflows", [](BadFwd& b) { b.f.q->shape[0] = b.f.q->shape[1] = 1ll << 40; },
       FLASHPLUS_INVALID_ARGS, "q has extents whose product overflows 64 bits"},
      {"bad optional tensor", [](BadFwd& b) { b.f.alibi->dl.dtype = {kDLFloat, 64, 1}; },
       FLASHPLUS_INVALID_ARGS, "alibi_slopes has dtype float64"},
      {"bad opts.backend", [](BadFwd& b) { b.f.c.opts.backend = 9; }, FLASHPLUS_INVALID_ARGS,
       "opts.backend 9"},
      {"negative opts.backend", [](BadFwd& b) { b.f.c.opts.backend = -1; },
       FLASHPLUS_INVALID_ARGS, "opts.backend -1"},
      {"negative num_threads", [](BadFwd& b) { b.f.c.opts.num_threads = -2; },
       FLASHPLUS_INVALID_ARGS, "num_threads must be >= 0, got -2"},
      // Past the C layer, the C++ validation speaks (the same checks for every caller).
      {"int32 q", [](BadFwd& b) { b.q.dtype = {kDLInt, 32, 1}; }, FLASHPLUS_INVALID_ARGS,
       "q must have dtype fp16, bf16 or fp32, got int32"},
      {"mismatched head dim", [](BadFwd& b) { b.f.k->shape[3] = 8; }, FLASHPLUS_INVALID_ARGS,
       "k must have shape (1, 4, 2, 16), got (1, 4, 2, 8)"},
      {"q in CUDA memory", [](BadFwd& b) { b.q.device = {kDLCUDA, 1}; }, FLASHPLUS_INVALID_ARGS,
       "k must be on the same device as q (cuda:1), got cpu:0"},
  };
  for (const BadRow& r : rows) {
    INFO(r.what);
    BadFwd b;
    r.mutate(b);
    const auto out_before = b.f.out2->bytes;
    const flashplus_status st = flashplus_mha_fwd(&b.f.c);
    const std::string msg = flashplus_last_error();
    INFO(flashplus_status_name(st) << ": " << msg);
    CHECK(st == r.status);
    CHECK(msg.find(r.fragment) != std::string::npos);
    CHECK(b.f.out2->bytes == out_before);  // nothing written
  }
  // The unmutated call is fine (the rows fail for their own reason).
  BadFwd ok;
  REQUIRE_C_OK(flashplus_mha_fwd(&ok.f.c));
}

TEST_CASE("c_api: NULL args and a foreign struct_size on every entry point", "[c_api]") {
  CHECK(flashplus_mha_fwd(nullptr) == FLASHPLUS_INVALID_ARGS);
  CHECK(std::string(flashplus_last_error()) == "flashplus_mha_fwd: args is NULL");
  CHECK(flashplus_mha_bwd(nullptr) == FLASHPLUS_INVALID_ARGS);
  CHECK(std::string(flashplus_last_error()) == "flashplus_mha_bwd: args is NULL");
  CHECK(flashplus_mha_varlen_fwd(nullptr) == FLASHPLUS_INVALID_ARGS);
  CHECK(std::string(flashplus_last_error()) == "flashplus_mha_varlen_fwd: args is NULL");
  CHECK(flashplus_mha_varlen_bwd(nullptr) == FLASHPLUS_INVALID_ARGS);
  CHECK(std::string(flashplus_last_error()) == "flashplus_mha_varlen_bwd: args is NULL");
  CHECK(flashplus_mha_fwd_kvcache(nullptr) == FLASHPLUS_INVALID_ARGS);
  CHECK(std::string(flashplus_last_error()) == "flashplus_mha_fwd_kvcache: args is NULL");

  // A caller compiled against a larger (newer) struct: refused before anything is read.
  flashplus_bwd_args b{};
  b.struct_size = sizeof b + 16;
  CHECK(flashplus_mha_bwd(&b) == FLASHPLUS_INVALID_ARGS);
  CHECK(std::string(flashplus_last_error()).find(fmt::format("struct is {} bytes", sizeof b)) !=
        std::string::npos);
  flashplus_varlen_fwd_args vf{};
  vf.struct_size = 4;
  CHECK(flashplus_mha_varlen_fwd(&vf) == FLASHPLUS_INVALID_ARGS);
  CHECK(std::string(flashplus_last_error()).find("struct_size is 4") != std::string::npos);
  flashplus_varlen_bwd_args vb{};
  vb.struct_size = sizeof vb + 8;
  CHECK(flashplus_mha_varlen_bwd(&vb) == FLASHPLUS_INVALID_ARGS);
  CHECK(std::string(flashplus_last_error()).find("flashplus_mha_varlen_bwd") != std::string::npos);
  flashplus_kvcache_args kv{};
  kv.struct_size = sizeof kv - 4;
  CHECK(flashplus_mha_fwd_kvcache(&kv) == FLASHPLUS_INVALID_ARGS);
  CHECK(std::string(flashplus_last_error()).find("struct_size") != std::string::npos);
  // Right size, NULL tensors: the first required one is named.
  kv.struct_size = sizeof kv;
  CHECK(flashplus_mha_fwd_kvcache(&kv) == FLASHPLUS_INVALID_ARGS);
  CHECK(std::string(flashplus_last_error()) == "q is required but NULL");
  vb.struct_size = sizeof vb;
  CHECK(flashplus_mha_varlen_bwd(&vb) == FLASHPLUS_INVALID_ARGS);
  CHECK(std::string(flashplus_last_error()) == "dout is required but NULL");
}

TEST_CASE("c_api: flashplus_last_error is per thread and cleared by a successful call", "[c_api]") {
  // This thread fails; another thread fails differently; a third never called.
  CHECK(flashplus_mha_fwd(nullptr) == FLASHPLUS_INVALID_ARGS);
  std::string other, fresh, other_after_ok;
  FwdSetup good(DType::f32, 1, 2, 3, 1, 1, 8, 9, false);  // built here: Catch2 is not thread-safe
  std::thread t([&] {
    flashplus_kvcache_args kv{};
    kv.struct_size = 3;
    flashplus_mha_fwd_kvcache(&kv);
    other = flashplus_last_error();
    // A successful call on this thread clears this thread's message only.
    if (flashplus_mha_fwd(&good.c) == FLASHPLUS_OK) other_after_ok = flashplus_last_error();
    else other_after_ok = "call failed";
  });
  t.join();
  std::thread([&] { fresh = flashplus_last_error(); }).join();
  CHECK(std::string(flashplus_last_error()) == "flashplus_mha_fwd: args is NULL");
  CHECK(other.find("flashplus_mha_fwd_kvcache: args.struct_size is 3") == 0);
  CHECK(other_after_ok.empty());
  CHECK(fresh.empty());

  FwdSetup f(DType::f32, 2, 3, 5, 2, 1, 16, 10, false);
  REQUIRE(flashplus_mha_fwd(&f.c) == FLASHPLUS_OK);
  CHECK(std::string(flashplus_last_error()).empty());
}

TEST_CASE("c_api: build and version queries", "[c_api]") {
  CHECK(flashplus_c_abi_version() == FLASHPLUS_C_ABI_VERSION);
  CHECK(std::string(flashplus_version_string()).find('.') != std::string::npos);
  CHECK(flashplus_backend_compiled(FLASHPLUS_BACKEND_CPU) == 1);
  CHECK(flashplus_device_count(FLASHPLUS_BACKEND_CPU) == 1);
  bool cuda = false, hip = false;
  for (Backend b : compiled_backends()) cuda = cuda || b == Backend::cuda, hip = hip || b == Backend::hip;
  CHECK(flashplus_backend_compiled(FLASHPLUS_BACKEND_CUDA) == (cuda ? 1 : 0));
  CHECK(flashplus_backend_compiled(FLASHPLUS_BACKEND_HIP) == (hip ? 1 : 0));
  int cuda_devices = 0, hip_devices = 0;
  for (const DeviceDesc& d : list_devices())
    cuda_devices += d.backend == Backend::cuda, hip_devices += d.backend == Backend::hip;
  CHECK(flashplus_device_count(FLASHPLUS_BACKEND_CUDA) == cuda_devices);
  CHECK(flashplus_device_count(FLASHPLUS_BACKEND_HIP) == hip_devices);
  // Not a backend: 0, never a crash.
  for (int32_t x : {-1, 4, 1000}) {
    CHECK(flashplus_backend_compiled(x) == 0);
    CHECK(flashplus_device_count(x) == 0);
  }
  CHECK(flashplus_backend_compiled(FLASHPLUS_BACKEND_AUTO) == 0);
  CHECK(std::string(flashplus_status_name(FLASHPLUS_UNSUPPORTED)) == "unsupported");
  CHECK(std::string(flashplus_status_name(static_cast<flashplus_status>(99))) == "unknown");
}
