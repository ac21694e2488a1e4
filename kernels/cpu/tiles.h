// The CPU kernels' tile shapes, as data (STYLE.md 5): a checked compile-time table of the
// (block_m, block_n) pairs fwd.cpp and bwd.cpp are instantiated for, and the run-time choice
// among them (RunOptions::config_override, else the tuned table, else the default kBlockM x
// kBlockN of cpu_kernels.h). Internal header.
#pragma once
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/cpu_kernels.h"
#include "flashplus/tuning.h"
#include "flashplus_gen/tiles.h"  // FLASHPLUS_CPU_TILES, generated from kernels/registry/spec.json

namespace flashplus::cpu {

struct TileShape {
  int block_m, block_n;
};
// Every instantiated shape (FLASHPLUS_CPU_TILES(X), X(BM, BN): the spec's "cpu" tiles).
// block_m: query rows per work item; block_n: keys per main-loop step.
#define FLASHPLUS_CPU_TILE_SHAPE(M, N) TileShape{M, N},
inline constexpr TileShape kTileShapes[] = {FLASHPLUS_CPU_TILES(FLASHPLUS_CPU_TILE_SHAPE)};
#undef FLASHPLUS_CPU_TILE_SHAPE
constexpr bool tiles_ok() {
  for (const TileShape& t : kTileShapes)
    if (t.block_m % kMr || t.block_n % kNr || t.block_m % kNr) return false;
  return true;
}
static_assert(tiles_ok(), "every tile must be whole GEMM micro-tiles (cpu_kernels.h)");

template <int V>
using Int = std::integral_constant<int, V>;

// f(Int<BM>{}, Int<BN>{}) for the instantiated shape (bm, bn); no_instance for any other.
template <class F>
Status with_tile(int bm, int bn, F&& f) {
#define FLASHPLUS_CPU_TILE(M, N) \
  if (bm == M && bn == N) return f(Int<M>{}, Int<N>{});
  FLASHPLUS_CPU_TILES(FLASHPLUS_CPU_TILE)
#undef FLASHPLUS_CPU_TILE
  return Status(StatusCode::no_instance,
                "cpu backend: no kernel instance for tile m" + std::to_string(bm) + "n" +
                    std::to_string(bn));
}

// Whether (bm, bn) is in kTileShapes.
bool tile_supported(int bm, int bn);

// The tile this call runs with (config.cpp): opts.config_override when set (its block_m/block_n;
// 0 = the default), else the tuned table's entry for the call's TuneKey, else the default; an
// unsupported tuned entry falls back to the default with one warning. Records the choice for
// last_config() (thread-local). `mode` is "fwd" or "bwd".
KernelConfig tile_config(const AttnParams& p, const RunOptions& opts, const char* mode);

// The configuration the most recent fwd/bwd on this thread ran with; false before any call.
bool last_config(KernelConfig* out);

// The tuning candidates of a key: every instantiated shape.
std::vector<KernelConfig> candidates(const TuneKey& key);

// Peaks (peaks.cpp): fp32 GEMM TFLOP/s through gemm_acc on every thread, memcpy GB/s.
Status measure_matmul_tflops(double* tflops);
Status measure_copy_gbs(double* gbs);

}  // namespace flashplus::cpu
