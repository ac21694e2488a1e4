// The GPU backend's host side: devices, memory, timers, and fwd/bwd dispatch (tensor-core family
// first, portable fallback on no_instance). One source for both vendors: compiled by nvcc it
// defines flashplus::detail::cuda_ops(), compiled by hipcc (kernels/gpu/CMakeLists.txt) it
// defines hip_ops(). Every runtime call is checked and mapped to Status::Runtime.
#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "backend.h"
#include "gpu/gpu_kernels.h"
#include "gpu/heuristics.h"
#include "gpu/kvcache/kvcache.h"
#include "platform/arch.h"
#include "platform/env.h"
#include "platform/gpu_runtime.h"

#if !FLASHPLUS_VENDOR_HIP
#include <cublas_v2.h>  // types and signatures only: cuBLAS is loaded at run time (dlopen)
#endif

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
  std::string fingerprint;  // device_fingerprint(desc): which tuned table applies
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
      d.fingerprint = device_fingerprint(d.desc);
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

Status check_pointer(const char* name, const void* ptr) {
  if (ptr == nullptr || platform::is_device_pointer(ptr)) return Status::Ok();
  return Status::Invalid(std::string(name) + " is not " + FLASHPLUS_VENDOR_NAME +
                         " device memory");
}

Status prepare(const AttnParams& p, DeviceGuard* guard, const Device** dev) {
  if (p.device != kDeviceKind)
    return Status::Invalid(std::string("tensors are in ") + device_name(p.device) +
                           " memory, not " + device_name(kDeviceKind));
  const auto& table = device_table();
  if (table.empty()) return Status::Unsupported(std::string("no ") + FLASHPLUS_VENDOR_NAME + " device");
  if (p.device_index < 0 || p.device_index >= static_cast<int>(table.size()))
    return Status::Invalid("device index " + std::to_string(p.device_index) + " out of range (" +
                           std::to_string(table.size()) + " devices)");
  FLASHPLUS_RETURN_IF_ERROR(guard->enter(p.device_index));
  *dev = &table[p.device_index];
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

// The configuration the last fwd/bwd on this host thread ran with (zeros: the portable fallback).
thread_local KernelConfig t_last;
thread_local bool t_has_last = false;

bool last_config(KernelConfig* out) {
  if (t_has_last && out) *out = t_last;
  return t_has_last;
}

std::vector<KernelConfig> tc_configs(Pass pass, int head_dim) {
  return pass == Pass::fwd ? fwd_tc_configs(head_dim) : bwd_tc_configs(head_dim);
}

// The tile to try first: the tuned table's entry for this kernel key, else the heuristic. An entry
// whose tile this build did not compile (tc_configs: a stale or foreign table) is a warning and
// the heuristic (flashplus::choose_config).
KernelConfig pick_config(const AttnParams& p, const Device& dev, Pass pass) {
  const TuneKey key = tune_key_of(p, dev.desc.arch, pass == Pass::fwd ? "fwd" : "bwd");
  const auto compiled = [&](const KernelConfig& e) {
    if (is_default(e)) return true;
    // The compiled tiles per (device, pass, head-dim bucket), listed once (asked only when the
    // table has an entry for the call's key).
    static std::mutex mu;
    static std::map<std::tuple<int, int, int>, std::vector<KernelConfig>> lists;
    std::vector<KernelConfig> tiles;
    {
      std::lock_guard<std::mutex> lock(mu);
      const auto k = std::make_tuple(p.device_index, static_cast<int>(pass),
                                     flashplus::head_dim_bucket(p.head_dim));
      auto it = lists.find(k);
      if (it == lists.end()) it = lists.emplace(k, tc_configs(pass, p.head_dim)).first;
      tiles = it->second;
    }
    for (const KernelConfig& c : tiles)
      if (c.block_m == e.block_m && c.block_n == e.block_n && c.num_warps == e.num_warps &&
          (c.stages == 0 || e.stages == 0 || c.stages == e.stages))
        return true;
    return false;
  };
  return flashplus::choose_config(dev.fingerprint, key, gpu::choose_config(p, dev.info, pass),
                                  compiled);
}

// Run the tensor-core family with the chosen configuration; on no_instance (a tile that does not
// take this call) retry its default configuration, then the portable fallback. An explicit
// RunOptions::config_override is run as given (no_instance when it is not compiled), so autotune
// measures exactly what it asked for.
template <class Tc, class Fb>
Status run_family(const char* what, const AttnParams& p, const RunOptions& opts,
                  const Device& dev, Pass pass, Tc tc, Fb fb) {
  auto ran = [&](const KernelConfig& c, bool on_tc) {
    if (!on_tc) {
      t_last = KernelConfig{};
    } else if (is_default(c)) {
      const auto all = tc_configs(pass, p.head_dim);
      t_last = all.empty() ? KernelConfig{} : all.front();
    } else {
      t_last = c;
    }
    t_has_last = true;
  };
  if (opts.config_override) {
    Status st = tc(*opts.config_override);
    if (st.ok()) ran(*opts.config_override, true);
    return finish(what, std::move(st));
  }
  if (env::gpu_fallback()) {
    ran({}, false);
    return finish(what, fb());
  }
  const KernelConfig cfg = pick_config(p, dev, pass);
  Status st = tc(cfg);
  if (st.code() != StatusCode::no_instance) {
    if (st.ok()) ran(cfg, true);
    return finish(what, std::move(st));
  }
  if (!is_default(cfg)) {
    Status retry = tc(KernelConfig{});
    if (retry.code() != StatusCode::no_instance) {
      if (retry.ok()) ran(KernelConfig{}, true);
      return finish(what, std::move(retry));
    }
  }
  ran({}, false);
  return finish(what, fb());
}

// mha_fwd_kvcache: pre-pass (append, rotary), attention, combine (kernels/gpu/kvcache).
Status fwd_kvcache(const AttnParams& p, const RunOptions& opts, const Device& dev) {
  const std::pair<const char*, const void*> tensors[] = {
      {"k_new", p.k_new},           {"v_new", p.v_new},
      {"cache_seqlens", p.cache_seqlens}, {"cache_batch_idx", p.cache_batch_idx},
      {"cache_leftpad", p.cache_leftpad}, {"block_table", p.block_table},
      {"rotary_cos", p.rotary_cos}, {"rotary_sin", p.rotary_sin}};
  for (const auto& t : tensors) FLASHPLUS_RETURN_IF_ERROR(check_pointer(t.first, t.second));
  // What the tensor-core family does not take (fp32, head_dim not a multiple of 8, unaligned
  // rows, HIP), and FLASHPLUS_GPU_FALLBACK=1, run the portable path.
  if (env::gpu_fallback() || !kvcache_supports(p).ok()) {
    t_last = KernelConfig{};
    t_has_last = true;
    return finish("fwd_kvcache (fallback)", run_kvcache_fallback(p, opts.stream));
  }
  const KernelConfig cfg = opts.config_override ? *opts.config_override : env::kvcache_config();
  KernelConfig used;
  Status st = run_kvcache(p, cfg, dev.info, opts.stream, env::kvcache_check(), &used);
  if (st.ok()) {
    t_last = used;
    t_has_last = true;
  }
  return finish("fwd_kvcache", std::move(st));
}

Status fwd(const AttnParams& p, const RunOptions& opts) {
  DeviceGuard guard;
  const Device* dev = nullptr;
  FLASHPLUS_RETURN_IF_ERROR(prepare(p, &guard, &dev));
  if (p.is_kvcache) return p.batch == 0 ? Status::Ok() : fwd_kvcache(p, opts, *dev);
  if (p.zero_tensors) FLASHPLUS_RETURN_IF_ERROR(finish("fwd", zero_fwd_outputs(p, opts.stream)));
  if (p.seqlen_q == 0 || p.batch == 0 || p.nheads == 0) return Status::Ok();
  const auto fb = [&] { return run_fwd_fallback(p, opts.stream); };
  // seqlen_k == 0: every row is empty; the fallback writes out = 0, lse = +inf without a K loop.
  if (p.seqlen_k == 0) return finish("fwd", fb());
  return run_family(
      "fwd", p, opts, *dev, Pass::fwd,
      [&](const KernelConfig& cfg) { return run_fwd_tc(p, cfg, opts.stream); }, fb);
}

Status bwd(const AttnParams& p, const RunOptions& opts) {
  DeviceGuard guard;
  const Device* dev = nullptr;
  FLASHPLUS_RETURN_IF_ERROR(prepare(p, &guard, &dev));
  if (p.zero_tensors) FLASHPLUS_RETURN_IF_ERROR(finish("bwd", zero_bwd_outputs(p, opts.stream)));
  if (p.batch == 0 || p.nheads == 0) return Status::Ok();
  const auto fb = [&] { return run_bwd_fallback(p, opts.stream); };
  if (p.seqlen_k == 0 || p.seqlen_q == 0) return finish("bwd", fb());  // only zero-filling left
  return run_family(
      "bwd", p, opts, *dev, Pass::bwd,
      [&](const KernelConfig& cfg) { return run_bwd_tc(p, cfg, opts.stream); }, fb);
}

Status dmask(const AttnParams& p, const RunOptions& opts) {
  DeviceGuard guard;
  const Device* dev = nullptr;
  FLASHPLUS_RETURN_IF_ERROR(prepare(p, &guard, &dev));
  FLASHPLUS_RETURN_IF_ERROR(check_pointer("s_dmask", p.s_dmask));
  return finish("S_dmask", run_dmask(p, opts.stream));
}

// Autotune's candidates: the tensor-core family's compiled tiles (none for fp32 storage, which
// only the fallback runs).
std::vector<KernelConfig> candidates(const TuneKey& key) {
  if (key.dtype != DType::f16 && key.dtype != DType::bf16) return {};
  return tc_configs(key.mode == "bwd" ? Pass::bwd : Pass::fwd, key.head_dim_bucket);
}

// Times `reps` device-to-device copies of `bytes` from a to b (after one warm-up copy).
Status time_copies(void* a, void* b, size_t bytes, int reps, gpuEvent_t e0, gpuEvent_t e1,
                   std::vector<float>* ms) {
  FLASHPLUS_GPU_CHECK(gpuMemset(a, 1, bytes));
  for (int i = 0; i <= reps; ++i) {
    float t = 0.f;
    FLASHPLUS_GPU_CHECK(gpuEventRecord(e0, nullptr));
    FLASHPLUS_GPU_CHECK(gpuMemcpy(b, a, bytes, gpuMemcpyDeviceToDevice));
    FLASHPLUS_GPU_CHECK(gpuEventRecord(e1, nullptr));
    FLASHPLUS_GPU_CHECK(gpuEventSynchronize(e1));
    FLASHPLUS_GPU_CHECK(gpuEventElapsedTime(&t, e0, e1));
    if (i > 0) ms->push_back(t);
  }
  return Status::Ok();
}

// Copy bandwidth of device 0: 1 GiB device-to-device copies, bytes read + written per second,
// the median of 5.
Status measure_copy_gbs(double* gbs) {
  if (device_table().empty())
    return Status::Unsupported(std::string("no ") + FLASHPLUS_VENDOR_NAME + " device");
  const size_t bytes = size_t{1} << 30;
  void* a = nullptr;
  void* b = nullptr;
  gpuEvent_t e0 = nullptr, e1 = nullptr;
  std::vector<float> ms;
  const bool ready = gpuMalloc(&a, bytes) == gpuSuccess && gpuMalloc(&b, bytes) == gpuSuccess &&
                     gpuEventCreate(&e0) == gpuSuccess && gpuEventCreate(&e1) == gpuSuccess;
  const gpuError_t setup_err = ready ? gpuSuccess : gpuGetLastError();
  const Status st = ready ? time_copies(a, b, bytes, 5, e0, e1, &ms)
                    : setup_err != gpuSuccess
                        ? platform::gpu_status(setup_err, "copy bandwidth setup")
                        : Status::Runtime("copy bandwidth setup failed");
  if (e0) (void)gpuEventDestroy(e0);
  if (e1) (void)gpuEventDestroy(e1);
  if (a) (void)gpuFree(a);
  if (b) (void)gpuFree(b);
  if (!st.ok()) return st;
  std::sort(ms.begin(), ms.end());
  *gbs = 2.0 * static_cast<double>(bytes) / (ms[ms.size() / 2] * 1e-3) / 1e9;
  return Status::Ok();
}

#if !FLASHPLUS_VENDOR_HIP
// Dense matmul throughput of device 0: the vendor's bf16 GEMM (cuBLAS, fp32 accumulation),
// 8192^3, median of 10 after 2 warm-ups, as peer_bench.py measures it through PyTorch. cuBLAS is
// opened at run time so the library never links it; without it the peak is "not measured".
Status measure_matmul_tflops(double* tflops) {
  if (device_table().empty())
    return Status::Unsupported(std::string("no ") + FLASHPLUS_VENDOR_NAME + " device");
  void* lib = nullptr;
  for (const char* name : {"libcublas.so.13", "libcublas.so.12", "libcublas.so"})
    if ((lib = dlopen(name, RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
  if (lib == nullptr) return Status::Unsupported("cuBLAS (libcublas.so) not found to measure the matmul peak");
  auto create = reinterpret_cast<decltype(&cublasCreate_v2)>(dlsym(lib, "cublasCreate_v2"));
  auto destroy = reinterpret_cast<decltype(&cublasDestroy_v2)>(dlsym(lib, "cublasDestroy_v2"));
  using GemmEx = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int,
                                    int, const void*, const void*, cudaDataType, int, const void*,
                                    cudaDataType, int, const void*, void*, cudaDataType, int,
                                    cublasComputeType_t, cublasGemmAlgo_t);
  auto gemm = reinterpret_cast<GemmEx>(dlsym(lib, "cublasGemmEx"));
  if (!create || !destroy || !gemm) {
    dlclose(lib);
    return Status::Unsupported("cuBLAS lacks cublasGemmEx");
  }
  const int n = 8192;
  const size_t bytes = size_t{n} * n * 2;
  void *a = nullptr, *b = nullptr, *c = nullptr;
  gpuEvent_t e0 = nullptr, e1 = nullptr;
  cublasHandle_t h = nullptr;
  std::vector<float> ms;
  const bool ready = gpuMalloc(&a, bytes) == gpuSuccess && gpuMalloc(&b, bytes) == gpuSuccess &&
                     gpuMalloc(&c, bytes) == gpuSuccess &&
                     gpuMemset(a, 0x3c, bytes) == gpuSuccess &&  // bf16 0x3c3c ~ 0.0115, not 0
                     gpuMemset(b, 0x3d, bytes) == gpuSuccess &&
                     gpuEventCreate(&e0) == gpuSuccess && gpuEventCreate(&e1) == gpuSuccess &&
                     create(&h) == CUBLAS_STATUS_SUCCESS;
  const float one = 1.f, zero = 0.f;
  bool ok = ready;
  for (int i = 0; ok && i < 12; ++i) {
    float t = 0.f;
    ok = gpuEventRecord(e0, nullptr) == gpuSuccess &&
         gemm(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, CUDA_R_16BF, n, b, CUDA_R_16BF, n,
              &zero, c, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) ==
             CUBLAS_STATUS_SUCCESS &&
         gpuEventRecord(e1, nullptr) == gpuSuccess && gpuEventSynchronize(e1) == gpuSuccess &&
         gpuEventElapsedTime(&t, e0, e1) == gpuSuccess;
    if (ok && i >= 2) ms.push_back(t);
  }
  const gpuError_t err = gpuGetLastError();
  if (h) destroy(h);
  if (e0) (void)gpuEventDestroy(e0);
  if (e1) (void)gpuEventDestroy(e1);
  for (void* p : {a, b, c})
    if (p) (void)gpuFree(p);
  dlclose(lib);
  if (!ok || ms.empty())
    return err != gpuSuccess ? platform::gpu_status(err, "cuBLAS bf16 GEMM for the matmul peak")
                             : Status::Runtime("cuBLAS bf16 GEMM for the matmul peak failed");
  std::sort(ms.begin(), ms.end());
  *tflops = 2.0 * n * double(n) * n / (ms[ms.size() / 2] * 1e-3) / 1e12;
  return Status::Ok();
}
#endif

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

#if !FLASHPLUS_VENDOR_HIP
// One thread spinning on the global timer for `ns` nanoseconds (runtime::delay).
__global__ void delay_kernel(unsigned long long ns) {
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}
#endif
Status delay(double us) {
#if FLASHPLUS_VENDOR_HIP
  (void)us;
  return Status::Unsupported("the HIP backend has no delay kernel yet");
#else
  if (!(us >= 0) || us > 1e6) return Status::Invalid("delay: 0 to 1e6 microseconds");
  delay_kernel<<<1, 1>>>(static_cast<unsigned long long>(us * 1000.0));
  FLASHPLUS_GPU_CHECK_LAUNCH("delay_kernel");
  return Status::Ok();
#endif
}

// runtime::flush_l2: one scratch buffer per device, grown on demand, zeroed by a stream-ordered
// memset on the default stream.
Status flush_l2(size_t bytes) {
  constexpr int kMaxDev = 64;
  static void* buf[kMaxDev] = {};
  static size_t cap[kMaxDev] = {};
  static std::mutex mu;
  if (bytes == 0) return Status::Ok();
  int dev = 0;
  FLASHPLUS_GPU_CHECK(gpuGetDevice(&dev));
  if (dev < 0 || dev >= kMaxDev) return Status::Unsupported("flush_l2: device index beyond 64");
  void* p = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (cap[dev] < bytes) {
      if (buf[dev] != nullptr) FLASHPLUS_GPU_CHECK(gpuFree(buf[dev]));
      buf[dev] = nullptr;
      cap[dev] = 0;
      FLASHPLUS_GPU_CHECK(gpuMalloc(&buf[dev], bytes));
      cap[dev] = bytes;
    }
    p = buf[dev];
  }
  FLASHPLUS_GPU_CHECK(gpuMemsetAsync(p, 0, bytes, nullptr));
  return Status::Ok();
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
      /*features=*/detail::kFeatureVarlen | detail::kFeatureDropout | detail::kFeatureKvcache,
      /*measure_copy_gbs=*/gpu::measure_copy_gbs,
#if FLASHPLUS_VENDOR_HIP
      /*measure_matmul_tflops=*/nullptr,  // no rocBLAS loader yet
#else
      /*measure_matmul_tflops=*/gpu::measure_matmul_tflops,
#endif
      /*candidates=*/gpu::candidates,
      /*last_config=*/gpu::last_config,
      /*dmask=*/gpu::dmask,
      /*delay=*/gpu::delay,
      /*flush_l2=*/gpu::flush_l2,
  };
  return &ops;
}

}  // namespace detail
}  // namespace flashplus
