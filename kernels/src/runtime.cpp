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
