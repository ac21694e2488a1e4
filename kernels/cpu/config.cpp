// The CPU backend's run-time tile choice (tiles.h): override, tuned table, or the default.
#include "backend.h"
#include "cpu/tiles.h"

namespace flashplus::cpu {
namespace {

thread_local KernelConfig t_last;
thread_local bool t_has_last = false;

// Computed once: device_fingerprint of the CPU device (no list_devices() per call, which would
// probe every GPU backend too).
const std::string& cpu_fingerprint() {
  static const std::string fp = [] {
    const auto devs = detail::cpu_ops()->devices();
    return devs.empty() ? std::string("cpu-unknown") : device_fingerprint(devs[0]);
  }();
  return fp;
}

KernelConfig with_defaults(KernelConfig c) {
  if (c.block_m == 0) c.block_m = kBlockM;
  if (c.block_n == 0) c.block_n = kBlockN;
  return c;
}

}  // namespace

bool tile_supported(int bm, int bn) {
  for (const TileShape& t : kTileShapes)
    if (t.block_m == bm && t.block_n == bn) return true;
  return false;
}

KernelConfig tile_config(const AttnParams& p, const RunOptions& opts, const char* mode) {
  // Short query sequences (decoding: 1 to a few rows) pad a 128-row tile with zeros; the
  // smallest instantiated tile that holds them wastes 4x less (32 rows).
  const int rows = p.seqlen_q;
  const KernelConfig heuristic{rows <= 32 ? 32 : rows <= 64 ? 64 : kBlockM, kBlockN};
  KernelConfig c;
  if (opts.config_override) {
    c = with_defaults(*opts.config_override);
  } else {
    const TuneKey key = tune_key_of(p, "cpu", mode);
    // An entry naming a tile this backend has no instance for: a warning, then the heuristic.
    c = with_defaults(choose_config(
        cpu_fingerprint(), key, heuristic,
        [](const KernelConfig& e) {
          const KernelConfig t = with_defaults(e);
          return tile_supported(t.block_m, t.block_n);
        }));
  }
  // Only the tile shape means anything to the CPU kernels.
  t_last = KernelConfig{c.block_m, c.block_n};
  t_has_last = true;
  return t_last;
}

bool last_config(KernelConfig* out) {
  if (t_has_last && out) *out = t_last;
  return t_has_last;
}

std::vector<KernelConfig> candidates(const TuneKey&) {
  std::vector<KernelConfig> out;
  for (const TileShape& t : kTileShapes) out.push_back(KernelConfig{t.block_m, t.block_n});
  return out;
}

}  // namespace flashplus::cpu
