// The GPU backend's host side: devices, memory, timers, and fwd/bwd dispatch (tensor-core family
// first, portable fallback on no_instance). One source for both vendors: compiled by nvcc it
// defines flashplus::detail::cuda_ops(), compiled by hipcc (kernels/gpu/CMakeLists.txt) it
// defines hip_ops(). Every runtime call is checked and mapped to Status::Runtime.
#include <cstdlib>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "backend.h"
#include "gpu/gpu_kernels.h"
#include "gpu/heuristics.h"
#include "platform/arch.h"
#include "platform/gpu_runtime.h"

#if FLASHPLUS_VENDOR_HIP
#define FLASHPLUS_GPU_OPS_FN hip_ops
#define FLASHPLUS_GPU_EXPORT __attribute__((visibility("default")))
#else
#define FLASHPLUS_GPU_OPS_FN cuda_ops
#define FLASHPLUS_GPU_EXPORT
#endif

namespace flashplus {
namespace gpu {
namespace {

constexpr Backend kBackend = FLASHPLUS_VENDOR_HIP ? Backend::hip : Backend::cuda;
constexpr DeviceKind kDeviceKind = FLASHPLUS_VENDOR_HIP ? DeviceKind::hip : DeviceKind::cuda;

struct Device {
  DeviceDesc desc;
  DeviceInfo info;
};

// Queried once per process; empty when there is no device or no usable driver.
const std::vector<Device>& device_table() {
  static const std::vector<Device> table = [] {
    std::vector<Device> r;
    int n = 0;
    if (gpuGetDeviceCount(&n) != gpuSuccess) {
      (void)gpuGetLastError();  // no driver / no device: not an error for this query
      return r;
    }
    for (int i = 0; i < n; ++i) {
      gpuDeviceProp_t prop{};
      if (gpuGetDeviceProperties(&prop, i) != gpuSuccess) {
        (void)gpuGetLastError();
        continue;
      }
      Device d;
#if FLASHPLUS_VENDOR_HIP
      d.info.arch = platform::arch_from_gfx_name(prop.gcnArchName);
#else
      d.info.arch = platform::arch_from_cc(prop.major, prop.minor);
#endif
      d.info.multiprocessors = prop.multiProcessorCount;
      d.info.warp_size = prop.warpSize;
      d.info.l2_bytes = prop.l2CacheSize > 0 ? static_cast<size_t>(prop.l2CacheSize) : 0;
      d.info.memory_bytes = prop.totalGlobalMem;
      int optin = 0;
      if (gpuDeviceGetAttribute(&optin, gpuDevAttrMaxSharedMemoryPerBlockOptin, i) != gpuSuccess) {
        (void)gpuGetLastError();
        optin = static_cast<int>(prop.sharedMemPerBlock);
      }
      d.info.smem_per_block_optin = static_cast<size_t>(optin);
      d.desc.backend = kBackend;
      d.desc.index = i;
      d.desc.name = prop.name;
      d.desc.arch = platform::arch_name(d.info.arch);
      d.desc.multiprocessors = prop.multiProcessorCount;
      d.desc.memory_bytes = prop.totalGlobalMem;
      r.push_back(d);
    }
    return r;
  }();
  return table;
}

std::vector<DeviceDesc> devices() {
  std::vector<DeviceDesc> r;
  for (const Device& d : device_table()) r.push_back(d.desc);
  return r;
}

// Makes `index` the current device for the scope, restoring the caller's afterwards.
class DeviceGuard {
 public:
  Status enter(int index) {
    FLASHPLUS_GPU_CHECK(gpuGetDevice(&prev_));
    if (prev_ != index) {
      FLASHPLUS_GPU_CHECK(gpuSetDevice(index));
      switched_ = true;
    }
    return Status::Ok();
  }
  ~DeviceGuard() {
    if (switched_) (void)gpuSetDevice(prev_);
  }

 private:
  int prev_ = 0;
  bool switched_ = false;
};

// FLASHPLUS_GPU_FALLBACK=1 skips the tensor-core family (to test or compare the fallback).
bool force_fallback() {
  static const bool v = [] {
    const char* e = std::getenv("FLASHPLUS_GPU_FALLBACK");
    return e != nullptr && e[0] != '\0' && e[0] != '0';
  }();
  return v;
}

Status check_pointer(const char* name, const void* ptr) {
  if (ptr == nullptr || platform::is_device_pointer(ptr)) return Status::Ok();
  return Status::Invalid(std::string(name) + " is not " + FLASHPLUS_VENDOR_NAME +
                         " device memory");
}

Status prepare(const AttnParams& p, DeviceGuard* guard, DeviceInfo* info) {
  if (p.device != kDeviceKind)
    return Status::Invalid(std::string("tensors are in ") + device_name(p.device) +
                           " memory, not " + device_name(kDeviceKind));
  const auto& table = device_table();
  if (table.empty()) return Status::Unsupported(std::string("no ") + FLASHPLUS_VENDOR_NAME + " device");
  if (p.device_index < 0 || p.device_index >= static_cast<int>(table.size()))
    return Status::Invalid("device index " + std::to_string(p.device_index) + " out of range (" +
                           std::to_string(table.size()) + " devices)");
  FLASHPLUS_RETURN_IF_ERROR(guard->enter(p.device_index));
  *info = table[p.device_index].info;
  // A kernel that dereferences host memory would poison the whole context; refuse it up front.
  const std::pair<const char*, const void*> tensors[] = {
      {"q", p.q},       {"k", p.k},   {"v", p.v},   {"out", p.out},
      {"softmax_lse", p.softmax_lse}, {"alibi_slopes", p.alibi_slopes},
      {"dout", p.dout}, {"dq", p.dq}, {"dk", p.dk}, {"dv", p.dv},
      {"softmax_d", p.softmax_d}};
  for (const auto& t : tensors) FLASHPLUS_RETURN_IF_ERROR(check_pointer(t.first, t.second));
  return Status::Ok();
}

// After a family ran: its own Status, else any launch/async error left behind.
Status finish(const char* what, Status st) {
  if (!st.ok()) return st;
  const gpuError_t e = gpuGetLastError();
  if (e != gpuSuccess) return platform::gpu_status(e, what);
  return Status::Ok();
}

bool is_default(const KernelConfig& c) {
  return c.block_m == 0 && c.block_n == 0 && c.num_warps == 0 && c.stages == 0 &&
         c.num_splits <= 1;
}

// Run the tensor-core family with `cfg`; on no_instance retry its default configuration, then
// the portable fallback.
template <class Tc, class Fb>
Status run_with_fallback(const char* what, const KernelConfig& cfg, Tc tc, Fb fb) {
  if (force_fallback()) return finish(what, fb());
  Status st = tc(cfg);
  if (st.code() != StatusCode::no_instance) return finish(what, std::move(st));
  if (!is_default(cfg)) {
    Status retry = tc(KernelConfig{});
    if (retry.code() != StatusCode::no_instance) return finish(what, std::move(retry));
  }
  return finish(what, fb());
}

Status fwd(const AttnParams& p, const RunOptions& opts) {
  DeviceGuard guard;
  DeviceInfo info;
  FLASHPLUS_RETURN_IF_ERROR(prepare(p, &guard, &info));
  if (p.seqlen_q == 0 || p.batch == 0 || p.nheads == 0) return Status::Ok();
  const auto fb = [&] { return run_fwd_fallback(p, opts.stream); };
  // seqlen_k == 0: every row is empty; the fallback writes out = 0, lse = +inf without a K loop.
  if (p.seqlen_k == 0) return finish("fwd", fb());
  return run_with_fallback(
      "fwd", choose_config(p, info, Pass::fwd),
      [&](const KernelConfig& cfg) { return run_fwd_tc(p, cfg, opts.stream); }, fb);
}

Status bwd(const AttnParams& p, const RunOptions& opts) {
  DeviceGuard guard;
  DeviceInfo info;
  FLASHPLUS_RETURN_IF_ERROR(prepare(p, &guard, &info));
  if (p.batch == 0 || p.nheads == 0) return Status::Ok();
  const auto fb = [&] { return run_bwd_fallback(p, opts.stream); };
  if (p.seqlen_k == 0 || p.seqlen_q == 0) return finish("bwd", fb());  // only zero-filling left
  return run_with_fallback(
      "bwd", choose_config(p, info, Pass::bwd),
      [&](const KernelConfig& cfg) { return run_bwd_tc(p, cfg, opts.stream); }, fb);
}

Status alloc(size_t bytes, void** ptr) {
  *ptr = nullptr;
  if (bytes == 0) return Status::Ok();
  FLASHPLUS_GPU_CHECK(gpuMalloc(ptr, bytes));
  return Status::Ok();
}
void free_mem(void* ptr) {
  if (ptr != nullptr && gpuFree(ptr) != gpuSuccess) (void)gpuGetLastError();
}
Status copy_h2d(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return Status::Ok();
  FLASHPLUS_GPU_CHECK(gpuMemcpy(dst, src, bytes, gpuMemcpyHostToDevice));
  return Status::Ok();
}
Status copy_d2h(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return Status::Ok();
  FLASHPLUS_GPU_CHECK(gpuMemcpy(dst, src, bytes, gpuMemcpyDeviceToHost));
  return Status::Ok();
}
Status synchronize() {
  FLASHPLUS_GPU_CHECK(gpuDeviceSynchronize());
  return Status::Ok();
}

// Events on the default stream; stop_ms answers -1 when the events could not be used.
struct Timer {
  gpuEvent_t start = nullptr, stop = nullptr;
  bool ok = false;
};
void* timer_create() {
  auto* t = new Timer;
  t->ok = gpuEventCreate(&t->start) == gpuSuccess && gpuEventCreate(&t->stop) == gpuSuccess;
  if (!t->ok) (void)gpuGetLastError();
  return t;
}
void timer_destroy(void* p) {
  auto* t = static_cast<Timer*>(p);
  if (t == nullptr) return;
  if (t->start) (void)gpuEventDestroy(t->start);
  if (t->stop) (void)gpuEventDestroy(t->stop);
  delete t;
}
void timer_start(void* p) {
  auto* t = static_cast<Timer*>(p);
  if (t->ok && gpuEventRecord(t->start, nullptr) != gpuSuccess) {
    (void)gpuGetLastError();
    t->ok = false;
  }
}
double timer_stop_ms(void* p) {
  auto* t = static_cast<Timer*>(p);
  float ms = 0.f;
  if (!t->ok || gpuEventRecord(t->stop, nullptr) != gpuSuccess ||
      gpuEventSynchronize(t->stop) != gpuSuccess ||
      gpuEventElapsedTime(&ms, t->start, t->stop) != gpuSuccess) {
    (void)gpuGetLastError();
    return -1.0;
  }
  return ms;
}

}  // namespace

int current_arch(int device_index) {
  const auto& table = device_table();
  if (device_index < 0 || device_index >= static_cast<int>(table.size())) return 0;
  return table[device_index].info.arch;
}

}  // namespace gpu

namespace detail {

FLASHPLUS_GPU_EXPORT const BackendOps* FLASHPLUS_GPU_OPS_FN() {
  static const BackendOps ops = {
      gpu::kBackend,       gpu::kDeviceKind,     gpu::fwd,           gpu::bwd,
      gpu::devices,        gpu::alloc,           gpu::free_mem,      gpu::copy_h2d,
      gpu::copy_d2h,       gpu::synchronize,     gpu::timer_create,  gpu::timer_destroy,
      gpu::timer_start,    gpu::timer_stop_ms,
  };
  return &ops;
}

}  // namespace detail
}  // namespace flashplus
