// The kernel registry: every kernel instance compiled into this library, one entry per
// (family, dtype, head dim, tile), generated with the instances from kernels/registry/spec.json
// (gen_registry.py). What a build leaves out (no CUDA / HIP, FLASHPLUS_HEAD_DIMS, FLASHPLUS_DTYPES,
// no sm_90a target) is simply absent. `flashplus info --kernels` prints it.
#pragma once
#include <cstddef>

namespace flashplus {

struct KernelEntry {
  const char* name;      // stable name: <family>_<dtype>_d<D>_<tile>, e.g. fwd_sm90_bf16_d128_m128n128s2
  const char* family;    // fwd, fwd_sm90, fwd_sm90_var, bwd, bwd_gmma, bwd_var, kvcache, cpu, ...
  const char* vendor;    // cuda, hip or cpu
  const char* arch;      // architecture predicate: sm_80+ (runs on sm_80 and newer), sm_90a, gfx90a, cpu
  const char* mma;       // matrix instructions: mma.sync, wgmma, mfma, gemm (CPU micro-kernel)
  const char* dtype;     // storage dtype (f16, bf16); "any" for the CPU backend
  int head_dim;          // head-dim bucket (calls with head_dim <= it); 0 = every head dim (CPU)
  const char* variant;   // the call kinds it serves, comma-separated (dense, varlen, dropout, ...)
  const char* tile;      // tile name: m<block_m>n<block_n>[w<warps>][s<stages>]
  const char* instance;  // the entry point (translation unit) it lives in
  const char* reason;    // why this tile exists (the spec's one-line reason)
};

struct KernelTable {
  const KernelEntry* entries;
  size_t size;
  const KernelEntry* begin() const { return entries; }
  const KernelEntry* end() const { return entries + size; }
};

// The registry of this binary: GPU entries of the vendors built, then the CPU backend's tiles.
KernelTable kernel_registry();

}  // namespace flashplus
