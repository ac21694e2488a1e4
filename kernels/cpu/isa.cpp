// CPU ISA detection and the one place FLASHPLUS_CPU_ISA is read (isa.h).
#include "cpu/isa.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>

namespace flashplus::cpu {

namespace {

constexpr int kUnset = -1;
std::atomic<int> g_forced{kUnset};  // set_isa(); kUnset = none

bool probe(Isa isa) {
  switch (isa) {
    case Isa::scalar: return true;
#if defined(__x86_64__) && defined(__GNUC__)
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::avx512:
      return probe(Isa::avx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    case Isa::avx512bf16:
      return probe(Isa::avx512) && __builtin_cpu_supports("avx512bf16");
    case Isa::neon: return false;
#elif defined(__aarch64__)
    case Isa::neon: return true;  // part of the aarch64 baseline
    default: return false;
#else
    default: return false;
#endif
  }
  return false;
}

// The order of this architecture's paths, lowest first.
#if defined(__aarch64__)
constexpr Isa kChain[] = {Isa::scalar, Isa::neon};
#else
constexpr Isa kChain[] = {Isa::scalar, Isa::avx2, Isa::avx512, Isa::avx512bf16};
#endif

const bool* supported_table() {
  static const bool* t = [] {
    static bool s[5];
    for (int i = 0; i < 5; ++i) s[i] = probe(static_cast<Isa>(i));
    return s;
  }();
  return t;
}

// Highest supported path of kChain not above `want` (scalar for the other architecture's names).
Isa fall_back(Isa want) {
  Isa best = Isa::scalar;
  for (Isa i : kChain) {
    if (isa_supported(i)) best = i;
    if (i == want) return best;
  }
  return Isa::scalar;
}

// The default path: the best one the CPU runs, except that avx512bf16 is opt-in. Its vdpbf16ps
// kernel ran at half the fp32 AVX-512 kernel's throughput on the 2-core dev machine (Xeon; one
// thread, 128 x 64 x 128: ~37-59 vs ~65-74 GFLOP/s, about the AVX2 kernel's), and the bf16
// forward was ~5% slower end to end, so avx512 is the default until a CPU shows otherwise.
Isa default_isa() {
  const Isa det = detected_isa();
  return det == Isa::avx512bf16 ? Isa::avx512 : det;
}

Isa from_env() {
  static const Isa chosen = [] {
    const Isa det = default_isa();
    const char* e = std::getenv("FLASHPLUS_CPU_ISA");
    if (!e || !*e) return det;
    Isa want;
    if (!parse_isa(e, &want)) {
      std::fprintf(stderr,
                   "flashplus: warning: FLASHPLUS_CPU_ISA=%s is not one of scalar, avx2, avx512, "
                   "avx512bf16, neon; using %s\n", e, isa_name(det));
      return det;
    }
    if (isa_supported(want)) return want;
    const Isa fb = fall_back(want);
    std::fprintf(stderr, "flashplus: warning: FLASHPLUS_CPU_ISA=%s: this CPU cannot run it; using %s\n",
                 e, isa_name(fb));
    return fb;
  }();
  return chosen;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::avx512bf16: return "avx512bf16";
    case Isa::neon: return "neon";
  }
  return "?";
}

bool parse_isa(const std::string& s, Isa* out) {
  for (int i = 0; i < 5; ++i)
    if (s == isa_name(static_cast<Isa>(i))) {
      *out = static_cast<Isa>(i);
      return true;
    }
  return false;
}

bool isa_supported(Isa isa) {
  const int i = static_cast<int>(isa);
  return i >= 0 && i < 5 && supported_table()[i];
}

Isa detected_isa() {
  static const Isa best = [] {
    Isa b = Isa::scalar;
    for (Isa i : kChain)
      if (isa_supported(i)) b = i;
    return b;
  }();
  return best;
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> v;
  for (Isa i : kChain)
    if (isa_supported(i)) v.push_back(i);
  return v;
}

Isa active_isa() {
  const int f = g_forced.load(std::memory_order_relaxed);
  return f == kUnset ? from_env() : static_cast<Isa>(f);
}

bool set_isa(Isa isa) {
  if (!isa_supported(isa)) return false;
  g_forced.store(static_cast<int>(isa), std::memory_order_relaxed);
  return true;
}

void reset_isa() { g_forced.store(kUnset, std::memory_order_relaxed); }

ScopedIsa::ScopedIsa(Isa isa) : prev_(g_forced.load()), ok_(set_isa(isa)) {}
ScopedIsa::~ScopedIsa() { g_forced.store(prev_); }

}  // namespace flashplus::cpu
