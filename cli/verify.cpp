#include "verify.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <optional>

#include "device_buffer.h"
#include "flashplus/numerics.h"
#include "flashplus/runtime.h"

namespace flashplus::cli {

const char* outcome_name(Outcome o) {
  switch (o) {
    case Outcome::pass:
      return "PASS";
    case Outcome::fail:
      return "FAIL";
    case Outcome::xfail:
      return "XFAIL";
    case Outcome::xpass:
      return "XPASS";
    case Outcome::unsupported:
      return "UNSUP";
  }
  return "?";
}

namespace {

// VerifyOptions::config_override is for the pass under test: the backward when the case has one
// (its forward then runs with the library's own choice: a backward tile need not exist as a
// forward tile), else the forward.
RunOptions forward_options(const RunOptions& ro, const Case& c) {
  RunOptions f = ro;
  if (c.bwd) f.config_override = nullptr;
  return f;
}

// What the fixed-length and varlen reference problems share, from the case as the kernel runs it
// (scale and softcap rounded to float, as the API takes them).
template <class RefProblem>
void set_ref_options(const Case& c, const std::vector<float>& slopes, RefProblem* p) {
  p->nheads = c.nheads;
  p->nheads_k = c.nheads_k;
  p->head_dim = c.head_dim;
  p->softmax_scale = c.scale > 0 ? static_cast<double>(static_cast<float>(c.scale)) : 0.0;
  p->causal = c.causal;
  p->window_left = c.window_left;
  p->window_right = c.window_right;
  p->softcap = static_cast<double>(static_cast<float>(c.softcap));
  p->alibi.assign(slopes.begin(), slopes.end());
}
template <class RefProblem>
void set_ref_dropout(float p_dropout, const RunOptions& ro, RefProblem* p) {
  p->p_dropout = p_dropout;
  p->dropout_seed = ro.dropout_seed;
  p->dropout_offset = ro.dropout_offset;
}


// S_dmask (MR x MC per head, padded) against the reference's (SQ x SK) signed probabilities:
// values within twice the storage type's rounding of a probability (<= 1), the sign (dropped or
// kept) exact wherever the probability is not negligible, and zeros in the padding.
ref::Check check_dmask(const std::vector<double>& want, const std::vector<double>& got, int64_t B,
                       int64_t H, int64_t SQ, int64_t SK, int64_t MR, int64_t MC, DType t) {
  ref::Check ch;
  ch.tolerance = t == DType::bf16 ? 2.0 / 256 : t == DType::f16 ? 2.0 / 2048 : 1e-5;
  double num = 0, den = 0;
  int64_t wrong_sign = 0;
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t i = 0; i < MR; ++i)
      for (int64_t j = 0; j < MC; ++j) {
        const double g = got[(bh * MR + i) * MC + j];
        const double e = i < SQ && j < SK ? want[(bh * SQ + i) * SK + j] : 0.0;
        if (!std::isfinite(g)) {
          ++ch.bad_nonfinite;
          continue;
        }
        ch.max_abs_err = std::max(ch.max_abs_err, std::fabs(g - e));
        num += (g - e) * (g - e);
        den += e * e;
        if (std::fabs(e) > 1e-3 && (g < 0) != (e < 0)) ++wrong_sign;
      }
  ch.rel_err = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  ch.bad_nonfinite += wrong_sign;  // a flipped sign is a wrong dropout decision: never passes
  ch.pass = ch.bad_nonfinite == 0 && ch.max_abs_err <= ch.tolerance;
  return ch;
}

// splitmix64: tiny, fast, and identical on every platform (unlike std:: distributions).
uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
uint64_t fnv1a(const std::string& s, uint64_t h = 0xcbf29ce484222325ull) {
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ull;
  return h;
}

// Uniform in (0, 1], 53 random bits.
double uniform01(uint64_t& s) { return (static_cast<double>(splitmix(s) >> 11) + 1.0) * 0x1.0p-53; }

}  // namespace

std::vector<float> random_normal(uint64_t seed, const std::string& name, const std::string& tag,
                                 size_t n) {
  uint64_t s = fnv1a(tag, fnv1a(name, seed * 0x2545f4914f6cdd1dull + 1));
  std::vector<float> out(n);
  for (size_t i = 0; i < n; i += 2) {  // Box-Muller, two values per draw
    const double r = std::sqrt(-2.0 * std::log(uniform01(s)));
    const double t = 6.283185307179586 * uniform01(s);
    out[i] = static_cast<float>(r * std::cos(t));
    if (i + 1 < n) out[i + 1] = static_cast<float>(r * std::sin(t));
  }
  for (float& x : out)
    if (x == 0.f) x = 0.5f;  // never exactly zero: a zero hides sign and scaling bugs
  return out;
}

std::string check_guard_bands(const uint8_t* buf, size_t interior_bytes, const std::string& what) {
  size_t bad = 0;
  std::string first;
  const size_t total = interior_bytes + 2 * kGuardBytes;
  for (size_t i = 0; i < total; ++i) {
    if (i >= kGuardBytes && i < kGuardBytes + interior_bytes) continue;
    if (buf[i] == kGuardByte) continue;
    if (bad++ == 0)
      first = i < kGuardBytes
                  ? fmt::format("{} byte(s) before the start", kGuardBytes - i)
                  : fmt::format("{} byte(s) past the end", i - kGuardBytes - interior_bytes + 1);
  }
  if (!bad) return "";
  return fmt::format("{}: {} guard byte(s) overwritten: out-of-bounds write (first at {})", what,
                     bad, first);
}

namespace {

// A (batch, seqlen, heads, head_dim) tensor placed in a host staging buffer of storage dtype,
// possibly as a strided view (element offset + strides); mirrored in a device buffer.
struct Placed {
  int64_t offset = 0;                // elements from the start of the storage buffer
  std::array<int64_t, 3> strides{};  // batch, row, head (head_dim stride is 1)
};

struct Storage {
  DType t;
  std::vector<uint8_t> host;
  DeviceBuffer dev;
  Storage(DType dt, int64_t elems) : t(dt), host(static_cast<size_t>(elems) * dtype_size(dt)) {}
  void fill(const std::vector<float>& values) {  // whole buffer, values rounded by store_float
    for (size_t i = 0; i < values.size(); ++i)
      store_float(host.data(), t, static_cast<int64_t>(i), values[i]);
  }
  void place(const Placed& p, const std::vector<float>& logical, int64_t b, int64_t s, int64_t h,
             int64_t d) {
    size_t i = 0;
    for (int64_t ib = 0; ib < b; ++ib)
      for (int64_t is = 0; is < s; ++is)
        for (int64_t ih = 0; ih < h; ++ih)
          for (int64_t id = 0; id < d; ++id)
            store_float(host.data(), t,
                        p.offset + ib * p.strides[0] + is * p.strides[1] + ih * p.strides[2] + id,
                        logical[i++]);
  }
  void upload(Backend be) {
    dev = DeviceBuffer(be, host.size());
    dev.upload(host.data());
  }
  TensorView view(const Placed& p, int64_t b, int64_t s, int64_t h, int64_t d,
                  DeviceKind dk) const {
    TensorView v;
    v.data = dev.bytes_ptr(static_cast<size_t>(p.offset) * dtype_size(t));
    v.dtype = t;
    v.ndim = 4;
    v.shape = {b, s, h, d};
    v.stride = {p.strides[0], p.strides[1], p.strides[2], 1};
    v.device = dk;
    return v;
  }
};

Placed contiguous_place(int64_t s, int64_t h, int64_t d) { return {0, {s * h * d, h * d, d}}; }

// An output buffer with sentinel guard bands on both sides. The interior starts as all-ones
// bytes (NaN in fp32/fp16/bf16), so an element the kernel never writes fails the NaN check; the
// guards hold a different byte so a write of NaN there is still caught.

struct Guarded {
  DType t;
  std::vector<int64_t> shape;
  size_t bytes;
  DeviceBuffer dev;
  std::vector<uint8_t> host;
  Guarded(Backend be, DType dt, std::vector<int64_t> shp) : t(dt), shape(std::move(shp)) {
    int64_t n = 1;
    for (int64_t x : shape) n *= x;
    bytes = static_cast<size_t>(n) * dtype_size(dt);
    host.assign(bytes + 2 * kGuardBytes, kGuardByte);
    std::memset(host.data() + kGuardBytes, kInteriorByte, bytes);
    dev = DeviceBuffer(be, host.size());
    dev.upload(host.data());
  }
  TensorView view(DeviceKind dk) const {
    TensorView v;
    v.data = dev.bytes_ptr(kGuardBytes);
    v.dtype = t;
    v.ndim = static_cast<int>(shape.size());
    int64_t st = 1;
    for (int d = v.ndim - 1; d >= 0; --d) {
      v.shape[d] = shape[d];
      v.stride[d] = st;
      st *= shape[d];
    }
    v.device = dk;
    return v;
  }
  // Downloads; returns a problem description when a guard byte changed, else "".
  std::string fetch(const std::string& what) {
    dev.download(host.data());
    return check_guard_bands(host.data(), bytes, what);
  }
  std::vector<double> values() const {
    std::vector<double> out(bytes / dtype_size(t));
    for (size_t i = 0; i < out.size(); ++i)
      out[i] = load_float(host.data() + kGuardBytes, t, static_cast<int64_t>(i));
    return out;
  }
  bool same_interior(const Guarded& o) const {
    return std::memcmp(host.data() + kGuardBytes, o.host.data() + kGuardBytes, bytes) == 0;
  }
};

std::vector<double> rounded(const std::vector<float>& v, DType t) {
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = round_to(t, v[i]);
  return out;
}

// ---- shared pieces of the case runners --------------------------------------------------------

struct Outcomes {
  CaseResult& r;
  const Case& c;
  std::chrono::steady_clock::time_point t0;
  void problem(const std::string& m) { r.problems.push_back(m); }
  CaseResult finish() {
    bool ok = r.problems.empty();
    for (const auto& ch : r.checks) ok = ok && ch.check.pass;
    if (!r.unsupported.empty() && r.problems.empty())
      r.outcome = Outcome::unsupported;
    else if (!c.known_failure.empty())
      r.outcome = ok ? Outcome::xpass : Outcome::xfail;
    else
      r.outcome = ok ? Outcome::pass : Outcome::fail;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
  }
  bool status(const Status& st, const char* fn) {
    if (st.ok()) return true;
    if (st.code() == StatusCode::unsupported || st.code() == StatusCode::no_instance)
      r.unsupported = fmt::format("{}: {}", fn, st.to_string());
    else
      problem(fmt::format("{}: {}", fn, st.to_string()));
    return false;
  }
  void fetch(Guarded& g, const char* what) {
    const std::string m = g.fetch(what);
    if (!m.empty()) problem(m);
  }
};

// A whole-buffer input in storage dtype on the device.
struct Input {
  DType t;
  std::vector<uint8_t> host;
  DeviceBuffer dev;
  Input(Backend be, DType dt, const std::vector<float>& v)
      : t(dt), host(v.size() * dtype_size(dt)) {
    for (size_t i = 0; i < v.size(); ++i)
      store_float(host.data(), t, static_cast<int64_t>(i), v[i]);
    dev = DeviceBuffer(be, host.size());
    dev.upload(host.data());
  }
  TensorView view(std::initializer_list<int64_t> shape, DeviceKind dk) const {
    return TensorView::contiguous(dev.get(), t, shape, dk);
  }
  std::vector<double> values() const {
    std::vector<double> out(host.size() / dtype_size(t));
    for (size_t i = 0; i < out.size(); ++i)
      out[i] = load_float(host.data(), t, static_cast<int64_t>(i));
    return out;
  }
};

struct IntInput {
  DeviceBuffer dev;
  IntInput(Backend be, const std::vector<int>& v) : dev(be, v.size() * 4) {
    std::vector<int32_t> h(v.begin(), v.end());
    if (!h.empty()) dev.upload(h.data());
  }
  TensorView view(std::initializer_list<int64_t> shape, DeviceKind dk) const {
    return TensorView::contiguous(dev.get(), DType::i32, shape, dk);
  }
};

uint64_t dropout_seed_of(uint64_t seed, const std::string& name) {
  return fnv1a(name, seed ^ 0xd509d509ull);
}

std::vector<float> alibi_slopes(const Case& c, uint64_t seed) {
  if (c.alibi == AlibiMode::none) return {};
  const int64_t n = c.alibi == AlibiMode::per_head ? c.nheads : int64_t{c.batch} * c.nheads;
  std::vector<float> s = random_normal(seed, c.name, "alibi", static_cast<size_t>(n));
  for (float& x : s) x = 0.05f + 0.2f * std::fabs(x);
  return s;
}

CaseResult run_varlen_case(const Case& c, const VerifyOptions& o) {
  CaseResult r;
  Outcomes oc{r, c, std::chrono::steady_clock::now()};
  const Backend be = o.backend;
  const DeviceKind dk = runtime::device_kind(be);
  const DType t = c.dtype;
  const int64_t B = c.batch, H = c.nheads, HK = c.nheads_k, D = c.head_dim;
  std::vector<int> cuq = {0}, cuk = {0};
  for (const auto& s : c.varlen) {
    cuq.push_back(cuq.back() + s.first);
    cuk.push_back(cuk.back() + s.second);
  }
  const int64_t TQ = cuq.back(), TK = cuk.back();
  RunOptions ro;
  ro.backend = be;
  ro.num_threads = o.num_threads;
  ro.config_override = o.config_override;
  ro.dropout_seed = dropout_seed_of(o.seed, c.name);
  ro.dropout_offset = 1;
  auto gen = [&](const char* tag, int64_t n) {
    std::vector<float> v = random_normal(o.seed, c.name, tag, static_cast<size_t>(n));
    for (float& x : v) {
      x = round_to(t, x);
      if (x == 0.f) x = 0.5f;
    }
    return v;
  };
  const std::vector<float> q = gen("q", TQ * H * D), k = gen("k", TK * HK * D),
                           v = gen("v", TK * HK * D);
  const Input qi(be, t, q), ki(be, t, k), vi(be, t, v);
  const IntInput cuqi(be, cuq), cuki(be, cuk);
  const TensorView qv = qi.view({TQ, H, D}, dk), kv = ki.view({TK, HK, D}, dk),
                   vv = vi.view({TK, HK, D}, dk), cuqv = cuqi.view({B + 1}, dk),
                   cukv = cuki.view({B + 1}, dk);
  const std::vector<float> slopes = alibi_slopes(c, o.seed);
  DeviceBuffer slopes_dev;
  std::optional<TensorView> alibi;
  if (!slopes.empty()) {
    slopes_dev = DeviceBuffer(be, slopes.size() * 4);
    slopes_dev.upload(slopes.data());
    alibi = c.alibi == AlibiMode::per_head
                ? TensorView::contiguous(slopes_dev.get(), DType::f32, {H}, dk)
                : TensorView::contiguous(slopes_dev.get(), DType::f32, {B, H}, dk);
  }
  ref::VarlenProblem p;
  p.cu_seqlens_q = cuq;
  p.cu_seqlens_k = cuk;
  p.total_q = static_cast<int>(TQ);
  p.total_k = static_cast<int>(TK);
  p.max_seqlen_q = c.seqlen_q;
  p.max_seqlen_k = c.seqlen_k;
  set_ref_options(c, slopes, &p);
  const auto pd = static_cast<float>(c.dropout);
  set_ref_dropout(pd, ro, &p);
  const std::vector<double> qd = rounded(q, t), kd = rounded(k, t), vd = rounded(v, t);
  const bool cap = c.softcap > 0;
  const auto scale = static_cast<float>(c.scale), softcap = static_cast<float>(c.softcap);

  // Every query row belongs to a sequence, so every element of out/lse must be written.
  Guarded out(be, t, {TQ, H, D}), lse(be, DType::f32, {H, TQ});
  const Status fst =
      mha_varlen_fwd(qv, kv, vv, out.view(dk), lse.view(dk), cuqv, cukv, std::nullopt, std::nullopt,
                     std::nullopt, alibi, c.seqlen_q, c.seqlen_k, pd, scale, false, c.causal,
                     c.window_left, c.window_right, softcap, false, c.num_splits,
                     forward_options(ro, c));
  if (!oc.status(fst, "mha_varlen_fwd")) return oc.finish();
  throw_if_error(runtime::synchronize(be));
  oc.fetch(out, "out");
  oc.fetch(lse, "lse");
  {
    const ref::FwdResult ex = ref::varlen_forward(p, qd, kd, vd);
    const ref::FwdResult nv = ref::varlen_forward_naive(p, qd, kd, vd, t);
    r.checks.push_back({"out", ref::compare(ex.out, out.values(), nv.out, t, cap)});
    r.checks.push_back({"lse", ref::compare(ex.lse, lse.values(), nv.lse, t, cap)});
  }
  if (!c.bwd) return oc.finish();
  const std::vector<float> dout = gen("dout", TQ * H * D);
  const Input doi(be, t, dout);
  auto run_bwd = [&](Guarded& dq, Guarded& dkk, Guarded& dv) {
    const Status st = mha_varlen_bwd(
        doi.view({TQ, H, D}, dk), qv, kv, vv, out.view(dk), lse.view(dk), dq.view(dk), dkk.view(dk),
        dv.view(dk), cuqv, cukv, alibi, c.seqlen_q, c.seqlen_k, pd, scale, false, c.causal,
        c.window_left, c.window_right, softcap, c.deterministic, std::nullopt, ro);
    if (!oc.status(st, "mha_varlen_bwd")) return false;
    throw_if_error(runtime::synchronize(be));
    oc.fetch(dq, "dq");
    oc.fetch(dkk, "dk");
    oc.fetch(dv, "dv");
    return true;
  };
  Guarded dq(be, t, {TQ, H, D}), dkg(be, t, {TK, HK, D}), dvg(be, t, {TK, HK, D});
  if (!run_bwd(dq, dkg, dvg)) return oc.finish();
  {
    const std::vector<double> dod = rounded(dout, t);
    const ref::BwdResult ex = ref::varlen_backward(p, qd, kd, vd, dod);
    const ref::BwdResult nv = ref::varlen_backward_naive(p, qd, kd, vd, dod, t);
    r.checks.push_back({"dq", ref::compare(ex.dq, dq.values(), nv.dq, t, cap)});
    r.checks.push_back({"dk", ref::compare(ex.dk, dkg.values(), nv.dk, t, cap)});
    r.checks.push_back({"dv", ref::compare(ex.dv, dvg.values(), nv.dv, t, cap)});
  }
  if (c.deterministic) {
    Guarded dq2(be, t, {TQ, H, D}), dk2(be, t, {TK, HK, D}), dv2(be, t, {TK, HK, D});
    if (run_bwd(dq2, dk2, dv2) &&
        (!dq.same_interior(dq2) || !dkg.same_interior(dk2) || !dvg.same_interior(dv2)))
      oc.problem("deterministic: a second backward gave different bits");
  }
  return oc.finish();
}

CaseResult run_kvcache_case(const Case& c, const VerifyOptions& o) {
  CaseResult r;
  Outcomes oc{r, c, std::chrono::steady_clock::now()};
  const Backend be = o.backend;
  const DeviceKind dk = runtime::device_kind(be);
  const DType t = c.dtype;
  const int64_t B = c.batch, SQ = c.seqlen_q, H = c.nheads, HK = c.nheads_k, D = c.head_dim;
  const int64_t NEW = c.new_keys;
  RunOptions ro;
  ro.backend = be;
  ro.num_threads = o.num_threads;
  ro.config_override = o.config_override;
  auto gen = [&](const char* tag, int64_t n) {
    std::vector<float> v = random_normal(o.seed, c.name, tag, static_cast<size_t>(n));
    for (float& x : v) {
      x = round_to(t, x);
      if (x == 0.f) x = 0.5f;
    }
    return v;
  };
  ref::KvcacheProblem p;
  p.batch = c.batch;
  p.seqlen_q = c.seqlen_q;
  p.nheads = c.nheads;
  p.nheads_k = c.nheads_k;
  p.head_dim = c.head_dim;
  p.seqlen_new = c.new_keys;
  for (int b = 0; b < c.batch; ++b) p.cache_seqlens.push_back(std::max(0, c.cache_len - 3 * b));
  const int need = c.cache_len + c.new_keys;  // the longest sequence after the append
  int64_t rows = 0;                           // rows of the flattened cache
  if (c.page_size > 0) {
    p.page_block_size = c.page_size;
    p.max_blocks_per_seq = std::max(1, (need + c.page_size - 1) / c.page_size);
    p.num_blocks = c.batch * p.max_blocks_per_seq + 1;  // one block nobody uses
    // Blocks handed out in a shuffled order; entries past a sequence's used pages are -1.
    std::vector<int> perm(static_cast<size_t>(p.num_blocks));
    for (size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<int>(i);
    uint64_t s = fnv1a(c.name, o.seed);
    for (size_t i = perm.size(); i > 1; --i) std::swap(perm[i - 1], perm[splitmix(s) % i]);
    p.block_table.assign(static_cast<size_t>(c.batch * p.max_blocks_per_seq), -1);
    size_t next = 0;
    for (int b = 0; b < c.batch; ++b) {
      const int used = (p.cache_seqlens[b] + c.new_keys + c.page_size - 1) / c.page_size;
      for (int j = 0; j < used; ++j) p.block_table[b * p.max_blocks_per_seq + j] = perm[next++];
    }
    rows = int64_t{p.num_blocks} * c.page_size;
  } else {
    p.batch_cache = c.batch;
    p.seqlen_cache = std::max(1, need);
    rows = int64_t{c.batch} * p.seqlen_cache;
  }
  const int capacity = p.capacity();
  const std::vector<float> q = gen("q", B * SQ * H * D), kc = gen("kcache", rows * HK * D),
                           vc = gen("vcache", rows * HK * D), kn = gen("knew", B * NEW * HK * D),
                           vn = gen("vnew", B * NEW * HK * D);
  std::vector<float> cos, sin;
  if (c.rotary) {
    const int half = c.rotary / 2;
    for (int pos = 0; pos < capacity; ++pos)
      for (int j = 0; j < half; ++j) {
        const double th = pos * std::pow(10000.0, -2.0 * j / c.rotary);
        cos.push_back(round_to(t, static_cast<float>(std::cos(th))));
        sin.push_back(round_to(t, static_cast<float>(std::sin(th))));
      }
    p.rotary_cos.assign(cos.begin(), cos.end());
    p.rotary_sin.assign(sin.begin(), sin.end());
    p.rotary_dim = c.rotary;
    p.rotary_interleaved = c.rotary_interleaved;
  }
  p.softmax_scale = c.scale > 0 ? static_cast<double>(static_cast<float>(c.scale)) : 0.0;
  p.causal = c.causal;
  p.window_left = c.window_left;
  p.window_right = c.window_right;
  p.softcap = static_cast<double>(static_cast<float>(c.softcap));
  const std::vector<float> slopes = alibi_slopes(c, o.seed);
  p.alibi.assign(slopes.begin(), slopes.end());

  const Input qi(be, t, q), kni(be, t, kn), vni(be, t, vn);
  Input kci(be, t, kc), vci(be, t, vc);
  const int64_t c0 = c.page_size > 0 ? p.num_blocks : B;
  const int64_t c1 = c.page_size > 0 ? c.page_size : p.seqlen_cache;
  std::optional<TensorView> knv, vnv, seqv, tabv, cosv, sinv, alibi;
  const IntInput seqi(be, p.cache_seqlens), tabi(be, p.block_table);
  seqv = seqi.view({B}, dk);
  if (NEW > 0) {
    knv = kni.view({B, NEW, HK, D}, dk);
    vnv = vni.view({B, NEW, HK, D}, dk);
  }
  if (c.page_size > 0) tabv = tabi.view({B, p.max_blocks_per_seq}, dk);
  std::optional<Input> cosi, sini;
  if (c.rotary) {
    cosi.emplace(be, t, cos);
    sini.emplace(be, t, sin);
    cosv = cosi->view({capacity, c.rotary / 2}, dk);
    sinv = sini->view({capacity, c.rotary / 2}, dk);
  }
  DeviceBuffer slopes_dev;
  if (!slopes.empty()) {
    slopes_dev = DeviceBuffer(be, slopes.size() * 4);
    slopes_dev.upload(slopes.data());
    alibi = c.alibi == AlibiMode::per_head
                ? TensorView::contiguous(slopes_dev.get(), DType::f32, {H}, dk)
                : TensorView::contiguous(slopes_dev.get(), DType::f32, {B, H}, dk);
  }
  Guarded out(be, t, {B, SQ, H, D}), lse(be, DType::f32, {B, H, SQ});
  const Status st = mha_fwd_kvcache(
      qi.view({B, SQ, H, D}, dk), kci.view({c0, c1, HK, D}, dk), vci.view({c0, c1, HK, D}, dk), knv,
      vnv, seqv, cosv, sinv, std::nullopt, std::nullopt, tabv, alibi, out.view(dk), lse.view(dk),
      static_cast<float>(c.scale), c.causal, c.window_left, c.window_right,
      static_cast<float>(c.softcap), c.rotary_interleaved, c.num_splits, ro);
  if (!oc.status(st, "mha_fwd_kvcache")) return oc.finish();
  throw_if_error(runtime::synchronize(be));
  oc.fetch(out, "out");
  oc.fetch(lse, "lse");
  kci.dev.download(kci.host.data());
  vci.dev.download(vci.host.data());
  const std::vector<double> qd = rounded(q, t), kcd = rounded(kc, t), vcd = rounded(vc, t),
                            knd = rounded(kn, t), vnd = rounded(vn, t);
  const ref::KvcacheResult ex = ref::kvcache_forward(p, qd, kcd, vcd, knd, vnd);
  const ref::KvcacheResult nv = ref::kvcache_forward_naive(p, qd, kcd, vcd, knd, vnd, t);
  const bool cap = c.softcap > 0;
  r.checks.push_back({"out", ref::compare(ex.fwd.out, out.values(), nv.fwd.out, t, cap)});
  r.checks.push_back({"lse", ref::compare(ex.fwd.lse, lse.values(), nv.fwd.lse, t, cap)});
  if (NEW > 0) {
    r.checks.push_back({"k_cache", ref::compare(ex.k_cache, kci.values(), nv.k_cache, t, cap)});
    r.checks.push_back({"v_cache", ref::compare(ex.v_cache, vci.values(), nv.v_cache, t, cap)});
  }
  return oc.finish();
}

}  // namespace

CaseResult run_case(const Case& c, const VerifyOptions& o) {
  if (!c.varlen.empty()) return run_varlen_case(c, o);
  if (c.kvcache) return run_kvcache_case(c, o);
  const auto t0 = std::chrono::steady_clock::now();
  CaseResult r;
  const Backend be = o.backend;
  const DeviceKind dk = runtime::device_kind(be);
  const int64_t B = c.batch, SQ = c.seqlen_q, SK = c.seqlen_k, H = c.nheads, HK = c.nheads_k,
                D = c.head_dim;
  const DType t = c.dtype;
  RunOptions ro;
  ro.backend = be;
  ro.num_threads = o.num_threads;
  ro.config_override = o.config_override;
  ro.dropout_seed = dropout_seed_of(o.seed, c.name);
  ro.dropout_offset = 1;
  const auto p_drop = static_cast<float>(c.dropout);

  // ---- inputs: random, rounded to the storage dtype (the reference sees the rounded values) ---
  auto gen = [&](const char* tag, int64_t n) {
    std::vector<float> v = random_normal(o.seed, c.name, tag, static_cast<size_t>(n));
    for (float& x : v) {
      x = round_to(t, x);
      if (x == 0.f) x = 0.5f;
    }
    return v;
  };
  const std::vector<float> q = gen("q", B * SQ * H * D);
  const std::vector<float> k = gen("k", B * SK * HK * D);
  const std::vector<float> v = gen("v", B * SK * HK * D);

  // ---- layouts ------------------------------------------------------------------------------
  std::vector<Storage> store;
  store.reserve(3);
  TensorView qv, kv, vv;
  if (c.layout == Layout::qkvpacked) {  // one (b, s, 3, h, d) buffer; q, k, v are views into it
    store.emplace_back(t, B * SQ * 3 * H * D);
    const std::array<int64_t, 3> st = {SQ * 3 * H * D, 3 * H * D, D};
    const Placed pq{0, st}, pk{H * D, st}, pv{2 * H * D, st};
    store[0].place(pq, q, B, SQ, H, D);
    store[0].place(pk, k, B, SK, HK, D);
    store[0].place(pv, v, B, SK, HK, D);
    store[0].upload(be);
    qv = store[0].view(pq, B, SQ, H, D, dk);
    kv = store[0].view(pk, B, SK, HK, D, dk);
    vv = store[0].view(pv, B, SK, HK, D, dk);
  } else {
    store.emplace_back(t, B * SQ * H * D);
    const Placed pq = contiguous_place(SQ, H, D);
    store[0].place(pq, q, B, SQ, H, D);
    store[0].upload(be);
    qv = store[0].view(pq, B, SQ, H, D, dk);
    if (c.layout == Layout::kv_in_cache) {
      // k and v are windows into bigger caches (b, SK + 11, HK + 1, D + 8), starting at row 5:
      // every stride differs from the contiguous one and the data does not start at the buffer.
      // The rest of the cache holds large values, so reading outside the view shows in the error.
      const int64_t cap = SK + 11, hp = HK + 1, dp = D + 8;
      const Placed p{5 * hp * dp, {cap * hp * dp, hp * dp, dp}};
      for (int which = 0; which < 2; ++which) {
        store.emplace_back(t, B * cap * hp * dp);
        std::vector<float> junk = random_normal(o.seed, c.name, which ? "vcache" : "kcache",
                                                static_cast<size_t>(B * cap * hp * dp));
        for (float& x : junk) x *= 30.f;
        store.back().fill(junk);
        store.back().place(p, which ? v : k, B, SK, HK, D);
        store.back().upload(be);
        (which ? vv : kv) = store.back().view(p, B, SK, HK, D, dk);
      }
    } else {
      for (int which = 0; which < 2; ++which) {
        store.emplace_back(t, B * SK * HK * D);
        const Placed p = contiguous_place(SK, HK, D);
        store.back().place(p, which ? v : k, B, SK, HK, D);
        store.back().upload(be);
        (which ? vv : kv) = store.back().view(p, B, SK, HK, D, dk);
      }
    }
  }

  // ---- ALiBi slopes: positive, (h) or (b, h) ---------------------------------------------------
  std::vector<float> slopes;
  DeviceBuffer slopes_dev;
  std::optional<TensorView> alibi;
  if (c.alibi != AlibiMode::none) {
    const int64_t n = c.alibi == AlibiMode::per_head ? H : B * H;
    slopes = random_normal(o.seed, c.name, "alibi", static_cast<size_t>(n));
    for (float& s : slopes) s = 0.05f + 0.2f * std::fabs(s);
    slopes_dev = DeviceBuffer(be, slopes.size() * 4);
    slopes_dev.upload(slopes.data());
    alibi = c.alibi == AlibiMode::per_head
                ? TensorView::contiguous(slopes_dev.get(), DType::f32, {H}, dk)
                : TensorView::contiguous(slopes_dev.get(), DType::f32, {B, H}, dk);
  }

  // ---- reference problem --------------------------------------------------------------------
  ref::Problem p;
  p.batch = c.batch;
  p.seqlen_q = c.seqlen_q;
  p.seqlen_k = c.seqlen_k;
  set_ref_options(c, slopes, &p);
  set_ref_dropout(p_drop, ro, &p);
  const std::vector<double> qd = rounded(q, t), kd = rounded(k, t), vd = rounded(v, t);

  Outcomes oc{r, c, t0};

  // ---- forward ------------------------------------------------------------------------------
  Guarded out(be, t, {B, SQ, H, D});
  Guarded lse(be, DType::f32, {B, H, SQ});
  const Status fst =
      mha_fwd(qv, kv, vv, out.view(dk), lse.view(dk), alibi, p_drop, static_cast<float>(c.scale),
              c.causal, c.window_left, c.window_right, static_cast<float>(c.softcap), false,
              forward_options(ro, c));
  if (!oc.status(fst, "mha_fwd")) return oc.finish();
  throw_if_error(runtime::synchronize(be));
  for (auto* g : {&out, &lse}) {
    oc.fetch(*g, g == &out ? "out" : "lse");
  }
  {
    const ref::FwdResult ex = ref::forward(p, qd, kd, vd);
    const ref::FwdResult nv = ref::forward_naive(p, qd, kd, vd, t);
    const bool cap = c.softcap > 0;
    r.checks.push_back({"out", ref::compare(ex.out, out.values(), nv.out, t, cap)});
    r.checks.push_back({"lse", ref::compare(ex.lse, lse.values(), nv.lse, t, cap)});
  }
  if (p_drop > 0) {  // return_softmax: S_dmask against the reference's signed probabilities
    const int64_t MR = (SQ + 127) / 128 * 128, MC = (SK + 127) / 128 * 128;
    Guarded sdm(be, t, {B, H, MR, MC});
    Guarded out2(be, t, {B, SQ, H, D}), lse2(be, DType::f32, {B, H, SQ});
    const Status st = mha_fwd(qv, kv, vv, out2.view(dk), lse2.view(dk), alibi, p_drop,
                              static_cast<float>(c.scale), c.causal, c.window_left,
                              c.window_right, static_cast<float>(c.softcap), true, sdm.view(dk),
                              forward_options(ro, c));
    if (!oc.status(st, "mha_fwd(return_softmax)")) return oc.finish();
    throw_if_error(runtime::synchronize(be));
    oc.fetch(sdm, "s_dmask");
    ref::Problem pp = p;
    pp.want_probs = true;
    const ref::FwdResult ex = ref::forward(pp, qd, kd, vd);
    r.checks.push_back({"s_dmask", check_dmask(ex.probs, sdm.values(), B, H, SQ, SK, MR, MC, t)});
  }
  if (!c.bwd) return oc.finish();

  // ---- backward (from the kernel's own out and lse, as a training step would) ----------------
  const std::vector<float> dout = gen("dout", B * SQ * H * D);
  Storage dout_s(t, B * SQ * H * D);
  const Placed pd = contiguous_place(SQ, H, D);
  dout_s.place(pd, dout, B, SQ, H, D);
  dout_s.upload(be);
  const TensorView doutv = dout_s.view(pd, B, SQ, H, D, dk);

  auto run_bwd = [&](Guarded& dq, Guarded& dkk, Guarded& dv) {
    const Status st =
        mha_bwd(doutv, qv, kv, vv, out.view(dk), lse.view(dk), dq.view(dk), dkk.view(dk),
                dv.view(dk), alibi, p_drop, static_cast<float>(c.scale), c.causal, c.window_left,
                c.window_right, static_cast<float>(c.softcap), c.deterministic, std::nullopt, ro);
    if (!oc.status(st, "mha_bwd")) return false;
    throw_if_error(runtime::synchronize(be));
    const char* names[] = {"dq", "dk", "dv"};
    Guarded* gs[] = {&dq, &dkk, &dv};
    for (int i = 0; i < 3; ++i) {
      oc.fetch(*gs[i], names[i]);
    }
    return true;
  };
  Guarded dq(be, t, {B, SQ, H, D}), dkg(be, t, {B, SK, HK, D}), dvg(be, t, {B, SK, HK, D});
  if (!run_bwd(dq, dkg, dvg)) return oc.finish();
  {
    const std::vector<double> dod = rounded(dout, t);
    const ref::BwdResult ex = ref::backward(p, qd, kd, vd, dod);
    const ref::BwdResult nv = ref::backward_naive(p, qd, kd, vd, dod, t);
    const bool cap = c.softcap > 0;
    r.checks.push_back({"dq", ref::compare(ex.dq, dq.values(), nv.dq, t, cap)});
    r.checks.push_back({"dk", ref::compare(ex.dk, dkg.values(), nv.dk, t, cap)});
    r.checks.push_back({"dv", ref::compare(ex.dv, dvg.values(), nv.dv, t, cap)});
  }
  if (c.deterministic) {  // a second run must give bit-identical gradients
    Guarded dq2(be, t, {B, SQ, H, D}), dk2(be, t, {B, SK, HK, D}), dv2(be, t, {B, SK, HK, D});
    if (run_bwd(dq2, dk2, dv2)) {
      if (!dq.same_interior(dq2) || !dkg.same_interior(dk2) || !dvg.same_interior(dv2))
        oc.problem("deterministic: a second backward gave different bits");
    }
  }
  return oc.finish();
}

}  // namespace flashplus::cli
