// Status: every public entry point returns one instead of throwing or aborting.
#pragma once
#include <string>
#include <utility>

namespace flashplus {

enum class StatusCode {
  ok,
  invalid_args,   // the caller's arguments break the API contract (shape, dtype, stride, range)
  unsupported,    // valid arguments this build/backend cannot run (e.g. no GPU backend compiled)
  no_instance,    // supported in principle, but no compiled kernel instance matches
  runtime_error,  // the backend failed while running (allocation, launch, device error)
};

inline const char* status_code_name(StatusCode c) {
  switch (c) {
    case StatusCode::ok: return "ok";
    case StatusCode::invalid_args: return "invalid_args";
    case StatusCode::unsupported: return "unsupported";
    case StatusCode::no_instance: return "no_instance";
    case StatusCode::runtime_error: return "runtime_error";
  }
  return "?";
}

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return {}; }
  static Status Invalid(std::string m) { return {StatusCode::invalid_args, std::move(m)}; }
  static Status Unsupported(std::string m) { return {StatusCode::unsupported, std::move(m)}; }
  static Status NoInstance(std::string m) { return {StatusCode::no_instance, std::move(m)}; }
  static Status Runtime(std::string m) { return {StatusCode::runtime_error, std::move(m)}; }

  bool ok() const { return code_ == StatusCode::ok; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "invalid_args: q and k must have the same dtype"
  std::string to_string() const {
    return ok() ? "ok" : std::string(status_code_name(code_)) + ": " + message_;
  }

 private:
  StatusCode code_ = StatusCode::ok;
  std::string message_;
};

// Propagate a non-ok status to the caller.
#define FLASHPLUS_RETURN_IF_ERROR(expr)      \
  do {                                       \
    ::flashplus::Status _fp_st = (expr);     \
    if (!_fp_st.ok()) return _fp_st;         \
  } while (0)

}  // namespace flashplus
