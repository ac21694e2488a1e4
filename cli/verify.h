// The verify runner: one suite case on one backend against the fp64 reference.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "flashplus/api.h"
#include "flashplus_ref/reference.h"
#include "suite.h"

namespace flashplus::cli {

struct TensorCheck {
  std::string tensor;  // "out", "lse", "dq", "dk", "dv"
  ref::Check check;
};

enum class Outcome {
  pass,
  fail,
  xfail,        // failed, listed as a known failure for this backend (not counted)
  xpass,        // listed as a known failure but passed (reported, not counted as a failure)
  unsupported,  // the backend answered unsupported/no_instance (reported, not a failure)
};
const char* outcome_name(Outcome o);

struct CaseResult {
  Outcome outcome = Outcome::pass;
  std::vector<TensorCheck> checks;
  std::vector<std::string> problems;  // guard band writes, errors, non-determinism: each fails
  std::string unsupported;            // the backend's message when unsupported
  double seconds = 0;
};

struct VerifyOptions {
  Backend backend = Backend::cpu;  // resolved (never auto_select)
  uint64_t seed = 0;
  int num_threads = 0;
  // autotune: run the pass under test with this config (the backward when the case has one).
  const KernelConfig* config_override = nullptr;
};

CaseResult run_case(const Case& c, const VerifyOptions& opts);

// Deterministic inputs: `n` values ~ N(0, 1) (never exactly 0) for tensor `tag` of case `name`
// under `seed`. The same (seed, name, tag) gives the same values on every platform.
std::vector<float> random_normal(uint64_t seed, const std::string& name, const std::string& tag,
                                 size_t n);

// Guard bands: every output buffer of verify is allocated with kGuardBytes of kGuardByte before
// and after it; its interior starts as kInteriorByte (all ones: NaN in fp32/fp16/bf16) so an
// element the kernel never writes fails the NaN check, while a NaN written into a guard band
// still differs from the guard byte.
constexpr size_t kGuardBytes = 256;
constexpr uint8_t kGuardByte = 0xCD;
constexpr uint8_t kInteriorByte = 0xFF;

// Checks the bands of `buf` (kGuardBytes + interior_bytes + kGuardBytes bytes): "" when intact,
// else "<what>: N guard byte(s) overwritten: out-of-bounds write (first at ...)".
std::string check_guard_bands(const uint8_t* buf, size_t interior_bytes, const std::string& what);

}  // namespace flashplus::cli
