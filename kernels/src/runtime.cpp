// runtime.h on top of the backend tables.
#include "flashplus/runtime.h"

#include <fmt/format.h>

#include "backend.h"

namespace flashplus::runtime {
namespace {

const detail::BackendOps* get(Backend b, Status* st) {
  const detail::BackendOps* o = detail::ops_for(b);
  if (o == nullptr)
    *st = Status::Unsupported(
        fmt::format("the {} backend is not compiled into this build", backend_name(b)));
  return o;
}

}  // namespace

DeviceKind device_kind(Backend b) {
  const detail::BackendOps* o = detail::ops_for(b);
  return o ? o->device_kind : DeviceKind::cpu;
}

Status alloc(Backend b, size_t bytes, void** ptr) {
  Status st;
  const detail::BackendOps* o = get(b, &st);
  return o ? o->alloc(bytes, ptr) : st;
}

void free(Backend b, void* ptr) {
  if (const detail::BackendOps* o = detail::ops_for(b); o && ptr) o->free(ptr);
}

Status copy_to_device(Backend b, void* dst, const void* src, size_t bytes) {
  Status st;
  const detail::BackendOps* o = get(b, &st);
  return o ? o->copy_h2d(dst, src, bytes) : st;
}

Status copy_to_host(Backend b, void* dst, const void* src, size_t bytes) {
  Status st;
  const detail::BackendOps* o = get(b, &st);
  return o ? o->copy_d2h(dst, src, bytes) : st;
}

Status synchronize(Backend b) {
  Status st;
  const detail::BackendOps* o = get(b, &st);
  return o ? o->synchronize() : st;
}

// Calls the backend's optional operation `fn` with `args`, or returns Unsupported ("the <name>
// backend <missing>") when the backend does not have it.
template <typename Fn, typename... Args>
Status call_optional(Backend b, Fn detail::BackendOps::*fn, const char* missing, Args... args) {
  Status st;
  const detail::BackendOps* o = get(b, &st);
  if (!o) return st;
  if (!(o->*fn)) return Status::Unsupported(fmt::format("the {} backend {}", backend_name(b), missing));
  return (o->*fn)(args...);
}

Status measure_matmul_tflops(Backend b, double* tflops) {
  return call_optional(b, &detail::BackendOps::measure_matmul_tflops, "does not measure peaks", tflops);
}

Status measure_copy_gbs(Backend b, double* gbs) {
  return call_optional(b, &detail::BackendOps::measure_copy_gbs, "does not measure peaks", gbs);
}

std::vector<KernelConfig> tuning_candidates(Backend b, const TuneKey& key) {
  const detail::BackendOps* o = detail::ops_for(b);
  return o && o->candidates ? o->candidates(key) : std::vector<KernelConfig>{};
}

bool last_kernel_config(Backend b, KernelConfig* out) {
  const detail::BackendOps* o = detail::ops_for(b);
  return o && o->last_config && o->last_config(out);
}

Status delay(Backend b, double us) {
  return call_optional(b, &detail::BackendOps::delay,
                       "has no delay kernel (nothing to hide behind)", us);
}

Status flush_l2(Backend b, size_t bytes) {
  return call_optional(b, &detail::BackendOps::flush_l2, "has no device cache to flush", bytes);
}

size_t default_l2_bytes(Backend b) {
  const detail::BackendOps* o = detail::ops_for(b);
  return o && o->device_kind != DeviceKind::cpu ? size_t{64} << 20 : 0;
}

Timer::Timer(Backend b) : backend_(b == Backend::auto_select ? best_backend() : b) {
  if (const detail::BackendOps* o = detail::ops_for(backend_)) impl_ = o->timer_create();
}
Timer::~Timer() {
  if (const detail::BackendOps* o = detail::ops_for(backend_); o && impl_) o->timer_destroy(impl_);
}
void Timer::start() {
  if (const detail::BackendOps* o = detail::ops_for(backend_); o && impl_) o->timer_start(impl_);
}
double Timer::stop_ms() {
  const detail::BackendOps* o = detail::ops_for(backend_);
  return o && impl_ ? o->timer_stop_ms(impl_) : 0.0;
}

}  // namespace flashplus::runtime
