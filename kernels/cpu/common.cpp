// Shared pieces of the CPU backend: dtype row conversion, scratch buffers and the thread
// launcher (the GEMM micro-kernels are in gemm.cpp).
#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "cpu/cpu_kernels.h"
#include "cpu/isa.h"
#include "flashplus/numerics.h"

// An AVX2+FMA clone of the row conversion next to the baseline one, picked by the loader (ifunc)
// on CPUs that have it. The build stays portable (no -march=native); on the CI/dev x86 machines this
// speeds up the conversion loops. Other compilers/targets get the baseline only, and so does a
// ThreadSanitizer build: a clone's ifunc resolver runs while the loader relocates, before the
// TSan runtime is initialised, and an instrumented resolver crashes the program at load.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && \
    !defined(__SANITIZE_THREAD__)
#define FLASHPLUS_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FLASHPLUS_CPU_CLONES
#endif

namespace flashplus::cpu {

Buffer::Buffer(size_t n) : n_(n) {
  const size_t bytes = std::max<size_t>(64, (n * sizeof(float) + 63) / 64 * 64);
  p_ = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (!p_) throw std::bad_alloc();
  std::memset(p_, 0, bytes);
}

namespace {
inline float bits_to_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t f32_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
// fp16 -> fp32 without branches, so the conversion loop vectorises (numerics.h's
// half_bits_to_float is the readable definition; this one is exhaustively equal to it for every
// non-NaN input). Normal/inf/NaN halves: shift the exponent and mantissa into fp32 position and
// rebias the exponent by a multiply by 2^-112. Subnormal halves: put the mantissa under a fixed
// exponent (2^-1 scale) and subtract the implicit bit back out.
inline float half_to_f32_fast(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;  // exponent + mantissa at the top, sign dropped
  const float normal = bits_to_f32((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float subnormal = bits_to_f32((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t mag = two_w < (1u << 27) ? f32_to_bits(subnormal) : f32_to_bits(normal);
  return bits_to_f32(sign | mag);
}
#if defined(__x86_64__) && defined(__GNUC__)
// With F16C (every x86-64-v3 CPU) one instruction converts 8 halves exactly.
__attribute__((target("avx2,f16c"))) void half_row_f16c(const uint16_t* s, int n, float* d) {
  int x = 0;
  for (; x + 8 <= n; x += 8)
    _mm256_storeu_ps(d + x, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + x))));
  for (; x < n; ++x) d[x] = half_to_f32_fast(s[x]);
}
// F16C from CPUID leaf 1 (ECX bit 29): clang 14 has no "f16c" for __builtin_cpu_supports.
bool cpu_has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
const bool kHaveF16C = __builtin_cpu_supports("avx2") && cpu_has_f16c();
// bf16 -> fp32 is a 16-bit shift: widen 8 (16) halves to 32 bits and shift them up. The scalar
// loop of the baseline build was ~14% of a bf16 forward's time.
__attribute__((target("avx2"))) void bf16_row_avx2(const uint16_t* s, int n, float* d) {
  int x = 0;
  for (; x + 8 <= n; x += 8) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + x)));
    _mm256_storeu_ps(d + x, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
  }
  for (; x < n; ++x) d[x] = bf16_bits_to_float(s[x]);
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx2"))) void bf16_row_avx512(const uint16_t* s, int n,
                                                                                float* d) {
  int x = 0;
  for (; x + 16 <= n; x += 16) {
    // maskz forms: GCC 12 warns on the unmasked ones' _mm512_undefined (a false positive).
    const __m512i w =
        _mm512_maskz_cvtepu16_epi32(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + x)));
    _mm512_storeu_ps(d + x, _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, w, 16)));
  }
  for (; x < n; ++x) d[x] = bf16_bits_to_float(s[x]);
}
#endif
}  // namespace

FLASHPLUS_CPU_CLONES
void load_row(const void* base, DType t, int64_t off, int n, float* dst) {
  switch (t) {
    case DType::f32: std::memcpy(dst, static_cast<const float*>(base) + off, n * sizeof(float)); break;
    case DType::f16: {
      const uint16_t* s = static_cast<const uint16_t*>(base) + off;
#if defined(__x86_64__) && defined(__GNUC__)
      if (kHaveF16C) {
        half_row_f16c(s, n, dst);
        break;
      }
#endif
      for (int x = 0; x < n; ++x) dst[x] = half_to_f32_fast(s[x]);
      break;
    }
    case DType::bf16: {
      const uint16_t* s = static_cast<const uint16_t*>(base) + off;
#if defined(__x86_64__) && defined(__GNUC__)
      // The conversion follows the active ISA path (isa.h), like the GEMMs.
      switch (active_isa()) {
        case Isa::avx512:
        case Isa::avx512bf16: bf16_row_avx512(s, n, dst); return;
        case Isa::avx2: bf16_row_avx2(s, n, dst); return;
        default: break;
      }
#endif
      for (int x = 0; x < n; ++x) dst[x] = bf16_bits_to_float(s[x]);
      break;
    }
    case DType::i32:
      for (int x = 0; x < n; ++x) dst[x] = load_float(base, t, off + x);
      break;
  }
}

void store_row(void* base, DType t, int64_t off, int n, const float* src, float mul) {
  switch (t) {
    case DType::f32: {
      float* d = static_cast<float*>(base) + off;
      for (int x = 0; x < n; ++x) d[x] = src[x] * mul;
      break;
    }
    case DType::f16: {
      uint16_t* d = static_cast<uint16_t*>(base) + off;
      for (int x = 0; x < n; ++x) d[x] = float_to_half_bits(src[x] * mul);
      break;
    }
    case DType::bf16: {
      uint16_t* d = static_cast<uint16_t*>(base) + off;
      for (int x = 0; x < n; ++x) d[x] = float_to_bf16_bits(src[x] * mul);
      break;
    }
    case DType::i32:
      for (int x = 0; x < n; ++x) store_float(base, t, off + x, src[x] * mul);
      break;
  }
}

void load_tile_rows(const void* base, DType t, const Strides3& st, int b, int h, int i0, int n,
                    int d, int dp, int rows, float* dst) {
  std::fill(dst, dst + static_cast<int64_t>(rows) * dp, 0.f);
  for (int r = 0; r < n; ++r) {
    const int64_t i = i0 + r;
    load_row(base, t, b * st.batch + i * st.row + h * st.head, d, dst + static_cast<int64_t>(r) * dp);
  }
}

void load_kv_tile(const AttnParams& p, int b, int hk, int j0, int n, int dp, const KvTileDst& dst,
                  float* row) {
  const int d = p.head_dim;
  auto put = [&](const float* src, float* t, float* rows, uint16_t* tp, int c) {
    if (t)
      for (int x = 0; x < d; ++x) t[static_cast<int64_t>(x) * dst.ld + c] = src ? src[x] : 0.f;
    if (tp)
      for (int x = 0; x < d; ++x)
        tp[static_cast<int64_t>(x >> 1) * 2 * dst.ld + 2 * c + (x & 1)] = src ? bf16_bits_exact(src[x]) : 0;
    if (rows) {
      float* r = rows + static_cast<int64_t>(c) * dp;
      if (src) std::copy(src, src + d, r);
      std::fill(r + (src ? d : 0), r + dp, 0.f);
    }
  };
  for (int c = 0; c < dst.ld; ++c) {
    const int64_t j = j0 + c;
    const bool live = c < n;
    if (dst.kt || dst.k || dst.ktp) {
      if (live) load_row(p.k, p.dtype, p.kv_offset(p.k_stride, b, static_cast<int>(j)) + hk * p.k_stride.head, d, row);
      put(live ? row : nullptr, dst.kt, dst.k, dst.ktp, c);
    }
    if (dst.vt || dst.v || dst.vtp) {
      if (live) load_row(p.v, p.dtype, p.kv_offset(p.v_stride, b, static_cast<int>(j)) + hk * p.v_stride.head, d, row);
      put(live ? row : nullptr, dst.vt, dst.v, dst.vtp, c);
    }
  }
}

int resolve_threads(const RunOptions& opts) {
  int n = opts.num_threads;
  if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
  return std::max(1, n);
}

Status run_threads(int nthreads, const std::function<void(int)>& body) {
  std::atomic<bool> failed{false};
  std::string first_error;
  std::mutex err_mu;
  auto guarded = [&](int tid) {
    try {
      body(tid);
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(err_mu);
      if (!failed.exchange(true)) first_error = e.what();
    } catch (...) {
      std::lock_guard<std::mutex> lock(err_mu);
      if (!failed.exchange(true)) first_error = "unknown exception";
    }
  };
  std::vector<std::thread> workers;
  try {
    workers.reserve(nthreads > 1 ? nthreads - 1 : 0);
    for (int t = 1; t < nthreads; ++t) workers.emplace_back(guarded, t);
  } catch (const std::exception& e) {
    // Could not start every thread: the ones that did start still drain the work queue.
    (void)e;
  }
  guarded(0);
  for (auto& w : workers) w.join();
  if (failed.load()) return Status::Runtime("cpu backend: " + first_error);
  return Status::Ok();
}

}  // namespace flashplus::cpu
