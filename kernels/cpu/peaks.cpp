// The CPU backend's measured peaks (`flashplus bench --peaks`):
//   * matmul: fp32 GEMM through the kernels' own micro-kernel (gemm_acc), every thread on its own
//     128 x 128 x 128 problem held in cache: the best the attention kernels' inner loops can do;
//   * copy: memcpy of 2 x 256 MiB slices spread over every thread, bytes read + written per second.
// Each is the best of a few repetitions (a peak, not a typical value).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <vector>

#include "cpu/tiles.h"

namespace flashplus::cpu {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

Status measure_matmul_tflops(double* tflops) {
  constexpr int M = 128, N = 128, K = 128;
  static_assert(M % kMr == 0 && N % kNr == 0, "whole micro-tiles");
  const int nthreads = resolve_threads(RunOptions{});
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    std::atomic<long long> calls{0};
    const auto t0 = Clock::now();
    FLASHPLUS_RETURN_IF_ERROR(run_threads(nthreads, [&](int tid) {
      Buffer a(static_cast<size_t>(M) * K), b(static_cast<size_t>(K) * N), c(static_cast<size_t>(M) * N);
      for (size_t i = 0; i < a.size(); ++i) a.data()[i] = 1.f + 1e-3f * static_cast<float>((i + tid) % 97);
      for (size_t i = 0; i < b.size(); ++i) b.data()[i] = 1e-3f * static_cast<float>(i % 89) - 0.04f;
      long long n = 0;
      const auto start = Clock::now();
      while (seconds_since(start) < 0.15) {
        for (int i = 0; i < 8; ++i, ++n) gemm_acc(M, N, K, a.data(), K, b.data(), N, c.data(), N);
      }
      calls += n;
    }));
    const double s = seconds_since(t0);
    best = std::max(best, 2.0 * M * N * K * static_cast<double>(calls.load()) / s / 1e12);
  }
  *tflops = best;
  return Status::Ok();
}

Status measure_copy_gbs(double* gbs) {
  const size_t bytes = size_t{256} << 20;
  std::vector<char> src(bytes), dst(bytes);
  std::memset(src.data(), 1, bytes);
  std::memset(dst.data(), 2, bytes);  // touch every page before timing
  const int nthreads = resolve_threads(RunOptions{});
  const size_t slice = (bytes / nthreads + 63) / 64 * 64;
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
    FLASHPLUS_RETURN_IF_ERROR(run_threads(nthreads, [&](int tid) {
      const size_t off = std::min(bytes, slice * static_cast<size_t>(tid));
      const size_t n = std::min(slice, bytes - off);
      std::memcpy(dst.data() + off, src.data() + off, n);
    }));
    const double s = seconds_since(t0);
    best = std::max(best, 2.0 * static_cast<double>(bytes) / s / 1e9);
  }
  *gbs = best;
  return Status::Ok();
}

}  // namespace flashplus::cpu
