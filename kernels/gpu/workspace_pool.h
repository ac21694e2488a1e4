// The library's stream-ordered workspace pool, one per device (NVIDIA). The runtime's default
// pool gives its memory back to the driver at every synchronisation (release threshold 0), so a
// call's cudaMallocAsync maps its pages again: 150-180 us of an idle GPU per backward call at
// seqlen 1024 on the H100 (130+ MB of dQ accumulator, docs/PERF.md "Backward on wgmma, round
// 2"), a few us per decoding step. This pool keeps up to kWorkspaceKeep bytes mapped across
// synchronisations. Used by the backward (dQ accumulator, Dsum) and the kv cache (split partials).
#pragma once
#include "platform/gpu_runtime.h"
#if FLASHPLUS_VENDOR_HIP
#error "workspace_pool.h is the NVIDIA path"
#endif

#include <cstdint>
#include <mutex>

#include "flashplus/status.h"

namespace flashplus::gpu {

inline constexpr uint64_t kWorkspaceKeep = uint64_t{2} << 30;

// The pool of device `dev` (created on first use).
inline Status workspace_pool(int dev, cudaMemPool_t* pool) {
  constexpr int kMaxDevices = 64;
  static std::mutex mu;
  static cudaMemPool_t pools[kMaxDevices] = {};
  *pool = nullptr;
  if (dev < 0 || dev >= kMaxDevices) return Status::Unsupported("workspace pool: device index beyond 64");
  std::lock_guard<std::mutex> lock(mu);
  if (pools[dev] == nullptr) {
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = dev;
    cudaMemPool_t created = nullptr;
    FLASHPLUS_GPU_CHECK(cudaMemPoolCreate(&created, &props));
    uint64_t keep = kWorkspaceKeep;
    FLASHPLUS_GPU_CHECK(cudaMemPoolSetAttribute(created, cudaMemPoolAttrReleaseThreshold, &keep));
    pools[dev] = created;
  }
  *pool = pools[dev];
  return Status::Ok();
}

}  // namespace flashplus::gpu
