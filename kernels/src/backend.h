// The one dispatch point: each backend fills a BackendOps table; dispatch.cpp picks one.
// Internal header (not installed).
#pragma once
#include <cstddef>
#include <vector>

#include "flashplus/api.h"
#include "flashplus/params.h"
#include "flashplus/status.h"

namespace flashplus::detail {

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
};

// Always present.
const BackendOps* cpu_ops();
// Present when FLASHPLUS_HAVE_CUDA / FLASHPLUS_HAVE_HIP are defined (kernels/gpu/).
const BackendOps* cuda_ops();
const BackendOps* hip_ops();

// nullptr when `b` was not compiled in. auto_select is resolved by the caller.
const BackendOps* ops_for(Backend b);

}  // namespace flashplus::detail
