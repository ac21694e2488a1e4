// Shared by every part of the CLI: the error type and the documented exit codes.
#pragma once
#include <stdexcept>
#include <string>

#include "flashplus/api.h"
#include "flashplus/status.h"
#include "flashplus/tensor.h"

namespace flashplus::cli {

// Exit codes, documented in `flashplus --help`.
enum ExitCode : int {
  kExitOk = 0,
  kExitVerifyFailed = 1,  // verify: at least one case failed
  kExitUsage = 2,         // bad command line, unreadable/invalid input file or config
  kExitRuntime = 3,       // the library or backend failed while running
};

// Everything the CLI reports to the user goes through this: a one-line message and the exit code
// it maps to. main() prints "flashplus: error: <message>".
class Error : public std::runtime_error {
 public:
  Error(int exit_code, const std::string& message)
      : std::runtime_error(message), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

inline Error usage_error(const std::string& m) { return Error(kExitUsage, m); }
inline Error runtime_error(const std::string& m) { return Error(kExitRuntime, m); }

// A library Status as a CLI error: argument errors are the user's input (2), the rest are
// backend/runtime failures (3).
inline Error status_error(const Status& st) {
  return Error(st.code() == StatusCode::invalid_args ? kExitUsage : kExitRuntime, st.to_string());
}
inline void throw_if_error(const Status& st) {
  if (!st.ok()) throw status_error(st);
}

// "fp32" | "fp16" | "bf16" (also "float32", "float16", "bfloat16"); false when unknown.
inline bool parse_dtype(const std::string& s, DType* out) {
  if (s == "fp32" || s == "float32")
    *out = DType::f32;
  else if (s == "fp16" || s == "float16")
    *out = DType::f16;
  else if (s == "bf16" || s == "bfloat16")
    *out = DType::bf16;
  else
    return false;
  return true;
}

// CLI11 validator for a number >= 0 with a short message (CLI11's own prints DBL_MAX in full).
// Defined in paths.cpp.
}  // namespace flashplus::cli
namespace CLI {
class Validator;
}
namespace flashplus::cli {
const CLI::Validator& non_negative();
const CLI::Validator& positive();
// A decimal integer in [0, 2^64 - 1] (seeds, offsets): no sign, exponent or fraction.
const CLI::Validator& unsigned_integer();

// Resolves "auto" and checks the backend was compiled in; throws a usage error otherwise.
Backend resolve_backend(const std::string& name);

}  // namespace flashplus::cli
