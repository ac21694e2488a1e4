// The C ABI's argument validation (kernels/src/c_api.cpp over params.cpp): the input bytes pick
// an entry point, a small problem (batch, lengths, heads, head dim), the per-sequence index
// vectors and every scalar argument, then mutate a few tensors (drop one, change its shape,
// dtype, strides, device, alignment or index contents, NULL data). Each tensor is backed by a
// real heap buffer exactly as large as its declared shape and strides reach, so ASan reports any
// access the contract does not allow; only a NULL data pointer is "too small", and validation
// must refuse it. A call returns a known status with a message exactly when it fails.
#include <fuzzer/FuzzedDataProvider.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <string>
#include <vector>

#include "flashplus/flashplus_c.h"
#include "flashplus/numerics.h"
#include "flashplus/tensor.h"

using flashplus::DType;

namespace {

constexpr int64_t kMaxElements = int64_t{1} << 20;  // per tensor; larger layouts fall back to compact

DLDataType dl_of(DType t) {
  switch (t) {
    case DType::f32: return {kDLFloat, 32, 1};
    case DType::f16: return {kDLFloat, 16, 1};
    case DType::bf16: return {kDLBfloat, 16, 1};
    case DType::i32: return {kDLInt, 32, 1};
  }
  return {kDLFloat, 32, 1};
}

int64_t round128(int64_t x) { return (x + 127) / 128 * 128; }

struct Owned {
  DLTensor t{};
  int64_t shape[8]{};
  int64_t strides[8]{};
  void* mem = nullptr;
};

class Builder {
 public:
  explicit Builder(FuzzedDataProvider& f) : f_(f) {}
  Builder(const Builder&) = delete;
  Builder& operator=(const Builder&) = delete;
  ~Builder() {
    for (Owned& o : owned_) std::free(o.mem);
  }

  // A tensor of `dtype` and `shape` as the call expects it, possibly mutated; `ints` are the
  // contents of an index tensor (cycled over its elements). nullptr when the mutation drops it.
  const DLTensor* make(DType dtype, std::vector<int64_t> shape, const std::vector<int32_t>& ints = {}) {
    const uint8_t m = f_.ConsumeIntegral<uint8_t>();
    const int kind = m < 216 ? -1 : m % 12;
    DLDataType dt = dl_of(dtype);
    int ndim = static_cast<int>(shape.size());
    bool custom_strides = false, null_data = false, via_offset = f_.ConsumeBool();
    int misalign = 0;
    DLDevice dev{kDLCPU, 0};
    bool corrupt_ints = false;
    switch (kind) {
      case 0: return nullptr;
      case 1: null_data = true; break;
      case 2:
      case 3:
        if (!shape.empty()) {
          const size_t i = f_.ConsumeIntegralInRange<size_t>(0, shape.size() - 1);
          const int64_t choices[] = {shape[i] + 1, shape[i] - 1, 0, -1, 1, 129};
          shape[i] = choices[f_.ConsumeIntegralInRange(0, 5)];
        }
        break;
      case 4:
        if (f_.ConsumeBool() || shape.empty()) shape.push_back(1);
        else shape.pop_back();
        ndim = static_cast<int>(shape.size());
        break;
      case 5: {
        const DLDataType all[] = {{kDLFloat, 32, 1}, {kDLFloat, 16, 1}, {kDLBfloat, 16, 1},
                                  {kDLInt, 32, 1},   {kDLFloat, 64, 1}, {kDLFloat, 32, 2},
                                  {kDLUInt, 8, 1},   {kDLInt, 64, 1},   {kDLComplex, 64, 1},
                                  {static_cast<uint8_t>(200), 16, 1}};
        dt = all[f_.ConsumeIntegralInRange(0, 9)];
        break;
      }
      case 6:
      case 7: custom_strides = true; break;
      case 8: {
        const int32_t types[] = {kDLCUDAHost, kDLCUDA, kDLROCM, kDLROCMHost, kDLCUDAManaged, 99};
        dev.device_type = static_cast<DLDeviceType>(types[f_.ConsumeIntegralInRange(0, 5)]);
        dev.device_id = f_.ConsumeIntegralInRange(-1, 2);
        break;
      }
      case 9: misalign = f_.ConsumeIntegralInRange(1, 3); break;
      case 10: ndim = f_.ConsumeBool() ? 5 : -1; break;
      case 11: corrupt_ints = true; break;
      default: break;
    }
    owned_.emplace_back();
    Owned& o = owned_.back();
    const int stored = static_cast<int>(std::min<size_t>(shape.size(), 4));
    for (int i = 0; i < stored; ++i) o.shape[i] = shape[i];
    o.t.ndim = ndim;
    o.t.dtype = dt;
    o.t.device = dev;
    o.t.shape = o.shape;
    // The layout the buffer must back: the declared dims (none when ndim is out of range, which
    // validation refuses before looking at the shape).
    const int dims = ndim >= 0 && ndim <= 4 ? ndim : 0;
    bool empty = false, negative = false;
    for (int i = 0; i < dims; ++i) {
      empty = empty || o.shape[i] == 0;
      negative = negative || o.shape[i] < 0;
    }
    int64_t compact = 1;
    for (int i = dims - 1; i >= 0; --i) {
      o.strides[i] = compact;
      compact *= std::max<int64_t>(o.shape[i], 1);
    }
    if (custom_strides && dims > 0) {
      const int i = f_.ConsumeIntegralInRange(0, dims - 1);
      const int64_t choices[] = {0, -o.strides[i], o.strides[i] * 2 + 1, o.strides[i] + 3, 2};
      o.strides[i] = choices[f_.ConsumeIntegralInRange(0, 4)];
    }
    if (custom_strides || f_.ConsumeBool()) o.t.strides = o.strides;  // else NULL = compact
    int64_t lo = 0, hi = 0;  // element offsets the declared layout reaches
    for (int i = 0; i < dims && !empty && !negative; ++i) {
      const int64_t reach = (o.shape[i] - 1) * o.strides[i];
      (reach < 0 ? lo : hi) += reach;
    }
    if (hi - lo + 1 > kMaxElements) {  // cannot back it: declare the compact layout instead
      for (int i = dims - 1, c = 1; i >= 0; --i) o.strides[i] = c, c *= std::max<int64_t>(o.shape[i], 1);
      lo = 0;
      hi = compact - 1;
    }
    const size_t esize = std::max<size_t>(1, (dt.bits * std::max<uint16_t>(dt.lanes, 1) + 7) / 8);
    const bool none = empty || negative;
    const size_t bytes = none ? 0 : static_cast<size_t>(hi - lo + 1) * esize + misalign;
    o.mem = std::malloc(bytes ? bytes : 1);
    if (!o.mem) std::abort();
    char* base = static_cast<char*>(o.mem) + static_cast<size_t>(-lo) * esize + misalign;
    // Contents: random small values everywhere; an index tensor's values at its logical
    // positions (or random ones when corrupted).
    fill_random(o.mem, bytes, dt);
    if (dt.code == kDLInt && dt.bits == 32 && dt.lanes == 1 && !none && dims > 0) {
      std::vector<int32_t> vals = ints;
      if (vals.empty() || corrupt_ints) {
        vals.resize(std::max<size_t>(vals.size(), 1));
        const int32_t extremes[] = {-1, 0, 1, 7, 1000, std::numeric_limits<int32_t>::max(),
                                    std::numeric_limits<int32_t>::min()};
        const size_t n = f_.ConsumeIntegralInRange<size_t>(1, 3);
        for (size_t j = 0; j < n; ++j)
          vals[f_.ConsumeIntegralInRange<size_t>(0, vals.size() - 1)] =
              f_.ConsumeBool() ? extremes[f_.ConsumeIntegralInRange(0, 6)]
                               : f_.ConsumeIntegralInRange<int32_t>(-3, 40);
      }
      int64_t idx[4] = {0, 0, 0, 0};
      for (int64_t n = 0;; ++n) {
        int64_t off = 0;
        for (int i = 0; i < dims; ++i) off += idx[i] * o.strides[i];
        std::memcpy(base + off * 4, &vals[static_cast<size_t>(n) % vals.size()], 4);
        int i = dims - 1;
        while (i >= 0 && ++idx[i] == o.shape[i]) idx[i--] = 0;
        if (i < 0) break;
      }
    }
    if (null_data) {
      o.t.data = nullptr;
      o.t.byte_offset = 0;
    } else if (via_offset) {
      o.t.data = o.mem;
      o.t.byte_offset = static_cast<uint64_t>(base - static_cast<char*>(o.mem));
    } else {
      o.t.data = base;
    }
    return &o.t;
  }

 private:
  void fill_random(void* mem, size_t bytes, DLDataType dt) {
    const bool half = dt.bits == 16 && dt.lanes == 1 && (dt.code == kDLFloat || dt.code == kDLBfloat);
    const bool single = dt.bits == 32 && dt.lanes == 1 && dt.code == kDLFloat;
    const float special = f_.ConsumeIntegralInRange(0, 15) == 0
                              ? std::numeric_limits<float>::quiet_NaN()
                              : 0.5f;  // occasionally NaN somewhere in q/k/v
    uint32_t x = f_.ConsumeIntegral<uint32_t>() | 1;
    auto next = [&] {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      return static_cast<float>(x % 2001) / 1000.f - 1.f + 1e-3f;
    };
    if (single) {
      for (size_t i = 0; i + 4 <= bytes; i += 4) {
        float v = next();
        std::memcpy(static_cast<char*>(mem) + i, &v, 4);
      }
      if (bytes >= 4) std::memcpy(mem, &special, 4);
    } else if (half) {
      const DType t = dt.code == kDLBfloat ? DType::bf16 : DType::f16;
      for (size_t i = 0; i + 2 <= bytes; i += 2) {
        const uint16_t h = t == DType::bf16 ? flashplus::float_to_bf16_bits(next())
                                            : flashplus::float_to_half_bits(next());
        std::memcpy(static_cast<char*>(mem) + i, &h, 2);
      }
    } else {
      for (size_t i = 0; i < bytes; ++i) static_cast<unsigned char*>(mem)[i] = static_cast<unsigned char>(x >> (i % 24));
    }
  }

  FuzzedDataProvider& f_;
  std::deque<Owned> owned_;
};

float pick_float(FuzzedDataProvider& f, std::initializer_list<float> usual) {
  const uint8_t m = f.ConsumeIntegral<uint8_t>();
  if (m < 240) return usual.begin()[m % usual.size()];
  const float odd[] = {-1.f, std::numeric_limits<float>::quiet_NaN(),
                       std::numeric_limits<float>::infinity(), -0.f, 1e30f, 1.f, 0.999999f,
                       std::numeric_limits<float>::denorm_min()};
  return odd[m % 8];
}

int32_t pick_window(FuzzedDataProvider& f) {
  const uint8_t m = f.ConsumeIntegral<uint8_t>();
  if (m < 128) return -1;
  if (m < 248) return m % 9;
  const int32_t odd[] = {-2, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max(),
                         1 << 30, -1000, 100000, 3, 0};
  return odd[m % 8];
}

flashplus_run_options pick_opts(FuzzedDataProvider& f) {
  flashplus_run_options o{};
  const uint8_t b = f.ConsumeIntegral<uint8_t>();
  o.backend = b < 200 ? (b % 2 ? FLASHPLUS_BACKEND_CPU : FLASHPLUS_BACKEND_AUTO) : b % 6 - 1;
  const int32_t threads[] = {1, 1, 1, 2, 0, -1};
  o.num_threads = threads[f.ConsumeIntegralInRange(0, 5)];
  o.dropout_seed = f.ConsumeIntegral<uint64_t>();
  o.dropout_offset = f.ConsumeIntegral<uint64_t>();
  return o;
}

// The problem the call is about; the tensors are built from it (and then maybe mutated).
struct Problem {
  DType dtype = DType::f32;
  int64_t b = 1, sq = 1, sk = 1, h = 1, hk = 1, d = 8;
  std::vector<int32_t> lens_q, lens_k;  // varlen: one length per sequence
  std::vector<int32_t> cu_q, cu_k;
  int64_t total_q = 0, total_k = 0;
};

Problem pick_problem(FuzzedDataProvider& f) {
  Problem p;
  const DType types[] = {DType::f32, DType::f16, DType::bf16, DType::i32};
  p.dtype = types[f.ConsumeIntegralInRange(0, 15) == 0 ? 3 : f.ConsumeIntegralInRange(0, 2)];
  p.b = f.ConsumeIntegralInRange(1, 3);
  p.sq = f.ConsumeIntegralInRange(1, 19);
  p.sk = f.ConsumeIntegralInRange(1, 19);
  p.hk = f.ConsumeIntegralInRange(1, 3);
  p.h = p.hk * f.ConsumeIntegralInRange(1, 2);
  if (f.ConsumeIntegralInRange(0, 7) == 0) p.h = f.ConsumeIntegralInRange(1, 5);  // maybe not a multiple
  const int64_t dims[] = {8, 16, 32, 40, 64, 72, 96, 128, 256, 1, 3, 260};
  p.d = dims[f.ConsumeIntegralInRange(0, 11)];
  p.cu_q = {0};
  p.cu_k = {0};
  for (int64_t i = 0; i < p.b; ++i) {
    p.lens_q.push_back(f.ConsumeIntegralInRange<int32_t>(0, static_cast<int32_t>(p.sq)));
    p.lens_k.push_back(f.ConsumeIntegralInRange<int32_t>(0, static_cast<int32_t>(p.sk)));
    p.cu_q.push_back(p.cu_q.back() + p.lens_q.back());
    p.cu_k.push_back(p.cu_k.back() + p.lens_k.back());
  }
  p.total_q = p.cu_q.back();
  p.total_k = p.cu_k.back();
  return p;
}

const DLTensor* maybe(FuzzedDataProvider& f, const DLTensor* t) { return f.ConsumeBool() ? t : nullptr; }

std::vector<int64_t> alibi_shape(FuzzedDataProvider& f, const Problem& p) {
  if (f.ConsumeBool()) return {p.h};
  return {p.b, p.h};
}

flashplus_status call_fwd(FuzzedDataProvider& f, Builder& B, const Problem& p) {
  flashplus_fwd_args a{};
  a.struct_size = sizeof a;
  a.q = B.make(p.dtype, {p.b, p.sq, p.h, p.d});
  a.k = B.make(p.dtype, {p.b, p.sk, p.hk, p.d});
  a.v = B.make(p.dtype, {p.b, p.sk, p.hk, p.d});
  a.out = B.make(p.dtype, {p.b, p.sq, p.h, p.d});
  a.softmax_lse = B.make(DType::f32, {p.b, p.h, p.sq});
  if (f.ConsumeBool()) a.alibi_slopes = B.make(DType::f32, alibi_shape(f, p));
  a.p_dropout = pick_float(f, {0.f, 0.f, 0.1f, 0.5f});
  a.return_softmax = f.ConsumeIntegralInRange(0, 3) == 0;
  if (a.return_softmax || f.ConsumeIntegralInRange(0, 7) == 0)
    a.s_dmask = B.make(p.dtype, {p.b, p.h, round128(p.sq), round128(p.sk)});
  a.softmax_scale = pick_float(f, {0.f, 0.125f, 0.3f});
  a.is_causal = f.ConsumeBool();
  a.window_size_left = pick_window(f);
  a.window_size_right = pick_window(f);
  a.softcap = pick_float(f, {0.f, 0.f, 5.f});
  a.opts = pick_opts(f);
  return flashplus_mha_fwd(&a);
}

flashplus_status call_bwd(FuzzedDataProvider& f, Builder& B, const Problem& p) {
  flashplus_bwd_args a{};
  a.struct_size = sizeof a;
  a.dout = B.make(p.dtype, {p.b, p.sq, p.h, p.d});
  a.q = B.make(p.dtype, {p.b, p.sq, p.h, p.d});
  a.k = B.make(p.dtype, {p.b, p.sk, p.hk, p.d});
  a.v = B.make(p.dtype, {p.b, p.sk, p.hk, p.d});
  a.out = B.make(p.dtype, {p.b, p.sq, p.h, p.d});
  a.softmax_lse = B.make(DType::f32, {p.b, p.h, p.sq});
  a.dq = B.make(p.dtype, {p.b, p.sq, p.h, p.d});
  a.dk = B.make(p.dtype, {p.b, p.sk, p.hk, p.d});
  a.dv = B.make(p.dtype, {p.b, p.sk, p.hk, p.d});
  if (f.ConsumeBool()) a.alibi_slopes = B.make(DType::f32, alibi_shape(f, p));
  if (f.ConsumeBool()) a.softmax_d = B.make(DType::f32, {p.b, p.h, p.sq});
  a.p_dropout = pick_float(f, {0.f, 0.f, 0.1f});
  a.softmax_scale = pick_float(f, {0.f, 0.125f});
  a.is_causal = f.ConsumeBool();
  a.window_size_left = pick_window(f);
  a.window_size_right = pick_window(f);
  a.softcap = pick_float(f, {0.f, 0.f, 5.f});
  a.deterministic = f.ConsumeBool();
  a.opts = pick_opts(f);
  return flashplus_mha_bwd(&a);
}

// Paged K/V: pages of `page` rows, enough for the longest sequence of every batch entry.
struct Paged {
  int64_t page = 0, blocks_per_seq = 0, num_blocks = 0;
  std::vector<int32_t> table;
};
Paged pick_paged(FuzzedDataProvider& f, int64_t b, int64_t longest) {
  Paged pg;
  const int64_t pages[] = {16, 32, 256, 1, 0};
  pg.page = pages[f.ConsumeIntegralInRange(0, f.ConsumeIntegralInRange(0, 15) == 0 ? 4 : 2)];
  pg.blocks_per_seq = pg.page > 0 ? std::max<int64_t>(1, (longest + pg.page - 1) / pg.page) : 1;
  pg.num_blocks = b * pg.blocks_per_seq + f.ConsumeIntegralInRange(0, 2);
  for (int64_t i = 0; i < b * pg.blocks_per_seq; ++i)
    pg.table.push_back(f.ConsumeIntegralInRange<int32_t>(0, static_cast<int32_t>(pg.num_blocks - 1)));
  return pg;
}

flashplus_status call_varlen_fwd(FuzzedDataProvider& f, Builder& B, const Problem& p) {
  flashplus_varlen_fwd_args a{};
  a.struct_size = sizeof a;
  const bool paged = f.ConsumeIntegralInRange(0, 3) == 0;
  a.q = B.make(p.dtype, {p.total_q, p.h, p.d});
  a.out = B.make(p.dtype, {p.total_q, p.h, p.d});
  a.softmax_lse = B.make(DType::f32, {p.h, p.total_q});
  a.cu_seqlens_q = B.make(DType::i32, {p.b + 1}, p.cu_q);
  if (paged) {
    const Paged pg = pick_paged(f, p.b, p.sk);
    a.k = B.make(p.dtype, {pg.num_blocks, pg.page, p.hk, p.d});
    a.v = B.make(p.dtype, {pg.num_blocks, pg.page, p.hk, p.d});
    a.block_table = B.make(DType::i32, {p.b, pg.blocks_per_seq}, pg.table);
    // Paged keys: cu_seqlens_k still gives each sequence's length; seqused_k as well.
    a.cu_seqlens_k = B.make(DType::i32, {p.b + 1}, p.cu_k);
    a.seqused_k = maybe(f, B.make(DType::i32, {p.b}, p.lens_k));
  } else {
    a.k = B.make(p.dtype, {p.total_k, p.hk, p.d});
    a.v = B.make(p.dtype, {p.total_k, p.hk, p.d});
    a.cu_seqlens_k = B.make(DType::i32, {p.b + 1}, p.cu_k);
    if (f.ConsumeBool()) {
      std::vector<int32_t> used;
      for (int32_t l : p.lens_k) used.push_back(l / 2);
      a.seqused_k = B.make(DType::i32, {p.b}, used);
    }
  }
  if (f.ConsumeIntegralInRange(0, 3) == 0) a.leftpad_k = B.make(DType::i32, {p.b}, {0, 1});
  if (f.ConsumeBool()) a.alibi_slopes = B.make(DType::f32, alibi_shape(f, p));
  int32_t mq = 0, mk = 0;
  for (int32_t l : p.lens_q) mq = std::max(mq, l);
  for (int32_t l : p.lens_k) mk = std::max(mk, l);
  a.max_seqlen_q = f.ConsumeIntegralInRange(0, 7) == 0 ? f.ConsumeIntegralInRange(-1, 40) : mq;
  a.max_seqlen_k = f.ConsumeIntegralInRange(0, 7) == 0 ? f.ConsumeIntegralInRange(-1, 40) : mk;
  a.p_dropout = pick_float(f, {0.f, 0.f, 0.2f});
  a.return_softmax = f.ConsumeIntegralInRange(0, 3) == 0;
  if (a.return_softmax || f.ConsumeIntegralInRange(0, 7) == 0)
    a.s_dmask = B.make(p.dtype, {p.b, p.h, round128(a.max_seqlen_q), round128(a.max_seqlen_k)});
  a.softmax_scale = pick_float(f, {0.f, 0.2f});
  a.zero_tensors = f.ConsumeBool();
  a.is_causal = f.ConsumeBool();
  a.window_size_left = pick_window(f);
  a.window_size_right = pick_window(f);
  a.softcap = pick_float(f, {0.f, 0.f, 3.f});
  a.num_splits = f.ConsumeIntegralInRange(0, 7) == 0 ? f.ConsumeIntegralInRange(-2, 200)
                                                     : f.ConsumeIntegralInRange(0, 3);
  a.opts = pick_opts(f);
  return flashplus_mha_varlen_fwd(&a);
}

flashplus_status call_varlen_bwd(FuzzedDataProvider& f, Builder& B, const Problem& p) {
  flashplus_varlen_bwd_args a{};
  a.struct_size = sizeof a;
  a.dout = B.make(p.dtype, {p.total_q, p.h, p.d});
  a.q = B.make(p.dtype, {p.total_q, p.h, p.d});
  a.k = B.make(p.dtype, {p.total_k, p.hk, p.d});
  a.v = B.make(p.dtype, {p.total_k, p.hk, p.d});
  a.out = B.make(p.dtype, {p.total_q, p.h, p.d});
  a.softmax_lse = B.make(DType::f32, {p.h, p.total_q});
  a.dq = B.make(p.dtype, {p.total_q, p.h, p.d});
  a.dk = B.make(p.dtype, {p.total_k, p.hk, p.d});
  a.dv = B.make(p.dtype, {p.total_k, p.hk, p.d});
  a.cu_seqlens_q = B.make(DType::i32, {p.b + 1}, p.cu_q);
  a.cu_seqlens_k = B.make(DType::i32, {p.b + 1}, p.cu_k);
  if (f.ConsumeBool()) a.alibi_slopes = B.make(DType::f32, alibi_shape(f, p));
  if (f.ConsumeBool()) a.softmax_d = B.make(DType::f32, {p.h, p.total_q});
  int32_t mq = 0, mk = 0;
  for (int32_t l : p.lens_q) mq = std::max(mq, l);
  for (int32_t l : p.lens_k) mk = std::max(mk, l);
  a.max_seqlen_q = f.ConsumeIntegralInRange(0, 7) == 0 ? f.ConsumeIntegralInRange(-1, 40) : mq;
  a.max_seqlen_k = f.ConsumeIntegralInRange(0, 7) == 0 ? f.ConsumeIntegralInRange(-1, 40) : mk;
  a.p_dropout = pick_float(f, {0.f, 0.f, 0.2f});
  a.softmax_scale = pick_float(f, {0.f, 0.2f});
  a.zero_tensors = f.ConsumeBool();
  a.is_causal = f.ConsumeBool();
  a.window_size_left = pick_window(f);
  a.window_size_right = pick_window(f);
  a.softcap = pick_float(f, {0.f, 0.f, 3.f});
  a.deterministic = f.ConsumeBool();
  a.opts = pick_opts(f);
  return flashplus_mha_varlen_bwd(&a);
}

flashplus_status call_kvcache(FuzzedDataProvider& f, Builder& B, const Problem& p) {
  flashplus_kvcache_args a{};
  a.struct_size = sizeof a;
  const int64_t s_new = f.ConsumeBool() ? f.ConsumeIntegralInRange(1, 4) : 0;
  const int64_t capacity = p.sk + s_new;  // rows of cache each sequence may use
  std::vector<int32_t> seqlens;
  for (int64_t i = 0; i < p.b; ++i) seqlens.push_back(f.ConsumeIntegralInRange<int32_t>(0, static_cast<int32_t>(p.sk)));
  a.q = B.make(p.dtype, {p.b, p.sq, p.h, p.d});
  a.out = B.make(p.dtype, {p.b, p.sq, p.h, p.d});
  a.softmax_lse = B.make(DType::f32, {p.b, p.h, p.sq});
  const bool paged = f.ConsumeIntegralInRange(0, 2) == 0;
  int64_t b_cache = p.b;
  if (paged) {
    const Paged pg = pick_paged(f, p.b, capacity);
    a.kcache = B.make(p.dtype, {pg.num_blocks, pg.page, p.hk, p.d});
    a.vcache = B.make(p.dtype, {pg.num_blocks, pg.page, p.hk, p.d});
    a.block_table = B.make(DType::i32, {p.b, pg.blocks_per_seq}, pg.table);
  } else {
    b_cache = p.b + f.ConsumeIntegralInRange(0, 2);
    a.kcache = B.make(p.dtype, {b_cache, capacity, p.hk, p.d});
    a.vcache = B.make(p.dtype, {b_cache, capacity, p.hk, p.d});
    if (f.ConsumeBool()) {
      std::vector<int32_t> idx;
      for (int64_t i = 0; i < p.b; ++i) idx.push_back(static_cast<int32_t>(b_cache - 1 - i));
      a.cache_batch_idx = B.make(DType::i32, {p.b}, idx);
    }
  }
  if (s_new > 0 || f.ConsumeIntegralInRange(0, 7) == 0) {
    a.k_new = B.make(p.dtype, {p.b, std::max<int64_t>(s_new, 1), p.hk, p.d});
    a.v_new = B.make(p.dtype, {p.b, std::max<int64_t>(s_new, 1), p.hk, p.d});
  }
  if (f.ConsumeIntegralInRange(0, 7) != 0) a.cache_seqlens = B.make(DType::i32, {p.b}, seqlens);
  if (a.k_new && f.ConsumeBool()) {
    const int64_t rd = std::min<int64_t>(p.d, 2 * f.ConsumeIntegralInRange(1, 8)) / 2 * 2;
    a.rotary_cos = B.make(p.dtype, {capacity, std::max<int64_t>(rd / 2, 1)});
    a.rotary_sin = B.make(p.dtype, {capacity, std::max<int64_t>(rd / 2, 1)});
    a.is_rotary_interleaved = f.ConsumeBool();
  }
  if (!paged && f.ConsumeIntegralInRange(0, 3) == 0) {
    std::vector<int32_t> pad;
    for (int32_t s : seqlens) pad.push_back(s / 3);
    a.cache_leftpad = B.make(DType::i32, {p.b}, pad);
  }
  if (f.ConsumeBool()) a.alibi_slopes = B.make(DType::f32, alibi_shape(f, p));
  a.softmax_scale = pick_float(f, {0.f, 0.2f});
  a.is_causal = f.ConsumeBool();
  a.window_size_left = pick_window(f);
  a.window_size_right = pick_window(f);
  a.softcap = pick_float(f, {0.f, 0.f, 3.f});
  a.num_splits = f.ConsumeIntegralInRange(0, 7) == 0 ? f.ConsumeIntegralInRange(-2, 200)
                                                     : f.ConsumeIntegralInRange(0, 3);
  a.opts = pick_opts(f);
  return flashplus_mha_fwd_kvcache(&a);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider f(data, size);
  const int entry = f.ConsumeIntegralInRange(0, 4);
  const int header = f.ConsumeIntegralInRange(0, 31);  // 0: NULL args, 1: wrong struct_size
  flashplus_status st;
  if (header == 0) {
    switch (entry) {
      case 0: st = flashplus_mha_fwd(nullptr); break;
      case 1: st = flashplus_mha_bwd(nullptr); break;
      case 2: st = flashplus_mha_varlen_fwd(nullptr); break;
      case 3: st = flashplus_mha_varlen_bwd(nullptr); break;
      default: st = flashplus_mha_fwd_kvcache(nullptr); break;
    }
    if (st != FLASHPLUS_INVALID_ARGS) std::abort();
  } else if (header == 1) {
    // A struct from another version of the header: shorter or longer than ours. The library
    // must refuse it from struct_size alone, before reading any other field.
    struct {
      uint32_t struct_size;
    } tiny{f.ConsumeIntegral<uint32_t>()};
    if (tiny.struct_size == sizeof(flashplus_fwd_args) || tiny.struct_size == sizeof(flashplus_kvcache_args))
      tiny.struct_size = 0;
    switch (entry) {
      case 0: st = flashplus_mha_fwd(reinterpret_cast<const flashplus_fwd_args*>(&tiny)); break;
      default: st = flashplus_mha_fwd_kvcache(reinterpret_cast<const flashplus_kvcache_args*>(&tiny)); break;
    }
    if (st != FLASHPLUS_INVALID_ARGS) std::abort();
  } else {
    const Problem p = pick_problem(f);
    Builder B(f);
    switch (entry) {
      case 0: st = call_fwd(f, B, p); break;
      case 1: st = call_bwd(f, B, p); break;
      case 2: st = call_varlen_fwd(f, B, p); break;
      case 3: st = call_varlen_bwd(f, B, p); break;
      default: st = call_kvcache(f, B, p); break;
    }
  }
  const std::string err = flashplus_last_error();
  if (st < FLASHPLUS_OK || st > FLASHPLUS_RUNTIME_ERROR) std::abort();
  if ((st == FLASHPLUS_OK) != err.empty()) std::abort();
  if (std::string(flashplus_status_name(st)) == "unknown") std::abort();
  return 0;
}
