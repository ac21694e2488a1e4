// Device measurement (not in the CTest glob: needs a GPU and a library built with
// -DFLASHPLUS_KV_TRACE): where the ~25 us of fixed GPU time of a decoding call go
// (docs/PERF.md "KV-cache decoding, round 8").
//
// Part 1, read ceilings: kernels that only read 537 MB (the k and v of one decode step of
// llama3-8b's batch 1 x 131072 / 8 x 16384 shapes) or twice that, timed the peers' way (a spin
// kernel before the start event), to separate what any reader of that many bytes pays from what
// our kernel adds:
//   flat:    a grid of 8 blocks of 256 threads per SM, each block one contiguous share, eight
//            16-byte loads in flight per thread;
//   heads:   512 blocks of 64 threads laid out like our attention grid at batch 1 (64 splits x 8
//            kv heads): block (split, head) reads its head's 256-byte rows of its keys, rows
//            2 KiB apart (the (b, s, hk, d) cache), 16 KiB in flight per block;
//   chunks:  the same 512 x 64 grid reading contiguous shares (no 2 KiB stride).
// Part 2, trace: mha_fwd_kvcache on the decode shapes with per-block timer readings (entry, after
// the grid-dependency wait, first tile landed, loop end, exit; combine entry / wait / exit),
// summarised as percentiles relative to the first block's entry.
//   nvcc -O3 -std=c++17 -arch=sm_90a -DFLASHPLUS_KV_TRACE -Ikernels/include -Ikernels \
//     -Ikernels/src tests/device/kvcache_trace.cu <trace objects> build-cuda/kernels/libflashplus.a \
//     -lfmt -lcuda -o kv_trace        (scripts/kv_trace_build.sh)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "device_common.h"
#include "flashplus/api.h"

namespace flashplus::gpu {
void kv_set_trace(unsigned long long* device_words);
}

using namespace flashplus;
using device_test::fill_bf16;
using device_test::median;
using device_test::spin;

namespace {

constexpr int kTraceWords = 6, kTraceMax = 16384, kCombineWords = 3;

__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 r;
  asm volatile("ld.global.cs.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// Each block reads [blockIdx.x * per, ...) of n16 16-byte words, U loads in flight per thread.
template <int U>
__global__ void read_flat(const uint4* x, size_t n16, size_t per, unsigned* sink) {
  const size_t b0 = blockIdx.x * per, b1 = min(n16, b0 + per);
  unsigned acc = 0;
  for (size_t i = b0 + threadIdx.x; i < b1; i += size_t{U} * blockDim.x) {
    uint4 r[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const size_t j = i + static_cast<size_t>(u) * blockDim.x;
      r[u] = j < b1 ? ld_stream(x + j) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) acc ^= r[u].x ^ r[u].y ^ r[u].z ^ r[u].w;
  }
  if (acc == 0x12345678u) sink[0] = acc;
}

// Block (split, head) of a (splits x heads) grid of 64 threads: keys [split * keys, +keys) of
// head `head` in two caches (k, v) laid out (key, heads, 128 bf16): 16 words per row, rows
// heads * 16 words apart. 8 rows of k and 8 of v per step: 16 KiB in flight per block.
__global__ void read_heads(const uint4* k, const uint4* v, int heads, int keys, unsigned* sink) {
  const int split = blockIdx.x, head = blockIdx.y;
  const int r = threadIdx.x / 16, c = threadIdx.x % 16;  // 4 rows per pass of 64 threads
  const size_t row_words = size_t{16} * heads;
  unsigned acc = 0;
  for (int j = 0; j < keys; j += 32) {
    uint4 a[8], b[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      const size_t key = static_cast<size_t>(split) * keys + j + r + 4 * u;
      a[u] = ld_stream(k + key * row_words + head * 16 + c);
      b[u] = ld_stream(v + key * row_words + head * 16 + c);
    }
#pragma unroll
    for (int u = 0; u < 8; ++u) acc ^= a[u].x ^ a[u].w ^ b[u].y ^ b[u].z;
  }
  if (acc == 0x12345678u) sink[0] = acc;
}

// What precedes each timed call (KV_TRACE_PRE): `spin` (default) a spin kernel, as `flashplus
// bench --timing stream`; `flush` a 256 MB memset instead, as triton's do_bench clears the L2 (the
// peers' protocol: memory busy right before the call, the L2 full of dirty lines); after the spin,
// `code` a small decode call of the same kernel and layout (instruction and constant caches warm),
// `tlb` a read of one word per 2 MB page of the case's k and v (address translations warm), `read`
// a 64 MB read of another buffer (the memory busy, the L2 clean). Diagnostics of the ~8 us before a
// call's first tile lands (docs/PERF.md round 8).
struct PreOps {
  std::string mode = "spin";
  std::function<void()> code;           // set per case when mode == "code"
  const uint32_t* pages[2] = {};        // k, v of the case (mode "tlb")
  size_t words = 0;                     // 32-bit words of each
  unsigned* sink = nullptr;
};
PreOps& pre_ops() {
  static PreOps p = [] {
    PreOps o;
    if (const char* e = std::getenv("KV_TRACE_PRE")) o.mode = e;
    CK(cudaMalloc(&o.sink, 4));
    return o;
  }();
  return p;
}

__global__ void touch_pages(const uint32_t* a, const uint32_t* b, size_t words, unsigned* sink) {
  const size_t stride = (size_t{2} << 20) / 4;  // one word per 2 MB
  unsigned acc = 0;
  for (size_t i = (blockIdx.x * size_t{blockDim.x} + threadIdx.x) * stride; i < words;
       i += size_t{gridDim.x} * blockDim.x * stride)
    acc ^= a[i] ^ b[i];
  if (acc == 0x12345678u) sink[0] = acc;
}

void before_call() {
  PreOps& o = pre_ops();
  if (o.mode == "flush") {
    static void* buf = nullptr;
    const size_t bytes = size_t{256} << 20;
    if (!buf) CK(cudaMalloc(&buf, bytes));
    CK(cudaMemsetAsync(buf, 0, bytes));
    return;
  }
  spin<<<1, 1>>>(200000);
  if (o.mode == "code" && o.code) o.code();
  if (o.mode == "tlb" && o.words) touch_pages<<<64, 64>>>(o.pages[0], o.pages[1], o.words, o.sink);
  if (o.mode == "read") {
    static uint4* buf = nullptr;
    const size_t n16 = (size_t{64} << 20) / 16;
    if (!buf) {
      CK(cudaMalloc(&buf, n16 * 16));
      CK(cudaMemset(buf, 1, n16 * 16));
    }
    read_flat<8><<<528, 256>>>(buf, n16, (n16 + 527) / 528, o.sink);
  }
}

template <class F>
double time_stream_ms(int reps, F f) {
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  for (int i = 0; i < 3; ++i) f();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    before_call();
    CK(cudaEventRecord(e0));
    f();
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float ms = 0.f;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    t.push_back(ms);
  }
  CK(cudaEventDestroy(e0));
  CK(cudaEventDestroy(e1));
  return median(t);
}

void read_ceilings(int sms) {
  const size_t half = size_t{131073} * 8 * 128 * 2;  // bytes of k (or v) at batch 1 x 131073
  const size_t big = 4 * half;
  uint4* x = nullptr;
  unsigned* sink = nullptr;
  CK(cudaMalloc(&x, big));
  CK(cudaMalloc(&sink, 4));
  fill_bf16<<<4096, 256>>>(reinterpret_cast<uint16_t*>(x), big / 2, 7);
  CK(cudaDeviceSynchronize());
  for (const size_t bytes : {2 * half, 4 * half}) {
    const size_t n16 = bytes / 16;
    for (int bps : {4, 8, 16}) {
      const int grid = sms * bps;
      const size_t per = (n16 + grid - 1) / grid;
      const double ms = time_stream_ms(15, [&] { read_flat<8><<<grid, 256>>>(x, n16, per, sink); });
      std::printf("ceiling flat     %4.0f MB grid %5d x 256, 8 x 16 B in flight/thread: %.4f ms %.3f TB/s\n",
                  bytes / 1e6, grid, ms, bytes / ms / 1e9);
    }
    for (int grid : {512, 528, 1024}) {
      const size_t per = (n16 + grid - 1) / grid;
      const double ms = time_stream_ms(15, [&] { read_flat<16><<<grid, 64>>>(x, n16, per, sink); });
      std::printf("ceiling chunks   %4.0f MB grid %5d x 64, 16 x 16 B in flight/thread: %.4f ms %.3f TB/s\n",
                  bytes / 1e6, grid, ms, bytes / ms / 1e9);
    }
    // heads: k and v of (keys, 8 heads, 128): keys = bytes / 2 / 2048.
    const int keys_total = static_cast<int>(bytes / 2 / 2048);
    for (int splits : {64, 66, 128}) {
      const int keys = keys_total / splits / 32 * 32;
      const uint4* k = x;
      const uint4* v = x + bytes / 2 / 16;
      const double ms = time_stream_ms(15, [&] { read_heads<<<dim3(splits, 8), 64>>>(k, v, 8, keys, sink); });
      const double read = 2.0 * splits * keys * 8 * 256;
      std::printf("ceiling heads    %4.0f MB grid %3d x 8 x 64, rows 2 KiB apart: %.4f ms %.3f TB/s\n",
                  read / 1e6, splits, ms, read / ms / 1e9);
    }
    std::fflush(stdout);
  }
  CK(cudaFree(x));
  CK(cudaFree(sink));
}

double pct(std::vector<double> v, double q) {
  if (v.empty()) return 0.;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5))];
}

void summarise(const char* what, std::vector<double> v) {
  std::printf("  %-34s min %7.2f p10 %7.2f p50 %7.2f p90 %7.2f max %7.2f us\n", what, pct(v, 0),
              pct(v, 0.1), pct(v, 0.5), pct(v, 0.9), pct(v, 1));
}

// One decode case of llama3-8b's shape (1 query token, 1 appended key, GQA 32/8, d 128, bf16,
// causal) on its own buffers, laid out as `flashplus bench` does.
struct DecodeCase {
  static constexpr int H = 32, HK = 8, D = 128;
  int B = 0, S = 0, page = 0, splits = 0, cap = 0, mb = 0;
  int64_t c0 = 0, c1 = 0;
  size_t cache = 0;
  void *q = nullptr, *k = nullptr, *v = nullptr, *kn = nullptr, *vn = nullptr, *out = nullptr,
       *lse = nullptr, *sl = nullptr, *bt = nullptr;

  DecodeCase(int b_, int s_, int page_, int splits_) : B(b_), S(s_), page(page_), splits(splits_) {
    cap = S + 1;
    mb = page ? (cap + page - 1) / page : 0;
    c0 = page ? int64_t{B} * mb : B;
    c1 = page ? page : cap;
    cache = static_cast<size_t>(c0 * c1) * HK * D;
    CK(cudaMalloc(&q, size_t{2} * B * H * D));
    CK(cudaMalloc(&k, 2 * cache));
    CK(cudaMalloc(&v, 2 * cache));
    CK(cudaMalloc(&kn, size_t{2} * B * HK * D));
    CK(cudaMalloc(&vn, size_t{2} * B * HK * D));
    CK(cudaMalloc(&out, size_t{2} * B * H * D));
    CK(cudaMalloc(&lse, size_t{4} * B * H));
    CK(cudaMalloc(&sl, size_t{4} * B));
    fill_bf16<<<1024, 256>>>(static_cast<uint16_t*>(q), size_t{1} * B * H * D, 1);
    fill_bf16<<<4096, 256>>>(static_cast<uint16_t*>(k), cache, 2);
    fill_bf16<<<4096, 256>>>(static_cast<uint16_t*>(v), cache, 3);
    fill_bf16<<<64, 256>>>(static_cast<uint16_t*>(kn), size_t{1} * B * HK * D, 4);
    fill_bf16<<<64, 256>>>(static_cast<uint16_t*>(vn), size_t{1} * B * HK * D, 5);
    std::vector<int> slh(B, S);
    CK(cudaMemcpy(sl, slh.data(), 4 * slh.size(), cudaMemcpyHostToDevice));
    if (page) {
      CK(cudaMalloc(&bt, size_t{4} * B * mb));
      std::vector<int> tab(static_cast<size_t>(B) * mb);
      for (int b = 0; b < B; ++b)
        for (int j = 0; j < mb; ++j) tab[static_cast<size_t>(b) * mb + j] = j * B + b;
      CK(cudaMemcpy(bt, tab.data(), 4 * tab.size(), cudaMemcpyHostToDevice));
    }
    CK(cudaDeviceSynchronize());
  }
  DecodeCase(const DecodeCase&) = delete;
  DecodeCase& operator=(const DecodeCase&) = delete;
  ~DecodeCase() {
    for (void* p : {q, k, v, kn, vn, out, lse, sl, bt})
      if (p) (void)cudaFree(p);
  }
  double bytes() const { return 2.0 * B * cap * HK * D * 2; }
  void call() const {
    auto tv = [](void* p, DType t, std::initializer_list<int64_t> shape) {
      return TensorView::contiguous(p, t, shape, DeviceKind::cuda, 0);
    };
    const std::optional<TensorView> none;
    std::optional<TensorView> tab;
    if (page) tab = tv(bt, DType::i32, {B, mb});
    RunOptions opts;
    opts.backend = Backend::cuda;
    const Status st = mha_fwd_kvcache(
        tv(q, DType::bf16, {B, 1, H, D}), tv(k, DType::bf16, {c0, c1, HK, D}),
        tv(v, DType::bf16, {c0, c1, HK, D}), tv(kn, DType::bf16, {B, 1, HK, D}),
        tv(vn, DType::bf16, {B, 1, HK, D}), tv(sl, DType::i32, {B}), none, none, none, none, tab,
        none, tv(out, DType::bf16, {B, 1, H, D}), tv(lse, DType::f32, {B, H, 1}),
        1.f / std::sqrt(static_cast<float>(D)), true, -1, -1, 0.f, false, splits, opts);
    if (!st.ok()) {
      std::printf("call failed: %s\n", st.to_string().c_str());
      std::exit(3);
    }
  }
};

void trace_calls(int reps) {
  unsigned long long* tr = nullptr;
  const size_t words = size_t{kTraceMax} * kTraceWords + size_t{kTraceMax} * kCombineWords;
  CK(cudaMalloc(&tr, words * 8));
  std::vector<unsigned long long> h(words);
  struct Shape {
    int B, S, page, splits;
  };
  std::vector<Shape> shapes;
  for (int page : {0, 16, 256}) {
    shapes.push_back({1, 131072, page, 0});
    shapes.push_back({8, 16384, page, 0});
  }
  shapes.push_back({64, 4096, 0, 0});
  shapes.push_back({1, 131072, 0, 66});
  shapes.push_back({8, 16384, 0, 16});
  const int nshapes = std::getenv("KV_TRACE_SHAPES") ? std::atoi(std::getenv("KV_TRACE_SHAPES"))
                                                       : static_cast<int>(shapes.size());
  shapes.resize(std::min(shapes.size(), static_cast<size_t>(std::max(1, nshapes))));
  PreOps& pre = pre_ops();
  for (const Shape& sh : shapes) {
    const DecodeCase dc(sh.B, sh.S, sh.page, sh.splits);
    const int B = sh.B, S = sh.S, page = sh.page;
    std::unique_ptr<DecodeCase> primer;
    if (pre.mode == "code") {
      primer = std::make_unique<DecodeCase>(16, 2048, page, 0);
      pre.code = [&primer] { primer->call(); };
    }
    pre.pages[0] = static_cast<const uint32_t*>(dc.k);
    pre.pages[1] = static_cast<const uint32_t*>(dc.v);
    pre.words = dc.cache / 2;
    auto call = [&] { dc.call(); };
    const double bytes = dc.bytes();
    gpu::kv_set_trace(nullptr);
    const double ms = time_stream_ms(reps, call);
    // Traced calls: the median over `reps` of each statistic would hide nothing systematic; one
    // call after a spin is summarised, and the kernel spans of five.
    std::printf("trace b%d s%d page%d splits%d: stream %.4f ms %.3f TB/s (untraced)\n", B, S, page,
                sh.splits, ms, bytes / ms / 1e9);
    gpu::kv_set_trace(tr);
    for (int rep = 0; rep < 5; ++rep) {
      CK(cudaMemset(tr, 0, words * 8));
      CK(cudaDeviceSynchronize());
      before_call();
      call();
      CK(cudaDeviceSynchronize());
      CK(cudaMemcpy(h.data(), tr, words * 8, cudaMemcpyDeviceToHost));
      unsigned long long t0 = ~0ull, amax = 0, cmax = 0, cmin = ~0ull, cw = 0;
      int nblk = 0, ncomb = 0;
      for (int i = 0; i < kTraceMax; ++i) {
        const unsigned long long* w = &h[static_cast<size_t>(i) * kTraceWords];
        if (w[0] == 0) continue;
        ++nblk;
        t0 = std::min(t0, w[0]);
        amax = std::max(amax, w[4]);
      }
      for (int i = 0; i < kTraceMax; ++i) {
        const unsigned long long* w = &h[size_t{kTraceMax} * kTraceWords + static_cast<size_t>(i) * kCombineWords];
        if (w[0] == 0) continue;
        ++ncomb;
        cmin = std::min(cmin, w[0]);
        cw = std::max(cw, w[1]);
        cmax = std::max(cmax, w[2]);
      }
      const double span = (std::max(amax, cmax) - t0) / 1e3;
      std::printf("  call %d: %d attention blocks, first entry -> last exit %.2f us; combine %d "
                  "blocks: first entry %.2f, last wait done %.2f, last exit %.2f us; span %.2f us "
                  "= %.3f TB/s\n",
                  rep, nblk, (amax - t0) / 1e3, ncomb, ncomb ? (cmin - t0) / 1e3 : 0.,
                  ncomb ? (cw - t0) / 1e3 : 0., ncomb ? (cmax - t0) / 1e3 : 0., span,
                  bytes / span / 1e6);
      if (rep != 4) continue;
      std::vector<double> entry, waited, first, loop_end, exit_, loop_len, first_lat, tail;
      std::map<int, int> per_sm;
      std::map<int, double> sm_end;
      for (int i = 0; i < kTraceMax; ++i) {
        const unsigned long long* w = &h[static_cast<size_t>(i) * kTraceWords];
        if (w[0] == 0) continue;
        entry.push_back((w[0] - t0) / 1e3);
        waited.push_back((w[1] - t0) / 1e3);
        if (w[2]) {
          first.push_back((w[2] - t0) / 1e3);
          first_lat.push_back((w[2] - w[1]) / 1e3);
          loop_len.push_back((w[3] - w[2]) / 1e3);
        }
        loop_end.push_back((w[3] - t0) / 1e3);
        exit_.push_back((w[4] - t0) / 1e3);
        tail.push_back((w[4] - w[3]) / 1e3);
        const int sm = static_cast<int>(w[5]);
        per_sm[sm]++;
        sm_end[sm] = std::max(sm_end[sm], (w[4] - t0) / 1e3);
      }
      summarise("entry", entry);
      summarise("after grid wait", waited);
      summarise("first tile landed", first);
      summarise("entry -> first tile", first_lat);
      summarise("key loop (first tile -> end)", loop_len);
      summarise("loop end", loop_end);
      summarise("loop end -> exit (merge, write)", tail);
      summarise("exit", exit_);
      std::map<int, int> hist;
      for (auto& [sm, n] : per_sm) hist[n]++;
      std::printf("  blocks per SM:");
      for (auto& [n, c] : hist) std::printf(" %d blocks x %d SMs;", n, c);
      std::printf(" %zu SMs used\n", per_sm.size());
      // Ends by blocks-per-SM class: do SMs with more blocks finish later?
      std::map<int, std::vector<double>> by_class;
      for (auto& [sm, n] : per_sm) by_class[n].push_back(sm_end[sm]);
      for (auto& [n, v] : by_class) {
        char label[64];
        std::snprintf(label, sizeof label, "last exit on SMs with %d blocks", n);
        summarise(label, v);
      }
      // Blocks still in their key loop over time (bandwidth is shared by those).
      std::printf("  blocks in their loop at t =");
      const double end = pct(exit_, 1);
      for (double f : {0.02, 0.05, 0.5, 0.9, 0.95, 0.97, 0.99}) {
        const double tt = end * f;
        int n = 0;
        for (size_t i = 0; i < first.size(); ++i) n += first[i] <= tt && loop_end[i] > tt;
        std::printf(" %.1f us: %d;", tt, n);
      }
      std::printf("\n");
    }
    std::fflush(stdout);
    gpu::kv_set_trace(nullptr);
    pre.code = nullptr;
    pre.words = 0;
  }
  CK(cudaFree(tr));
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 20;
  int sms = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const char* part = std::getenv("KV_TRACE_PART");
  if (!part || part[0] != 't') read_ceilings(sms);
  if (!part || part[0] != 'c') trace_calls(reps);
  return 0;
}
