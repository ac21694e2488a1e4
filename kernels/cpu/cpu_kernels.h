// The CPU backend's kernels: a tiled FlashAttention (online softmax, never an Sq x Sk matrix)
// and the pieces fwd.cpp and bwd.cpp share. Internal header.
//
// Layout of every work buffer: fp32, row-major, padded with zeros so the inner GEMM only ever
// sees whole micro-tiles (rows a multiple of kMr, columns a multiple of kNr). Padding is what
// makes odd head dims (40, 72, ...) and ragged last tiles cost nothing in the inner loop.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <new>

#include "flashplus/api.h"
#include "flashplus/params.h"
#include "flashplus/status.h"

namespace flashplus::cpu {

// Tile shape: query rows per work item / key columns per main-loop step. Each K/V tile is
// converted to fp32 once per query tile, so a taller query tile amortises the conversion over
// more rows; 128 x 64 measured ~1.5x faster than 64 x 64 on llama-7B shapes (fp16, 1 thread),
// and one thread's working set (Q, O, S, K^T, V at d = 128: ~0.2 MB; ~0.4 MB at d = 256) still
// fits a typical per-core L2.
constexpr int kBlockM = 128;
constexpr int kBlockN = 64;
// GEMM micro-tile: 4 rows x 16 fp32 columns of C kept in registers (two AVX ymm per row, or
// four SSE xmm per row in the baseline x86-64 build).
constexpr int kMr = 4;
constexpr int kNr = 16;
static_assert(kBlockM % kMr == 0 && kBlockN % kNr == 0 && kBlockM % kNr == 0,
              "every GEMM M must be a multiple of kMr and every N a multiple of kNr");

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

// C[M x N] += A[M x K] * B[K x N], all fp32 row-major, M % kMr == 0, N % kNr == 0.
// Vectorises over N without reassociating sums, so it is exact IEEE fp32 (with FMA on the AVX
// paths). The micro-kernel is the active ISA path's (isa.h, gemm.cpp).
void gemm_acc(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C,
              int ldc);

// Whether the active path has a bf16 dot product (avx512bf16): the kernels then keep bf16
// inputs as bf16 pairs for Q K^T and dO V^T and call gemm_bf16_acc.
bool bf16_dot_active();
// C[M x N] += A[M x K] * B[K x N] from bf16 bits, fp32 accumulation. A: row-major bf16 [M][lda];
// Bp: B as bf16 pairs, element (k, j) at Bp[(k / 2) * ldbp + 2 * j + k % 2] (ldbp >= 2 * N).
// K odd reads one pair past K: A's column K and Bp's row K must be zero (the padding is).
// M % kMr == 0, N % kNr == 0.
void gemm_bf16_acc(int M, int N, int K, const uint16_t* A, int lda, const uint16_t* Bp, int ldbp,
                   float* C, int ldc);
// The bf16 bits of a value that is exactly a bf16 (loaded from a bf16 tensor): truncation.
inline uint16_t bf16_bits_exact(float x) {
  uint32_t u;
  __builtin_memcpy(&u, &x, 4);
  return static_cast<uint16_t>(u >> 16);
}
// Rows of fp32 values that are exactly bf16 as bf16 bits: dst[r * ld + x] for x < n, r < rows.
inline void pack_bf16_rows(const float* src, int ld, int rows, int n, uint16_t* dst) {
  for (int r = 0; r < rows; ++r)
    for (int x = 0; x < n; ++x)
      dst[static_cast<int64_t>(r) * ld + x] = bf16_bits_exact(src[static_cast<int64_t>(r) * ld + x]);
}

// Convert n elements of a `t` buffer starting at element `off` to fp32.
void load_row(const void* base, DType t, int64_t off, int n, float* dst);
// Store n fp32 values (times `mul`) into a `t` buffer at element `off` (round to nearest even).
void store_row(void* base, DType t, int64_t off, int n, const float* src, float mul);

// Rows [i0, i0 + n) of head h, batch b of a (batch, seqlen, heads, d) tensor, as fp32 rows of
// length dp in dst; rows n..rows-1 and columns d..dp-1 are zero.
void load_tile_rows(const void* base, DType t, const Strides3& st, int b, int h, int i0, int n,
                    int d, int dp, int rows, float* dst);

// Keys/values [j0, j0 + n) of kv head hk as fp32 tiles of dst.ld (block_n) entries; entries n.. are
// zero so stale data never reaches a GEMM. Each destination is optional (nullptr = skip):
// kt, vt: [dp][kBlockN] (transposed: S = Q K^T and dP = dO V^T vectorise over keys);
// k, v:   [kBlockN][dp] (O += P V, dQ += dS K). `row` is d floats of staging.
// ktp, vtp: bf16 tensors only: K^T / V^T as bf16 pairs for gemm_bf16_acc, entry (x, c) at
//   [(x / 2) * 2 * ld + 2 * c + x % 2] ([dp / 2][ld][2]; rows d.. are never written: keep zero).
struct KvTileDst {
  float* kt = nullptr;
  float* vt = nullptr;
  uint16_t* ktp = nullptr;
  uint16_t* vtp = nullptr;
  float* k = nullptr;
  float* v = nullptr;
  int ld = kBlockN;  // row length of kt/vt and entries loaded: the kernel's block_n (tiles.h)
};
void load_kv_tile(const AttnParams& p, int b, int hk, int j0, int n, int dp, const KvTileDst& dst,
                  float* row);

// 64-byte aligned fp32 scratch, zero-filled; the only allocations the kernels make.
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t n);
  ~Buffer() { std::free(p_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  float* data() { return p_; }
  size_t size() const { return n_; }

 private:
  float* p_ = nullptr;
  size_t n_ = 0;
};

// Resolve RunOptions::num_threads (0 = hardware_concurrency, at least 1).
int resolve_threads(const RunOptions& opts);

// Run body(thread_id) on `nthreads` threads (the caller's thread is thread 0). Exceptions in a
// body are caught and turned into a runtime_error Status.
Status run_threads(int nthreads, const std::function<void(int)>& body);

// Visible key range [lo, hi) of query row i of a sequence with sq queries and sk keys
// (AttnParams::key_range, kept as the one definition).
inline void key_range(const AttnParams& p, int i, int sq, int sk, int* lo, int* hi) {
  p.key_range(i, sq, sk, lo, hi);
}

// The ALiBi bias of (row i, key j) of a sequence with sq queries and sk keys, for a given slope,
// as params.h documents: the column form +slope*j in pure-causal mode, else
// -slope*|i + sk - sq - j|.
inline float alibi_bias(const AttnParams& p, float slope, int i, int j, int sq, int sk) {
  if (p.is_causal) return slope * static_cast<float>(j);
  const long long dist = static_cast<long long>(i) + sk - sq - j;
  return -slope * static_cast<float>(dist < 0 ? -dist : dist);
}

inline float alibi_slope(const AttnParams& p, int b, int h) {
  return p.alibi_slopes ? p.alibi_slopes[static_cast<int64_t>(b) * p.alibi_batch_stride + h] : 0.f;
}

Status fwd(const AttnParams& p, const RunOptions& opts);
// return_softmax: S_dmask from the forward's lse (dmask.cpp).
Status dmask(const AttnParams& p, const RunOptions& opts);
Status bwd(const AttnParams& p, const RunOptions& opts);

// The forward for any mode once the kv cache (if any) is prepared: fwd() without the append
// and rotary steps.
Status attention_fwd(const AttnParams& p, const RunOptions& opts);
// KV cache (kvcache.cpp): append k_new/v_new (k rotated) into the cache, rotate q into a
// scratch copy, then attention_fwd on the cache.
Status kvcache_fwd(const AttnParams& p, const RunOptions& opts);
// Split count for `items` (sequence, head, query tile) work items: p.num_splits when > 0,
// else enough pieces to give every thread work (never more than the key blocks, at most 128).
int choose_num_splits(const AttnParams& p, int64_t items, int max_kblocks, int nthreads);

}  // namespace flashplus::cpu
