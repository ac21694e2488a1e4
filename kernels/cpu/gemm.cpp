// The CPU backend's GEMM micro-kernels, one set per ISA path (isa.h), chosen per call by
// active_isa(). Every kernel computes C[M x N] += A[M x K] * B[K x N] (M % kMr == 0,
// N % kNr == 0) with one fp32 accumulator per output element summed over k in order, so the
// fp32 paths differ only by FMA contraction (the AVX paths fuse every multiply-add).
//
// Each ISA's kernel carries its own __attribute__((target)) so the library is built for the
// baseline architecture and still runs on any x86-64; a path is only called after isa.cpp has
// seen the CPU run it.
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FLASHPLUS_CPU_X86 1
#endif

#include "cpu/cpu_kernels.h"
#include "cpu/isa.h"

namespace flashplus::cpu {

namespace {

// ---- scalar: the baseline build ------------------------------------------------------------------
// GCC/Clang vector extension: 8 floats, two SSE instructions per operation on x86-64, NEON on
// aarch64. Written explicitly because the auto-vectoriser turned the plain-array version of this
// loop into shuffles and spills.
typedef float v8f __attribute__((vector_size(32)));
static_assert(kNr == 16, "the micro-kernels hold one 16-float row chunk as two v8f / one zmm");

void gemm_base(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C,
               int ldc) {
  for (int i = 0; i < M; i += kMr) {
    for (int j = 0; j < N; j += kNr) {
      v8f acc[kMr][2];
      for (int r = 0; r < kMr; ++r) {
        std::memcpy(&acc[r][0], C + static_cast<int64_t>(i + r) * ldc + j, sizeof(v8f));
        std::memcpy(&acc[r][1], C + static_cast<int64_t>(i + r) * ldc + j + 8, sizeof(v8f));
      }
      const float* a = A + static_cast<int64_t>(i) * lda;
      const float* b = B + j;
      for (int k = 0; k < K; ++k) {
        v8f b0, b1;
        std::memcpy(&b0, b + static_cast<int64_t>(k) * ldb, sizeof(v8f));
        std::memcpy(&b1, b + static_cast<int64_t>(k) * ldb + 8, sizeof(v8f));
        for (int r = 0; r < kMr; ++r) {
          const float av = a[static_cast<int64_t>(r) * lda + k];
          acc[r][0] += av * b0;
          acc[r][1] += av * b1;
        }
      }
      for (int r = 0; r < kMr; ++r) {
        std::memcpy(C + static_cast<int64_t>(i + r) * ldc + j, &acc[r][0], sizeof(v8f));
        std::memcpy(C + static_cast<int64_t>(i + r) * ldc + j + 8, &acc[r][1], sizeof(v8f));
      }
    }
  }
}

#if FLASHPLUS_CPU_X86
// ---- avx2: AVX2 + FMA, 4 rows x 16 columns (8 ymm accumulators) ----------------------------------
__attribute__((target("avx2,fma"))) void gemm_avx2(int M, int N, int K, const float* A, int lda,
                                                   const float* B, int ldb, float* C, int ldc) {
  for (int i = 0; i < M; i += kMr) {
    for (int j = 0; j < N; j += kNr) {
      __m256 acc[kMr][2];
      for (int r = 0; r < kMr; ++r) {
        acc[r][0] = _mm256_loadu_ps(C + static_cast<int64_t>(i + r) * ldc + j);
        acc[r][1] = _mm256_loadu_ps(C + static_cast<int64_t>(i + r) * ldc + j + 8);
      }
      const float* a = A + static_cast<int64_t>(i) * lda;
      const float* b = B + j;
      for (int k = 0; k < K; ++k) {
        const __m256 b0 = _mm256_loadu_ps(b + static_cast<int64_t>(k) * ldb);
        const __m256 b1 = _mm256_loadu_ps(b + static_cast<int64_t>(k) * ldb + 8);
        for (int r = 0; r < kMr; ++r) {
          const __m256 av = _mm256_broadcast_ss(a + static_cast<int64_t>(r) * lda + k);
          acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
          acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
        }
      }
      for (int r = 0; r < kMr; ++r) {
        _mm256_storeu_ps(C + static_cast<int64_t>(i + r) * ldc + j, acc[r][0]);
        _mm256_storeu_ps(C + static_cast<int64_t>(i + r) * ldc + j + 8, acc[r][1]);
      }
    }
  }
}

// ---- avx512: R rows x 16*NV columns of C in zmm registers ----------------------------------------
// 8 x 32 (16 accumulators, 2 B loads and 8 broadcasts per k) where the tile allows, smaller
// pieces on the edges (M is a multiple of 4, N of 16).
#define FLASHPLUS_AVX512 "avx512f,avx512bw,avx512vl,avx2,fma"
template <int R, int NV>
__attribute__((target(FLASHPLUS_AVX512), always_inline)) inline void tile512(
    int K, const float* a, int lda, const float* b, int ldb, float* c, int ldc) {
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_loadu_ps(c + static_cast<int64_t>(r) * ldc + 16 * v);
  for (int k = 0; k < K; ++k) {
    __m512 bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(b + static_cast<int64_t>(k) * ldb + 16 * v);
    for (int r = 0; r < R; ++r) {
      const __m512 av = _mm512_set1_ps(a[static_cast<int64_t>(r) * lda + k]);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(c + static_cast<int64_t>(r) * ldc + 16 * v, acc[r][v]);
}

__attribute__((target(FLASHPLUS_AVX512))) void gemm_avx512(int M, int N, int K, const float* A,
                                                           int lda, const float* B, int ldb,
                                                           float* C, int ldc) {
  static_assert(kMr == 4, "row blocks of 8 and 4 cover every M that is a multiple of kMr");
  for (int i = 0; i < M;) {
    const int rows = i + 8 <= M ? 8 : 4;
    const float* a = A + static_cast<int64_t>(i) * lda;
    float* c = C + static_cast<int64_t>(i) * ldc;
    int j = 0;
    if (rows == 8) {
      for (; j + 32 <= N; j += 32) tile512<8, 2>(K, a, lda, B + j, ldb, c + j, ldc);
      for (; j < N; j += 16) tile512<8, 1>(K, a, lda, B + j, ldb, c + j, ldc);
    } else {
      for (; j + 32 <= N; j += 32) tile512<4, 2>(K, a, lda, B + j, ldb, c + j, ldc);
      for (; j < N; j += 16) tile512<4, 1>(K, a, lda, B + j, ldb, c + j, ldc);
    }
    i += rows;
  }
}

// ---- avx512bf16: vdpbf16ps on bf16 pairs ---------------------------------------------------------
#define FLASHPLUS_AVX512BF16 "avx512bf16,avx512f,avx512bw,avx512vl,avx2,fma"
template <int R, int NV>
__attribute__((target(FLASHPLUS_AVX512BF16), always_inline)) inline void tile_bf16(
    int K2, const uint16_t* a, int lda, const uint16_t* bp, int ldbp, float* c, int ldc) {
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_loadu_ps(c + static_cast<int64_t>(r) * ldc + 16 * v);
  for (int kk = 0; kk < K2; ++kk) {
    __m512i bv[NV];
    for (int v = 0; v < NV; ++v)
      bv[v] = _mm512_loadu_si512(bp + static_cast<int64_t>(kk) * ldbp + 32 * v);
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + static_cast<int64_t>(r) * lda + 2 * kk, sizeof(pair));
      const __m512i av = _mm512_set1_epi32(pair);
      for (int v = 0; v < NV; ++v)
        acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)av, (__m512bh)bv[v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(c + static_cast<int64_t>(r) * ldc + 16 * v, acc[r][v]);
}

__attribute__((target(FLASHPLUS_AVX512BF16))) void gemm_bf16_avx512(
    int M, int N, int K, const uint16_t* A, int lda, const uint16_t* Bp, int ldbp, float* C,
    int ldc) {
  const int K2 = (K + 1) / 2;
  for (int i = 0; i < M;) {
    const int rows = i + 8 <= M ? 8 : 4;
    const uint16_t* a = A + static_cast<int64_t>(i) * lda;
    float* c = C + static_cast<int64_t>(i) * ldc;
    int j = 0;
    if (rows == 8) {
      for (; j + 32 <= N; j += 32) tile_bf16<8, 2>(K2, a, lda, Bp + 2 * j, ldbp, c + j, ldc);
      for (; j < N; j += 16) tile_bf16<8, 1>(K2, a, lda, Bp + 2 * j, ldbp, c + j, ldc);
    } else {
      for (; j + 32 <= N; j += 32) tile_bf16<4, 2>(K2, a, lda, Bp + 2 * j, ldbp, c + j, ldc);
      for (; j < N; j += 16) tile_bf16<4, 1>(K2, a, lda, Bp + 2 * j, ldbp, c + j, ldc);
    }
    i += rows;
  }
}
#endif  // FLASHPLUS_CPU_X86

// The same product from the same bf16 pairs in plain fp32 (the other paths; never on the hot
// path, since the kernels only pack pairs when bf16_dot_active()).
void gemm_bf16_ref(int M, int N, int K, const uint16_t* A, int lda, const uint16_t* Bp, int ldbp,
                   float* C, int ldc) {
  auto f = [](uint16_t h) {
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float x;
    std::memcpy(&x, &u, 4);
    return x;
  };
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float acc = C[static_cast<int64_t>(i) * ldc + j];
      for (int k = 0; k < K; ++k)
        acc += f(A[static_cast<int64_t>(i) * lda + k]) *
               f(Bp[static_cast<int64_t>(k / 2) * ldbp + 2 * j + (k & 1)]);
      C[static_cast<int64_t>(i) * ldc + j] = acc;
    }
}

}  // namespace

void gemm_acc(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C,
              int ldc) {
  switch (active_isa()) {
#if FLASHPLUS_CPU_X86
    case Isa::avx512bf16:
    case Isa::avx512: return gemm_avx512(M, N, K, A, lda, B, ldb, C, ldc);
    case Isa::avx2: return gemm_avx2(M, N, K, A, lda, B, ldb, C, ldc);
#endif
    default: return gemm_base(M, N, K, A, lda, B, ldb, C, ldc);
  }
}

bool bf16_dot_active() { return active_isa() == Isa::avx512bf16; }

void gemm_bf16_acc(int M, int N, int K, const uint16_t* A, int lda, const uint16_t* Bp, int ldbp,
                   float* C, int ldc) {
#if FLASHPLUS_CPU_X86
  if (active_isa() == Isa::avx512bf16) return gemm_bf16_avx512(M, N, K, A, lda, Bp, ldbp, C, ldc);
#endif
  gemm_bf16_ref(M, N, K, A, lda, Bp, ldbp, C, ldc);
}

}  // namespace flashplus::cpu
