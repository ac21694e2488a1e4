// Run-time choice of the CPU micro-kernels' instruction set, made in one place (isa.cpp).
//
// One binary runs on any x86-64 (or aarch64): the CPU is probed once, and the best path it can
// run is used (avx512bf16 only on request, see active_isa) unless FLASHPLUS_CPU_ISA (read only
// here; docs/ENV.md "CPU ISA") or set_isa() (tests) asks for another. Paths, lowest first:
//   scalar      the portable baseline build (SSE2 on x86-64; NEON is part of aarch64's baseline)
//   avx2        AVX2 + FMA: 8-wide fp32 FMA micro-kernels
//   avx512      AVX-512 F/BW/VL: 16-wide fp32 FMA micro-kernels
//   avx512bf16  avx512 plus AVX512_BF16: bf16 inputs' Q K^T and dO V^T through vdpbf16ps on
//               bf16 pairs (fp32 accumulation); everything else as avx512
//   neon        aarch64: the baseline kernels (NEON), named so `flashplus info` says so
// Internal header (no dependencies, so the CLI's `info` can include it).
#pragma once
#include <string>
#include <vector>

namespace flashplus::cpu {

enum class Isa { scalar = 0, avx2 = 1, avx512 = 2, avx512bf16 = 3, neon = 4 };

const char* isa_name(Isa isa);
// "scalar", "avx2", "avx512", "avx512bf16", "neon" (exact, lower case).
bool parse_isa(const std::string& s, Isa* out);

// Whether this CPU (and this build) can run `isa`.
bool isa_supported(Isa isa);
// The best path this CPU runs (probed once).
Isa detected_isa();
// Every path this CPU runs, lowest first (always starts with scalar).
std::vector<Isa> supported_isas();

// The path the kernels use now: set_isa()'s, else FLASHPLUS_CPU_ISA's, else the default: the
// detected path, except that avx512bf16 is opt-in (its vdpbf16ps kernel measured slower than the
// fp32 AVX-512 one on the dev machine, isa.cpp), so a CPU with AVX512_BF16 defaults to avx512.
// An environment value the CPU cannot run falls back, with one warning on stderr, to the
// highest supported path not above it (a path of the other architecture: scalar); an unknown
// value is ignored with a warning.
Isa active_isa();
// Force a path for this process (tests); false, and nothing changes, when the CPU cannot run it.
bool set_isa(Isa isa);
// Back to the environment's / detected choice.
void reset_isa();

// set_isa for a scope (tests): restores the previous forced state on destruction.
class ScopedIsa {
 public:
  explicit ScopedIsa(Isa isa);
  ~ScopedIsa();
  ScopedIsa(const ScopedIsa&) = delete;
  ScopedIsa& operator=(const ScopedIsa&) = delete;
  bool ok() const { return ok_; }

 private:
  int prev_;
  bool ok_;
};

}  // namespace flashplus::cpu
