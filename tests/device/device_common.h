// Helpers shared by the device-only measurement programs of tests/device (not in the CTest glob:
// they need a GPU): a CUDA error check that exits, a spin kernel on the global timer, a finite
// pseudo-random bf16 fill (never zeros) and a median.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <cuda_runtime.h>

#define CK(x)                                                                              \
  do {                                                                                     \
    cudaError_t e_ = (x);                                                                  \
    if (e_ != cudaSuccess) {                                                               \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(2);                                                                        \
    }                                                                                      \
  } while (0)

namespace device_test {

// n bf16 values in [-0.99, 1.01], a hash of the index and the seed.
__global__ void fill_bf16(uint16_t* x, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    const float f = (static_cast<float>(h & 0xffff) / 65535.f - 0.5f) * 2.f + 0.01f;
    x[i] = static_cast<uint16_t>(__float_as_uint(f) >> 16);
  }
}

// One thread spinning for `ns` nanoseconds of the global timer: keeps the stream busy while the
// host enqueues what follows (the way `flashplus bench --timing stream` times a call).
__global__ void spin(long long ns) {
  long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0. : v[v.size() / 2];
}

}  // namespace device_test
