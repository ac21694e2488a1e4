// The one dispatch point: each backend fills a BackendOps table; dispatch.cpp picks one.
// Internal header (not installed).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "flashplus/api.h"
#include "flashplus/params.h"
#include "flashplus/status.h"
#include "flashplus/tuning.h"

namespace flashplus::detail {

// Optional features a backend implements (BackendOps::features). dispatch.cpp refuses a call
// that needs one the chosen backend lacks, before calling it.
enum BackendFeature : uint32_t {
  kFeatureVarlen = 1u << 0,   // cu_seqlens (packed variable-length batches), fwd and bwd
  kFeatureKvcache = 1u << 1,  // kv cache: paged/contiguous cache, append, rotary, num_splits
  kFeatureDropout = 1u << 2,  // p_dropout > 0
};

struct BackendOps {
  Backend backend;
  DeviceKind device_kind;
  // Attention. Params are validated; the backend only decides if it can run them.
  Status (*fwd)(const AttnParams& p, const RunOptions& opts);
  Status (*bwd)(const AttnParams& p, const RunOptions& opts);
  // Devices visible to this backend (empty when none).
  std::vector<DeviceDesc> (*devices)();
  // Memory and timing.
  Status (*alloc)(size_t bytes, void** ptr);
  void (*free)(void* ptr);
  Status (*copy_h2d)(void* dst, const void* src, size_t bytes);
  Status (*copy_d2h)(void* dst, const void* src, size_t bytes);
  Status (*synchronize)();
  void* (*timer_create)();
  void (*timer_destroy)(void* t);
  void (*timer_start)(void* t);
  double (*timer_stop_ms)(void* t);
  // BackendFeature bits. Last, so positional initialisers that predate it leave it 0.
  uint32_t features = 0;
  // ---- optional (nullptr = the backend does not provide it); after `features` for the same
  // reason: positional initialisers that predate them leave them null -----------------------
  // Measured peaks of device 0 (`flashplus bench --peaks`): copy bandwidth in GB/s (bytes read +
  // bytes written per second) and dense matmul TFLOP/s (the backend's own GEMM, its best dtype).
  Status (*measure_copy_gbs)(double* gbs) = nullptr;
  Status (*measure_matmul_tflops)(double* tflops) = nullptr;
  // Kernel configurations `flashplus autotune` may try for a key (each one the backend can run).
  std::vector<KernelConfig> (*candidates)(const TuneKey& key) = nullptr;
  // The configuration the most recent fwd/bwd call on this host thread ran with; false if none.
  bool (*last_config)(KernelConfig* out) = nullptr;
  // return_softmax: fill p.s_dmask (kernels/src/dmask.h) after fwd() wrote softmax_lse.
  Status (*dmask)(const AttnParams& p, const RunOptions& opts) = nullptr;
  // Enqueue a kernel that keeps the default stream busy for about `us` microseconds
  // (runtime::delay).
  Status (*delay)(double us) = nullptr;
  // Enqueue a write of `bytes` of zeros into a device scratch buffer on the default stream
  // (runtime::flush_l2).
  Status (*flush_l2)(size_t bytes) = nullptr;
};

// Always present.
const BackendOps* cpu_ops();
// Present when FLASHPLUS_HAVE_CUDA / FLASHPLUS_HAVE_HIP are defined (kernels/gpu/).
const BackendOps* cuda_ops();
const BackendOps* hip_ops();

// nullptr when `b` was not compiled in. auto_select is resolved by the caller.
const BackendOps* ops_for(Backend b);

}  // namespace flashplus::detail
