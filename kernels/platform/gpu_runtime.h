// The thin vendor shim: one spelling (gpu*) for the handful of runtime names GPU code uses, mapped
// to CUDA or HIP. Everything vendor-specific that is not in this file lives in types.h (16-bit
// types), arch.h (arch ids, warp size, feature macros) and warp.h (shuffles/reductions).
//
// Vendor selection: a HIP compilation (hipcc, clang -x hip) defines __HIPCC__; everything else
// that includes this header is CUDA (nvcc, or a host compiler with the CUDA toolkit on the include
// path). FLASHPLUS_VENDOR_HIP / FLASHPLUS_VENDOR_CUDA are 0/1 so `#if` works without `defined`.
#pragma once

#if defined(__HIPCC__) || defined(FLASHPLUS_FORCE_HIP)
#define FLASHPLUS_VENDOR_HIP 1
#define FLASHPLUS_VENDOR_CUDA 0
#else
#define FLASHPLUS_VENDOR_HIP 0
#define FLASHPLUS_VENDOR_CUDA 1
#endif

#if FLASHPLUS_VENDOR_HIP
#include <hip/hip_runtime.h>

#define FLASHPLUS_VENDOR_NAME "hip"
using gpuError_t = hipError_t;
using gpuStream_t = hipStream_t;
using gpuEvent_t = hipEvent_t;
using gpuDeviceProp_t = hipDeviceProp_t;
#define gpuSuccess hipSuccess
#define gpuErrorNoDevice hipErrorNoDevice
#define gpuErrorInsufficientDriver hipErrorInsufficientDriver
#define gpuGetErrorString hipGetErrorString
#define gpuGetErrorName hipGetErrorName
#define gpuGetLastError hipGetLastError
#define gpuPeekAtLastError hipPeekAtLastError
#define gpuGetDeviceCount hipGetDeviceCount
#define gpuGetDevice hipGetDevice
#define gpuSetDevice hipSetDevice
#define gpuGetDeviceProperties hipGetDeviceProperties
#define gpuDeviceGetAttribute hipDeviceGetAttribute
#define gpuDeviceSynchronize hipDeviceSynchronize
#define gpuMalloc hipMalloc
#define gpuFree hipFree
#define gpuMemcpy hipMemcpy
#define gpuMemcpyAsync hipMemcpyAsync
#define gpuMemset hipMemset
#define gpuMemsetAsync hipMemsetAsync
#define gpuMemcpyHostToDevice hipMemcpyHostToDevice
#define gpuMemcpyDeviceToHost hipMemcpyDeviceToHost
#define gpuMemcpyDeviceToDevice hipMemcpyDeviceToDevice
#define gpuMemcpyDefault hipMemcpyDefault
#define gpuPointerGetAttributes hipPointerGetAttributes
#define gpuStreamSynchronize hipStreamSynchronize
#define gpuEventCreate hipEventCreate
#define gpuEventDestroy hipEventDestroy
#define gpuEventRecord hipEventRecord
#define gpuEventSynchronize hipEventSynchronize
#define gpuEventElapsedTime hipEventElapsedTime
#define gpuFuncSetAttribute(f, attr, v) hipFuncSetAttribute(reinterpret_cast<const void*>(f), attr, v)
#define gpuFuncAttributeMaxDynamicSharedMemorySize hipFuncAttributeMaxDynamicSharedMemorySize
#define gpuDevAttrMaxSharedMemoryPerBlockOptin hipDeviceAttributeSharedMemPerBlockOptin

#else  // CUDA
#include <cuda_runtime.h>

#define FLASHPLUS_VENDOR_NAME "cuda"
using gpuError_t = cudaError_t;
using gpuStream_t = cudaStream_t;
using gpuEvent_t = cudaEvent_t;
using gpuDeviceProp_t = cudaDeviceProp;
#define gpuSuccess cudaSuccess
#define gpuErrorNoDevice cudaErrorNoDevice
#define gpuErrorInsufficientDriver cudaErrorInsufficientDriver
#define gpuGetErrorString cudaGetErrorString
#define gpuGetErrorName cudaGetErrorName
#define gpuGetLastError cudaGetLastError
#define gpuPeekAtLastError cudaPeekAtLastError
#define gpuGetDeviceCount cudaGetDeviceCount
#define gpuGetDevice cudaGetDevice
#define gpuSetDevice cudaSetDevice
#define gpuGetDeviceProperties cudaGetDeviceProperties
#define gpuDeviceGetAttribute cudaDeviceGetAttribute
#define gpuDeviceSynchronize cudaDeviceSynchronize
#define gpuMalloc cudaMalloc
#define gpuFree cudaFree
#define gpuMemcpy cudaMemcpy
#define gpuMemcpyAsync cudaMemcpyAsync
#define gpuMemset cudaMemset
#define gpuMemsetAsync cudaMemsetAsync
#define gpuMemcpyHostToDevice cudaMemcpyHostToDevice
#define gpuMemcpyDeviceToHost cudaMemcpyDeviceToHost
#define gpuMemcpyDeviceToDevice cudaMemcpyDeviceToDevice
#define gpuMemcpyDefault cudaMemcpyDefault
#define gpuPointerGetAttributes cudaPointerGetAttributes
#define gpuStreamSynchronize cudaStreamSynchronize
#define gpuEventCreate cudaEventCreate
#define gpuEventDestroy cudaEventDestroy
#define gpuEventRecord cudaEventRecord
#define gpuEventSynchronize cudaEventSynchronize
#define gpuEventElapsedTime cudaEventElapsedTime
#define gpuFuncSetAttribute(f, attr, v) cudaFuncSetAttribute(f, attr, v)
#define gpuFuncAttributeMaxDynamicSharedMemorySize cudaFuncAttributeMaxDynamicSharedMemorySize
#define gpuDevAttrMaxSharedMemoryPerBlockOptin cudaDevAttrMaxSharedMemoryPerBlockOptin
#endif

#include <string>

#include "flashplus/status.h"

namespace flashplus::platform {

// "cudaMalloc failed: out of memory (cudaErrorMemoryAllocation)" as a runtime_error Status.
inline Status gpu_status(gpuError_t e, const char* what) {
  if (e == gpuSuccess) return Status::Ok();
  return Status::Runtime(std::string(what) + " failed: " + gpuGetErrorString(e) + " (" +
                         gpuGetErrorName(e) + ")");
}

// True when `ptr` is device (or managed) memory that kernels may dereference; false for host
// memory the runtime does not know. Clears the error the query may leave behind.
inline bool is_device_pointer(const void* ptr) {
  if (ptr == nullptr) return false;
#if FLASHPLUS_VENDOR_HIP
  hipPointerAttribute_t a{};
  if (hipPointerGetAttributes(&a, ptr) != hipSuccess) {
    (void)hipGetLastError();
    return false;
  }
  return a.memoryType == hipMemoryTypeDevice || a.isManaged != 0;
#else
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, ptr) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
#endif
}

}  // namespace flashplus::platform

// Check a runtime call; on failure return a runtime_error Status naming the call (its source
// text, e.g. "gpuMalloc(&ptr, bytes) failed: out of memory (cudaErrorMemoryAllocation)").
#define FLASHPLUS_GPU_CHECK(call)                                                   \
  do {                                                                              \
    const gpuError_t _fp_err = (call);                                              \
    if (_fp_err != gpuSuccess) return ::flashplus::platform::gpu_status(_fp_err, #call); \
  } while (0)

// After a kernel launch: catch configuration errors (bad grid, too much shared memory) right
// away. Asynchronous faults surface at the next synchronising call, which is checked too.
#define FLASHPLUS_GPU_CHECK_LAUNCH(kernel_name)                                      \
  do {                                                                              \
    const gpuError_t _fp_err = gpuGetLastError();                                   \
    if (_fp_err != gpuSuccess)                                                      \
      return ::flashplus::platform::gpu_status(_fp_err, "launch of " kernel_name);  \
  } while (0)
