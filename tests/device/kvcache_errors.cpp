// Device check (not in the CTest glob: needs a GPU): out-of-range indices passed in device memory
// to mha_fwd_kvcache on the CUDA backend come back as an Invalid Status from the same call, with
// the error-flag protocol of kernels/gpu/kvcache (mapped host flags, no read-back copy), and a
// good call after a bad one returns Ok (the flags are zeroed between calls). Build against the
// CUDA build's libraries (as for the round-3 run, docs/PERF.md):
//   g++ -O2 -std=c++17 -Ikernels/include tests/device/kvcache_errors.cpp \
//     build-cuda/kernels/libflashplus.a /usr/local/cuda/lib/libcudart_static.a -ldl -lrt \
//     -lpthread /usr/lib/x86_64-linux-gnu/libfmt.so.9.1.0 -o kv_errors
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "flashplus/api.h"
#include "flashplus/numerics.h"
#include "flashplus/runtime.h"

using namespace flashplus;

namespace {
int g_fail = 0;
void expect(bool ok, const std::string& what, const Status& s) {
  std::printf("%s %s: %s\n", ok ? "PASS" : "FAIL", what.c_str(), s.to_string().c_str());
  if (!ok) ++g_fail;
}
struct Buf {
  void* p = nullptr;
  size_t n;
  DType t;
  Buf(DType dt, size_t count) : n(count), t(dt) {
    if (!runtime::alloc(Backend::cuda, count * dtype_size(dt), &p).ok()) p = nullptr;
  }
  ~Buf() { runtime::free(Backend::cuda, p); }
  void fill(float v) {
    std::vector<uint8_t> h(n * dtype_size(t));
    for (size_t i = 0; i < n; ++i)
      store_float(h.data(), t, i, v + 0.001f * static_cast<float>(i % 7));
    (void)runtime::copy_to_device(Backend::cuda, p, h.data(), h.size());
  }
  void ints(const std::vector<int>& x) {
    (void)runtime::copy_to_device(Backend::cuda, p, x.data(), x.size() * sizeof(int));
  }
  TensorView view(std::initializer_list<int64_t> shape) const {
    return TensorView::contiguous(p, t, shape, DeviceKind::cuda, 0);
  }
};
}  // namespace

int main() {
  const int B = 2, sq = 1, h = 8, hk = 2, d = 128, cap = 256, page = 16, nblk = 2 * cap / page;
  Buf q(DType::bf16, B * sq * h * d), kc(DType::bf16, B * cap * hk * d),
      vc(DType::bf16, B * cap * hk * d), kn(DType::bf16, B * hk * d), vn(DType::bf16, B * hk * d),
      o(DType::bf16, B * sq * h * d), l(DType::f32, B * h * sq), sl(DType::i32, B),
      bt(DType::i32, B * (cap / page)), bi(DType::i32, B), lp(DType::i32, B);
  q.fill(0.3f);
  kc.fill(0.2f);
  vc.fill(0.7f);
  kn.fill(0.1f);
  vn.fill(0.4f);
  RunOptions opts;
  opts.backend = Backend::cuda;
  const std::optional<TensorView> none;
  const auto Q = q.view({B, sq, h, d}), O = o.view({B, sq, h, d}), L = l.view({B, h, sq});
  const auto KC = kc.view({B, cap, hk, d}), VC = vc.view({B, cap, hk, d});
  const auto KP = kc.view({nblk, page, hk, d}), VP = vc.view({nblk, page, hk, d});
  const auto KN = kn.view({B, 1, hk, d}), VN = vn.view({B, 1, hk, d});
  auto run = [&](bool paged, bool with_bi, bool with_lp, int splits) {
    return mha_fwd_kvcache(Q, paged ? KP : KC, paged ? VP : VC, KN, VN, sl.view({B}), none, none,
                           with_bi ? std::optional<TensorView>(bi.view({B})) : none,
                           with_lp ? std::optional<TensorView>(lp.view({B})) : none,
                           paged ? std::optional<TensorView>(bt.view({B, cap / page})) : none,
                           none, O, L, 0.f, true, -1, -1, 0.f, false, splits, opts);
  };
  auto good = [&](const Status& s, const std::string& label) { expect(s.ok(), label, s); };
  auto invalid = [&](const Status& s, const char* what, const std::string& label) {
    expect(s.code() == StatusCode::invalid_args && s.message().find(what) != std::string::npos,
           label, s);
  };
  std::vector<int> table(B * (cap / page));
  for (int i = 0; i < B * (cap / page); ++i) table[i] = (i * 7) % nblk;
  bt.ints(table);
  for (int splits : {1, 3}) {
    const std::string sp = " splits " + std::to_string(splits);
    sl.ints({100, 200});
    good(run(false, false, false, splits), "good contiguous" + sp);
    sl.ints({100, 256});  // 256 + 1 new > capacity
    invalid(run(false, false, false, splits), "cache_seqlens", "seqlens beyond capacity" + sp);
    sl.ints({100, 200});
    good(run(true, false, false, splits), "good paged after a bad call" + sp);
    auto bad = table;
    bad[(cap / page) + 3] = nblk;  // a used page of sequence 1 (keys 48..63 < 201)
    bt.ints(bad);
    invalid(run(true, false, false, splits), "block_table", "block table entry out of range" + sp);
    bad = table;
    bad[(cap / page) + 12] = -1;  // only the page of sequence 1's new token (position 200)
    bt.ints(bad);
    invalid(run(true, false, false, splits), "block_table", "new token's page out of range" + sp);
    bt.ints(table);
    good(run(true, false, false, splits), "good paged after a bad table" + sp);
    bi.ints({1, 2});
    invalid(run(false, true, false, splits), "cache_batch_idx",
            "cache_batch_idx out of range" + sp);
    lp.ints({0, 250});
    invalid(run(false, false, true, splits), "cache_leftpad", "leftpad beyond the end" + sp);
    lp.ints({0, 5});
    good(run(false, false, true, splits), "good leftpad after bad calls" + sp);
  }
  // A grid of several waves (64 x 2 x 16 = 2048 blocks): the early report's last block to count
  // may start only after the first waves finished; a bad entry in the last sequence is still
  // reported by the same call, and the next call is Ok.
  {
    const int B2 = 64, nb2 = B2 * cap / page;
    Buf q2(DType::bf16, B2 * h * d), k2(DType::bf16, static_cast<size_t>(nb2) * page * hk * d),
        v2(DType::bf16, static_cast<size_t>(nb2) * page * hk * d), kn2(DType::bf16, B2 * hk * d),
        vn2(DType::bf16, B2 * hk * d), o2(DType::bf16, B2 * h * d), l2(DType::f32, B2 * h),
        sl2(DType::i32, B2), bt2(DType::i32, nb2);
    q2.fill(0.3f);
    k2.fill(0.2f);
    v2.fill(0.7f);
    kn2.fill(0.1f);
    vn2.fill(0.4f);
    sl2.ints(std::vector<int>(B2, 200));
    std::vector<int> t2(nb2);
    for (int i = 0; i < nb2; ++i) t2[i] = (i * 7) % nb2;
    auto run2 = [&]() {
      return mha_fwd_kvcache(q2.view({B2, 1, h, d}), k2.view({nb2, page, hk, d}),
                             v2.view({nb2, page, hk, d}), kn2.view({B2, 1, hk, d}),
                             vn2.view({B2, 1, hk, d}), sl2.view({B2}), none, none, none, none,
                             bt2.view({B2, cap / page}), none, o2.view({B2, 1, h, d}),
                             l2.view({B2, h, 1}), 0.f, true, -1, -1, 0.f, false, 16, opts);
    };
    bt2.ints(t2);
    good(run2(), "good paged, 2048 blocks");
    auto bad2 = t2;
    bad2[(B2 - 1) * (cap / page) + 5] = nb2;  // the last sequence, keys 80..95
    bt2.ints(bad2);
    invalid(run2(), "block_table", "block table entry out of range, 2048 blocks");
    bt2.ints(t2);
    good(run2(), "good paged, 2048 blocks, after a bad call");
  }
  // The pointer checks before any launch (backend_gpu.cu): host memory is refused whatever device
  // allocations the call's other tensors lie in, and tensors that share an allocation are
  // accepted.
  sl.ints({100, 200});
  std::vector<uint16_t> host_rows(static_cast<size_t>(B) * hk * d);
  const auto VH = TensorView::contiguous(host_rows.data(), DType::bf16, {B, 1, hk, d},
                                         DeviceKind::cuda, 0);
  invalid(mha_fwd_kvcache(Q, KC, VC, KN, VH, sl.view({B}), none, none, none, none, none, none, O,
                          L, 0.f, true, -1, -1, 0.f, false, 3, opts),
          "v_new is not", "host memory as v_new");
  const auto QK = kc.view({B, sq, h, d});  // q in k_cache's allocation (positions 0..3 of b 0)
  good(mha_fwd_kvcache(QK, KC, VC, KN, VN, sl.view({B}), none, none, none, none, none, none, O, L,
                       0.f, true, -1, -1, 0.f, false, 3, opts),
       "q inside k_cache's allocation after a host-memory call");
  std::printf("%s: %d failed\n", g_fail ? "FAILED" : "OK", g_fail);
  return g_fail ? 1 : 0;
}
