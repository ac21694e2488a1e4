// A device allocation owned by the CLI, on any backend, through flashplus/runtime.h.
#pragma once
#include <cstddef>

#include "common.h"
#include "flashplus/runtime.h"

namespace flashplus::cli {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Backend b, size_t bytes) : backend_(b), bytes_(bytes) {
    // Allocate at least one byte so empty tensors still get a valid, distinct pointer.
    throw_if_error(runtime::alloc(b, bytes ? bytes : 1, &ptr_));
  }
  ~DeviceBuffer() {
    if (ptr_) runtime::free(backend_, ptr_);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(backend_, o.backend_);
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return ptr_; }
  char* bytes_ptr(size_t offset = 0) const { return static_cast<char*>(ptr_) + offset; }
  size_t size() const { return bytes_; }
  void upload(const void* host) {
    throw_if_error(runtime::copy_to_device(backend_, ptr_, host, bytes_));
  }
  void download(void* host) const {
    throw_if_error(runtime::copy_to_host(backend_, host, ptr_, bytes_));
  }

 private:
  Backend backend_ = Backend::cpu;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace flashplus::cli
