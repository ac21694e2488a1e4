// The environment variables the library reads (docs/ENV.md), the GPU half's in one place. Each is
// read once per process, on first use. FLASHPLUS_TUNED_TABLE is read by the tuned-table search
// (kernels/src/tuning.cpp), on every search.
#pragma once
#include <cstdio>
#include <cstdlib>

#include "flashplus/tuning.h"

namespace flashplus::env {

namespace detail {
// Unset or empty: `dflt`; else false when the value starts with '0', true otherwise.
inline bool flag(const char* name, bool dflt) {
  const char* e = std::getenv(name);
  if (e == nullptr || e[0] == '\0') return dflt;
  return e[0] != '0';
}
}  // namespace detail

// FLASHPLUS_GPU_FALLBACK=1: every GPU call runs the portable path (kernels/gpu/fallback), not the
// tensor-core families (to verify that path on a device that has them). Default off.
inline bool gpu_fallback() {
  static const bool v = detail::flag("FLASHPLUS_GPU_FALLBACK", false);
  return v;
}

// FLASHPLUS_GPU_FWD_SM90: 0 = the forward never takes the Hopper (wgmma) family, so an sm_90
// device runs the mma.sync family (what sm_80 runs; its tables in docs/PERF.md); 1 (default) =
// the default configuration and the family's own tiles (num_warps 12) run it; 2 = every forward
// call it can take runs it, whatever tile the tuned table or the heuristics named (to verify the
// family on a suite's small shapes too).
inline int gpu_fwd_sm90_mode() {
  static const int v = [] {
    const char* e = std::getenv("FLASHPLUS_GPU_FWD_SM90");
    if (e == nullptr || e[0] == '\0') return 1;
    return e[0] == '0' ? 0 : e[0] == '2' ? 2 : 1;
  }();
  return v;
}

// FLASHPLUS_KVCACHE_CHECK=0: kv-cache calls do not read the kernels' index-error flags back
// (out-of-range indices are still never read, only no longer reported). Default on.
inline bool kvcache_check() {
  static const bool v = detail::flag("FLASHPLUS_KVCACHE_CHECK", true);
  return v;
}

// FLASHPLUS_KVCACHE_CONFIG=block_n,num_warps,stages[,num_splits]: the kv-cache tile to run when
// the call names none (a tile sweep with `flashplus bench`); unset or malformed: all zero (the
// heuristics' pick).
inline KernelConfig kvcache_config() {
  static const KernelConfig v = [] {
    KernelConfig c;
    const char* e = std::getenv("FLASHPLUS_KVCACHE_CONFIG");
    if (e != nullptr && std::sscanf(e, "%d,%d,%d,%d", &c.block_n, &c.num_warps, &c.stages,
                                    &c.num_splits) < 3)
      c = KernelConfig{};
    return c;
  }();
  return v;
}

}  // namespace flashplus::env
