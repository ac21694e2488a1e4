// Architecture ids, warp size and feature macros, with host twins of every device-side fact.
//
// Arch id (one int for both vendors; host and device agree):
//   NVIDIA: 10 * major + minor of the compute capability: 80, 86, 89, 90 (< 1000).
//   AMD:    1000 * gfx major + 100 * minor + stepping, from the gfx name "gfx<maj><min><step>"
//           whose last two characters are hex digits: gfx90a -> 9010, gfx942 -> 9402,
//           gfx1100 -> 11000 (>= 1000).
//
// Device side (inside __global__/__device__ code, per compilation pass):
//   FLASHPLUS_DEVICE_ARCH   the id being compiled for, 0 in the host pass.
//   FLASHPLUS_HAS_MMA_SYNC  1 when mma.sync (sm_80+) may be emitted in this pass.
//   FLASHPLUS_HAS_CP_ASYNC  1 when cp.async (sm_80+) may be emitted.
//   FLASHPLUS_HAS_WGMMA     1 when wgmma/setmaxnreg (sm_90a only) may be emitted.
//   FLASHPLUS_HAS_MFMA      1 when AMD MFMA (gfx908/gfx90a/gfx94x) may be emitted.
//   FLASHPLUS_WARP_SIZE     warp/wavefront width of this pass (32 or 64).
// Host side: arch_has_mma_sync(id) etc. answer the same questions about a run-time device.
#pragma once
#include <cstdlib>
#include <string>

#include "platform/gpu_runtime.h"

// ---- device pass facts ---------------------------------------------------------------------
#if FLASHPLUS_VENDOR_CUDA && defined(__CUDA_ARCH__)
#define FLASHPLUS_DEVICE_ARCH (__CUDA_ARCH__ / 10)
#elif FLASHPLUS_VENDOR_HIP && defined(__HIP_DEVICE_COMPILE__)
#if defined(__gfx908__)
#define FLASHPLUS_DEVICE_ARCH 9008
#elif defined(__gfx90a__)
#define FLASHPLUS_DEVICE_ARCH 9010
#elif defined(__gfx940__)
#define FLASHPLUS_DEVICE_ARCH 9400
#elif defined(__gfx941__)
#define FLASHPLUS_DEVICE_ARCH 9401
#elif defined(__gfx942__)
#define FLASHPLUS_DEVICE_ARCH 9402
#elif defined(__gfx1030__)
#define FLASHPLUS_DEVICE_ARCH 10030
#elif defined(__gfx1100__)
#define FLASHPLUS_DEVICE_ARCH 11000
#else
#define FLASHPLUS_DEVICE_ARCH 1000  // some AMD arch we have no id for: portable code only
#endif
#else
#define FLASHPLUS_DEVICE_ARCH 0
#endif

#if FLASHPLUS_VENDOR_CUDA && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define FLASHPLUS_HAS_MMA_SYNC 1
#define FLASHPLUS_HAS_CP_ASYNC 1
#else
#define FLASHPLUS_HAS_MMA_SYNC 0
#define FLASHPLUS_HAS_CP_ASYNC 0
#endif

// sm_90a ("arch-specific features"): nvcc defines __CUDA_ARCH_FEAT_SM90_ALL in that pass only.
#if FLASHPLUS_VENDOR_CUDA && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FLASHPLUS_HAS_WGMMA 1
#else
#define FLASHPLUS_HAS_WGMMA 0
#endif

#if FLASHPLUS_VENDOR_HIP && (defined(__gfx908__) || defined(__gfx90a__) || defined(__gfx940__) || \
                             defined(__gfx941__) || defined(__gfx942__))
#define FLASHPLUS_HAS_MFMA 1
#else
#define FLASHPLUS_HAS_MFMA 0
#endif

// Wavefront width. In an AMD device pass the compiler knows it; in the host pass of a HIP build
// it is the configured default (gfx9 CDNA is wave64; RDNA builds set FLASHPLUS_HIP_WARP_SIZE=32).
// Host code that needs the real value of a run-time device reads warpSize from its properties.
#ifndef FLASHPLUS_HIP_WARP_SIZE
#define FLASHPLUS_HIP_WARP_SIZE 64
#endif
#if FLASHPLUS_VENDOR_HIP
#if defined(__HIP_DEVICE_COMPILE__) && defined(__AMDGCN_WAVEFRONT_SIZE)
#define FLASHPLUS_WARP_SIZE __AMDGCN_WAVEFRONT_SIZE
#else
#define FLASHPLUS_WARP_SIZE FLASHPLUS_HIP_WARP_SIZE
#endif
#else
#define FLASHPLUS_WARP_SIZE 32
#endif

namespace flashplus::platform {

// Warp (wavefront) size of the current compilation pass: constexpr, usable as a template argument
// and array bound in device code.
__host__ __device__ constexpr int warp_size() { return FLASHPLUS_WARP_SIZE; }
static_assert(warp_size() == 32 || warp_size() == 64, "warp size");

// ---- arch ids and host twins -----------------------------------------------------------------
inline constexpr int kArchSm80 = 80;
inline constexpr int kArchSm86 = 86;
inline constexpr int kArchSm89 = 89;
inline constexpr int kArchSm90 = 90;
inline constexpr int kArchGfx908 = 9008;
inline constexpr int kArchGfx90a = 9010;
inline constexpr int kArchGfx942 = 9402;

__host__ __device__ constexpr bool arch_is_amd(int id) { return id >= 1000; }
__host__ __device__ constexpr bool arch_is_nvidia(int id) { return id > 0 && id < 1000; }
__host__ __device__ constexpr bool arch_has_mma_sync(int id) { return arch_is_nvidia(id) && id >= 80; }
__host__ __device__ constexpr bool arch_has_cp_async(int id) { return arch_is_nvidia(id) && id >= 80; }
// wgmma also needs the binary to carry sm_90a code; this says only that the chip has it.
__host__ __device__ constexpr bool arch_has_wgmma(int id) { return id == 90; }
__host__ __device__ constexpr bool arch_has_mfma(int id) {
  return id == kArchGfx908 || id == kArchGfx90a || (id >= 9400 && id < 9500);
}
// Default wavefront width of an arch (RDNA can run wave64 too, but compiles wave32 by default).
__host__ __device__ constexpr int arch_warp_size(int id) {
  return arch_is_amd(id) && id < 10000 ? 64 : 32;
}

// NVIDIA compute capability -> id.
constexpr int arch_from_cc(int major, int minor) { return 10 * major + minor; }

// AMD gcnArchName ("gfx90a:sramecc+:xnack-") -> id; 0 when it does not parse.
inline int arch_from_gfx_name(const char* name) {
  if (name == nullptr || name[0] != 'g' || name[1] != 'f' || name[2] != 'x') return 0;
  std::string digits;
  for (const char* c = name + 3; *c && *c != ':'; ++c) digits += *c;
  if (digits.size() < 3) return 0;
  const int major = std::atoi(digits.substr(0, digits.size() - 2).c_str());
  const auto hex = [](char c) {
    return c >= '0' && c <= '9' ? c - '0' : (c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1);
  };
  const int minor = hex(digits[digits.size() - 2]), step = hex(digits[digits.size() - 1]);
  if (major <= 0 || minor < 0 || step < 0) return 0;
  return 1000 * major + 100 * minor + step;
}

// id -> "sm_90" / "gfx90a".
inline std::string arch_name(int id) {
  if (arch_is_nvidia(id)) return "sm_" + std::to_string(id);
  if (arch_is_amd(id)) {
    const char* hx = "0123456789abcdef";
    const int major = id / 1000, minor = (id / 100) % 10, step = id % 100;
    std::string s = "gfx" + std::to_string(major);
    s += hx[minor & 15];
    s += hx[step & 15];
    return s;
  }
  return "unknown";
}

}  // namespace flashplus::platform
