// Memory and timing on any backend, so callers (the CLI, tests, bench) never include a vendor
// runtime header. On the CPU backend these are malloc/memcpy and the wall clock.
#pragma once
#include <cstddef>

#include "flashplus/api.h"
#include "flashplus/status.h"
#include "flashplus/tensor.h"

namespace flashplus::runtime {

DeviceKind device_kind(Backend b);  // cpu -> cpu, cuda -> cuda, hip -> hip (auto: best_backend)

Status alloc(Backend b, size_t bytes, void** ptr);
void free(Backend b, void* ptr);
Status copy_to_device(Backend b, void* dst, const void* src, size_t bytes);
Status copy_to_host(Backend b, void* dst, const void* src, size_t bytes);
Status synchronize(Backend b);

// Elapsed-time measurement: device events on GPUs, steady_clock on the CPU.
class Timer {
 public:
  explicit Timer(Backend b);
  ~Timer();
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;
  void start();
  // Milliseconds since start(), after waiting for the device.
  double stop_ms();

 private:
  Backend backend_;
  void* impl_ = nullptr;
};

}  // namespace flashplus::runtime
