// The CPU backend's BackendOps table: attention from fwd.cpp/bwd.cpp, host memory, wall clock.
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unistd.h>

#include "backend.h"
#include "cpu/cpu_kernels.h"
#include "cpu/tiles.h"

namespace flashplus::detail {

namespace {

Status cpu_fwd(const AttnParams& p, const RunOptions& opts) { return cpu::fwd(p, opts); }
Status cpu_bwd(const AttnParams& p, const RunOptions& opts) { return cpu::bwd(p, opts); }

const char* build_arch() {
#if defined(__x86_64__) || defined(_M_X64)
  return "x86_64";
#elif defined(__aarch64__) || defined(_M_ARM64)
  return "aarch64";
#elif defined(__powerpc64__)
  return "ppc64";
#else
  return "unknown";
#endif
}

std::vector<DeviceDesc> cpu_devices() {
  const int n = cpu::resolve_threads(RunOptions{});
  DeviceDesc dd;
  dd.backend = Backend::cpu;
  dd.index = 0;
  dd.name = "cpu: " + std::to_string(n) + (n == 1 ? " thread" : " threads");
  dd.arch = build_arch();
  dd.multiprocessors = n;
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  dd.memory_bytes = pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : 0;
  return {dd};
}

// 64-byte aligned (a cache line; also what AVX-512 loads like), size rounded up as
// aligned_alloc requires. Zero bytes gives a null pointer and ok.
Status cpu_alloc(size_t bytes, void** ptr) {
  *ptr = nullptr;
  if (bytes == 0) return Status::Ok();
  const size_t rounded = (bytes + 63) / 64 * 64;
  if (rounded < bytes) return Status::Runtime("cpu alloc: size overflow");
  *ptr = std::aligned_alloc(64, rounded);
  if (!*ptr) return Status::Runtime("cpu alloc: out of memory (" + std::to_string(bytes) + " bytes)");
  return Status::Ok();
}
void cpu_free(void* ptr) { std::free(ptr); }
Status cpu_copy(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(dst, src, bytes);
  return Status::Ok();
}
Status cpu_sync() { return Status::Ok(); }

using Clock = std::chrono::steady_clock;
void* timer_create() { return new Clock::time_point(Clock::now()); }
void timer_destroy(void* t) { delete static_cast<Clock::time_point*>(t); }
void timer_start(void* t) { *static_cast<Clock::time_point*>(t) = Clock::now(); }
double timer_stop_ms(void* t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - *static_cast<Clock::time_point*>(t))
      .count();
}

const BackendOps kCpuOps = {
    Backend::cpu, DeviceKind::cpu, cpu_fwd,  cpu_bwd,      cpu_devices,   cpu_alloc,    cpu_free,
    cpu_copy,     cpu_copy,        cpu_sync, timer_create, timer_destroy, timer_start, timer_stop_ms,
    kFeatureVarlen | kFeatureKvcache | kFeatureDropout,
    cpu::measure_copy_gbs, cpu::measure_matmul_tflops, cpu::candidates, cpu::last_config,
    cpu::dmask,
};

}  // namespace

const BackendOps* cpu_ops() { return &kCpuOps; }

}  // namespace flashplus::detail
