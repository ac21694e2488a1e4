// flashplus_cpu_perf: the CPU backend's forward (tiled, online softmax) against a naive
// materialised fp32 forward (full Sq x Sk score matrix per (batch, head), as `softmax(q k^T) v`
// in a framework), on llama-7B attention shapes. Reports time, TFLOP/s and peak extra memory.
//
//   flashplus_cpu_perf [--threads N] [--seqlens 1024,4096] [--reps R]
//
// FLOPs: 4 * b * h * sq * sk * d for the full matrix, halved for the causal mask's visible part
// (the work the flash kernel must do); the naive version does the full 4 * b * h * sq * sk * d.
// Both numbers below use the causal (visible-work) count so their TFLOP/s are comparable.
//
// Peak extra memory: the peak resident set size (VmHWM) during the call minus the resident set
// just before it, with inputs and outputs already allocated and touched. The peak is reset
// through /proc/self/clear_refs (Linux); where that is not possible, getrusage's ru_maxrss
// (which never decreases) is used and the first measurement per process is the honest one.
// Free heap pages are returned to the OS (malloc_trim) before each measurement so that a call
// cannot hide its allocations in pages left resident by the previous one.
#include <sys/resource.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "flashplus/api.h"
#include "flashplus/numerics.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define PERF_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define PERF_CLONES
#endif

using namespace flashplus;

namespace {

long proc_status_kb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(f, line))
    if (line.compare(0, n, key) == 0) return std::atol(line.c_str() + n + 1);
  return -1;
}
bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  if (!f) return false;
  f << "5";
  f.flush();
  return static_cast<bool>(f);
}
long maxrss_kb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

struct MemProbe {
  bool hwm_ok = false;
  long before_kb = 0;
  void start() {
#if defined(__GLIBC__)
    malloc_trim(0);  // give freed heap pages back, so a call cannot reuse already-resident ones
#endif
    hwm_ok = reset_peak_rss() && proc_status_kb("VmHWM:") >= 0;
    before_kb = hwm_ok ? proc_status_kb("VmRSS:") : maxrss_kb();
  }
  long extra_kb() const {
    const long peak = hwm_ok ? proc_status_kb("VmHWM:") : maxrss_kb();
    return std::max(0L, peak - before_kb);
  }
};

// ---- the naive materialised forward ----------------------------------------------------------

PERF_CLONES
void row_scores(const float* q, const float* kt, int d, int sk, float* s) {
  for (int j = 0; j < sk; ++j) s[j] = 0.f;
  for (int x = 0; x < d; ++x) {
    const float qx = q[x];
    const float* kr = kt + static_cast<int64_t>(x) * sk;
    for (int j = 0; j < sk; ++j) s[j] += qx * kr[j];
  }
}
PERF_CLONES
void row_pv(const float* p, const float* v, int d, int sk, float* o) {
  for (int x = 0; x < d; ++x) o[x] = 0.f;
  for (int j = 0; j < sk; ++j) {
    const float pj = p[j];
    const float* vr = v + static_cast<int64_t>(j) * d;
    for (int x = 0; x < d; ++x) o[x] += pj * vr[x];
  }
}

// softmax(scale * q k^T + causal mask) v with the whole (sq x sk) S of one (b, h) in memory,
// (b, h) pairs spread over `threads` threads. Contiguous (b, s, h, d) inputs.
void naive_forward(const void* q, const void* k, const void* v, void* out, DType t, int B, int sq,
                   int sk, int H, int d, bool causal, int threads) {
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  std::atomic<int> next{0};
  auto body = [&] {
    std::vector<float> qh(static_cast<size_t>(sq) * d), kt(static_cast<size_t>(d) * sk),
        vh(static_cast<size_t>(sk) * d), S(static_cast<size_t>(sq) * sk), o(d);
    for (int it; (it = next.fetch_add(1)) < B * H;) {
      const int b = it / H, h = it % H;
      for (int i = 0; i < sq; ++i)
        for (int x = 0; x < d; ++x)
          qh[static_cast<size_t>(i) * d + x] = load_float(q, t, ((static_cast<int64_t>(b) * sq + i) * H + h) * d + x);
      for (int j = 0; j < sk; ++j)
        for (int x = 0; x < d; ++x) {
          const int64_t e = ((static_cast<int64_t>(b) * sk + j) * H + h) * d + x;
          kt[static_cast<size_t>(x) * sk + j] = load_float(k, t, e);
          vh[static_cast<size_t>(j) * d + x] = load_float(v, t, e);
        }
      for (int i = 0; i < sq; ++i) row_scores(&qh[static_cast<size_t>(i) * d], kt.data(), d, sk, &S[static_cast<size_t>(i) * sk]);
      for (int i = 0; i < sq; ++i) {
        float* s = &S[static_cast<size_t>(i) * sk];
        const int64_t last = causal ? static_cast<int64_t>(i) + sk - sq : sk - 1;
        float mx = -std::numeric_limits<float>::infinity();
        for (int j = 0; j < sk; ++j) {
          s[j] = j <= last ? s[j] * scale : -std::numeric_limits<float>::infinity();
          mx = std::max(mx, s[j]);
        }
        float sum = 0.f;
        for (int j = 0; j < sk; ++j) sum += (s[j] = mx == -std::numeric_limits<float>::infinity() ? 0.f : std::exp(s[j] - mx));
        const float inv = sum > 0.f ? 1.f / sum : 0.f;
        for (int j = 0; j < sk; ++j) s[j] *= inv;
        row_pv(s, vh.data(), d, sk, o.data());
        for (int x = 0; x < d; ++x) store_float(out, t, ((static_cast<int64_t>(b) * sq + i) * H + h) * d + x, o[x]);
      }
    }
  };
  std::vector<std::thread> ts;
  for (int i = 1; i < threads; ++i) ts.emplace_back(body);
  body();
  for (auto& th : ts) th.join();
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 0, reps = 0;
  std::vector<int> seqlens = {1024, 4096};
  for (int a = 1; a < argc; ++a) {
    const std::string s = argv[a];
    if (s == "--threads" && a + 1 < argc) threads = std::atoi(argv[++a]);
    else if (s == "--reps" && a + 1 < argc) reps = std::atoi(argv[++a]);
    else if (s == "--seqlens" && a + 1 < argc) {
      seqlens.clear();
      std::string list = argv[++a];
      for (size_t pos = 0; pos < list.size();) {
        const size_t c = list.find(',', pos);
        seqlens.push_back(std::atoi(list.substr(pos, c - pos).c_str()));
        pos = c == std::string::npos ? list.size() : c + 1;
      }
    } else {
      std::fprintf(stderr, "usage: %s [--threads N] [--seqlens 1024,4096] [--reps R]\n", argv[0]);
      return 2;
    }
  }
  if (threads <= 0) threads = std::max(1u, std::thread::hardware_concurrency());
  const int B = 1, H = 32, D = 128;  // llama-7B attention
  std::printf("flashplus_cpu_perf: llama7b b=%d h=%d d=%d causal, %d thread(s)\n", B, H, D, threads);
  std::printf("%-5s %6s %10s %9s %10s %9s %8s %12s %12s %10s\n", "dtype", "seqlen", "flash_ms",
              "flash_GF", "naive_ms", "naive_GF", "speedup", "flash_MiB+", "naive_MiB+", "max|diff|");
  for (DType t : {DType::f16, DType::bf16}) {
    for (int S : seqlens) {
      const size_t n = static_cast<size_t>(B) * S * H * D;
      const size_t bytes = n * dtype_size(t);
      std::vector<uint8_t> q(bytes), k(bytes), v(bytes), o1(bytes), o2(bytes);
      std::vector<float> lse(static_cast<size_t>(B) * H * S);
      std::mt19937 rng(7);
      std::uniform_real_distribution<float> U(-1.f, 1.f);
      for (size_t i = 0; i < n; ++i) {
        store_float(q.data(), t, i, U(rng));
        store_float(k.data(), t, i, U(rng));
        store_float(v.data(), t, i, U(rng));
      }
      const auto qv = TensorView::contiguous(q.data(), t, {B, S, H, D});
      const auto kv = TensorView::contiguous(k.data(), t, {B, S, H, D});
      const auto vv = TensorView::contiguous(v.data(), t, {B, S, H, D});
      const auto ov = TensorView::contiguous(o1.data(), t, {B, S, H, D});
      const auto lv = TensorView::contiguous(lse.data(), DType::f32, {B, H, S});
      RunOptions opts;
      opts.backend = Backend::cpu;
      opts.num_threads = threads;
      const int r = reps > 0 ? reps : (S <= 1024 ? 3 : 1);

      MemProbe mem;
      mem.start();
      double best_flash = 1e300;
      for (int i = 0; i < r; ++i) {
        const double t0 = now_ms();
        const Status st = mha_fwd(qv, kv, vv, ov, lv, std::nullopt, 0.f, 0.f, true, -1, -1, 0.f, false, opts);
        best_flash = std::min(best_flash, now_ms() - t0);
        if (!st.ok()) {
          std::fprintf(stderr, "mha_fwd: %s\n", st.to_string().c_str());
          return 1;
        }
      }
      const long flash_kb = mem.extra_kb();

      mem.start();
      double best_naive = 1e300;
      for (int i = 0; i < r; ++i) {
        const double t0 = now_ms();
        naive_forward(q.data(), k.data(), v.data(), o2.data(), t, B, S, S, H, D, true, threads);
        best_naive = std::min(best_naive, now_ms() - t0);
      }
      const long naive_kb = mem.extra_kb();

      double maxdiff = 0;
      for (size_t i = 0; i < n; ++i)
        maxdiff = std::max(maxdiff, static_cast<double>(std::fabs(load_float(o1.data(), t, i) - load_float(o2.data(), t, i))));
      const double flops = 4.0 * B * H * static_cast<double>(S) * S * D / 2;  // causal visible work
      std::printf("%-5s %6d %10.1f %9.3f %10.1f %9.3f %7.2fx %12.1f %12.1f %10.2g\n", dtype_name(t), S,
                  best_flash, flops / best_flash / 1e6, best_naive, flops / best_naive / 1e6,
                  best_naive / best_flash, flash_kb / 1024.0, naive_kb / 1024.0, maxdiff);
      std::fflush(stdout);
    }
  }
  std::printf("(best of %s runs; GFLOP/s over the causal visible work 2*b*h*sq*sk*d; MiB+ = peak RSS "
              "during the call minus RSS before it, %s)\n",
              reps > 0 ? std::to_string(reps).c_str() : "3 (1024) / 1 (4096)",
              reset_peak_rss() ? "VmHWM reset via /proc/self/clear_refs" : "getrusage ru_maxrss");
  return 0;
}
