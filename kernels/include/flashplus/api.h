// Public entry points. Names, argument order and meaning mirror FlashAttention 2.x's C++ API
// (csrc/flash_attn/flash_api.cpp; ../shared/CPP_API.md), so porting code is mechanical.
// Differences, all deliberate:
//   * tensors are non-owning TensorViews; outputs (out, softmax_lse, dq, dk, dv) are preallocated
//     by the caller on the same device as q;
//   * a Status is returned instead of throwing;
//   * softmax_scale == 0 means the default 1/sqrt(head_dim); NaN or inf is an error;
//   * fp32 storage is accepted besides fp16/bf16 (never silently down-cast);
//   * the last argument picks the backend and run-time options.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "flashplus/status.h"
#include "flashplus/tensor.h"

namespace flashplus {

enum class Backend { auto_select, cpu, cuda, hip };

struct KernelConfig;  // flashplus/tuning.h

const char* backend_name(Backend b);
// "cpu" | "cuda" | "hip" | "auto" -> Backend; false when unknown.
bool parse_backend(const std::string& s, Backend* out);

struct RunOptions {
  // auto_select runs on the backend that owns the tensors' memory (TensorView::device).
  Backend backend = Backend::auto_select;
  int num_threads = 0;      // CPU backend: 0 = std::thread::hardware_concurrency()
  void* stream = nullptr;   // GPU backends: cudaStream_t / hipStream_t; nullptr = default stream
  // Dropout randomness (p_dropout > 0): Philox key and counter offset (flashplus/philox.h). The
  // backward must get the same values as its forward to replay the mask; a caller drawing many
  // masks from one seed advances the offset (e.g. by one per call).
  uint64_t dropout_seed = 0;
  uint64_t dropout_offset = 0;
  // Force a kernel configuration (autotune, tests); nullptr = the normal choice (tuned table,
  // else heuristics). Not owned; must outlive the call. A configuration the backend has no
  // instance for makes the call return no_instance.
  const KernelConfig* config_override = nullptr;
};

// ---- argument structs ------------------------------------------------------------------------
// One struct per entry point: what the positional functions below, the C ABI
// (flashplus/flashplus_c.h) and the CLI fill. Fields carry the positional functions' names and
// defaults (upstream's); each positional function documents their meaning. An absent optional
// tensor is std::nullopt.
struct FwdArgs {
  TensorView q, k, v, out, softmax_lse;
  std::optional<TensorView> alibi_slopes;
  float p_dropout = 0.f;
  float softmax_scale = 0.f;  // 0 = 1/sqrt(head_dim)
  bool is_causal = false;
  int window_size_left = -1, window_size_right = -1;
  float softcap = 0.f;
  bool return_softmax = false;
  std::optional<TensorView> s_dmask;  // required with return_softmax, absent otherwise
  RunOptions opts;
};

struct BwdArgs {
  TensorView dout, q, k, v, out, softmax_lse, dq, dk, dv;
  std::optional<TensorView> alibi_slopes;
  float p_dropout = 0.f;
  float softmax_scale = 0.f;
  bool is_causal = false;
  int window_size_left = -1, window_size_right = -1;
  float softcap = 0.f;
  bool deterministic = false;
  std::optional<TensorView> softmax_d;
  RunOptions opts;
};

struct VarlenFwdArgs {
  TensorView q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k;
  std::optional<TensorView> seqused_k, leftpad_k, block_table, alibi_slopes;
  int max_seqlen_q = 0, max_seqlen_k = 0;
  float p_dropout = 0.f;
  float softmax_scale = 0.f;
  bool zero_tensors = false;
  bool is_causal = false;
  int window_size_left = -1, window_size_right = -1;
  float softcap = 0.f;
  bool return_softmax = false;
  int num_splits = 0;
  std::optional<TensorView> s_dmask;
  RunOptions opts;
};

struct VarlenBwdArgs {
  TensorView dout, q, k, v, out, softmax_lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k;
  std::optional<TensorView> alibi_slopes;
  int max_seqlen_q = 0, max_seqlen_k = 0;
  float p_dropout = 0.f;
  float softmax_scale = 0.f;
  bool zero_tensors = false;
  bool is_causal = false;
  int window_size_left = -1, window_size_right = -1;
  float softcap = 0.f;
  bool deterministic = false;
  std::optional<TensorView> softmax_d;
  RunOptions opts;
};

struct KvcacheArgs {
  TensorView q, kcache, vcache;
  std::optional<TensorView> k_new, v_new, cache_seqlens, rotary_cos, rotary_sin, cache_batch_idx,
      cache_leftpad, block_table, alibi_slopes;
  TensorView out, softmax_lse;
  float softmax_scale = 0.f;
  bool is_causal = false;
  int window_size_left = -1, window_size_right = -1;
  float softcap = 0.f;
  bool is_rotary_interleaved = false;
  int num_splits = 0;
  RunOptions opts;
};

// The entry points on their structs; the positional overloads below fill one and call these.
Status mha_fwd(const FwdArgs& a);
Status mha_bwd(const BwdArgs& a);
Status mha_varlen_fwd(const VarlenFwdArgs& a);
Status mha_varlen_bwd(const VarlenBwdArgs& a);
Status mha_fwd_kvcache(const KvcacheArgs& a);

// Forward. q (b, sq, h, d); k, v (b, sk, hk, d); out like q; softmax_lse fp32 (b, h, sq).
// alibi_slopes fp32 (h) or (b, h). p_dropout in [0, 1): P_ij * keep(b, h, i, j) / (1 - p), the mask
// from flashplus/philox.h with opts.dropout_seed/offset (lse is computed before dropout);
// dropout with softcap > 0 is invalid (as upstream). return_softmax needs p_dropout > 0 and the
// overload with s_dmask, which receives the dropout-applied probabilities (API.md §2.7): shape
// (b, h, round128(sq), round128(sk)), q's dtype; value P_ij = exp(z_ij - lse_i), negative where
// dropout drops (b, h, i, j), 0 where masked and in the padding (kernels/src/dmask.h).
// A query row that sees no key gets out = 0 and softmax_lse = +inf (as upstream).
Status mha_fwd(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
               const TensorView& softmax_lse, const std::optional<TensorView>& alibi_slopes,
               float p_dropout, float softmax_scale, bool is_causal, int window_size_left,
               int window_size_right, float softcap, bool return_softmax,
               const RunOptions& opts = {});
Status mha_fwd(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
               const TensorView& softmax_lse, const std::optional<TensorView>& alibi_slopes,
               float p_dropout, float softmax_scale, bool is_causal, int window_size_left,
               int window_size_right, float softcap, bool return_softmax,
               const std::optional<TensorView>& s_dmask, const RunOptions& opts = {});

// Backward. dout, out like q; softmax_lse as the forward wrote it; dq like q; dk, dv like k
// (summed over the query heads sharing each kv head). softmax_d, if given: fp32 (b, h, sq),
// receives rowsum(dout * out). With p_dropout > 0, opts must carry the forward's seed and offset.
Status mha_bwd(const TensorView& dout, const TensorView& q, const TensorView& k,
               const TensorView& v, const TensorView& out, const TensorView& softmax_lse,
               const TensorView& dq, const TensorView& dk, const TensorView& dv,
               const std::optional<TensorView>& alibi_slopes, float p_dropout,
               float softmax_scale, bool is_causal, int window_size_left, int window_size_right,
               float softcap, bool deterministic,
               const std::optional<TensorView>& softmax_d = std::nullopt,
               const RunOptions& opts = {});

// ---- variable-length batches (API.md §3.4) ---------------------------------------------------
// Forward over sequences packed back to back. q (total_q, h, d); k, v (total_k, hk, d); out like
// q; softmax_lse fp32 (h, total_q), column t = packed query token t. cu_seqlens_q/k: int32
// (b + 1), contiguous: sequence b owns query tokens [cu_seqlens_q[b], cu_seqlens_q[b+1]) and key
// tokens [cu_seqlens_k[b], cu_seqlens_k[b+1]); they must start at 0 and be non-decreasing, each
// length <= max_seqlen_q/k, and cu[b] <= total (checked on host memory; device memory is not
// checked, as upstream). seqused_k (b) int32, optional: sequence b uses only its first
// seqused_k[b] keys. Zero-length sequences are fine (an empty key sequence gives out = 0,
// lse = +inf). Masks, ALiBi and causal alignment use each sequence's own lengths; the window is
// canonicalised with Sk* = max_seqlen_k (API.md §2.3). Rows of out/lse that no sequence covers
// are left unwritten unless zero_tensors (then out = 0 and lse = -inf there first, as upstream).
// Work and memory follow the real token count (nothing is padded to max_seqlen).
// block_table (b, max_blocks_per_seq) int32, optional: k, v are a paged cache
// (num_blocks, page_block_size, hk, d), any page size; key j of sequence b is slot
// j % page_block_size of block block_table[b, j / page_block_size] (cu_seqlens_k then only gives
// the lengths). Host memory: the entries of the pages each sequence uses are range-checked.
// Forward only (no backward through paged K/V, as upstream). leftpad_k returns `unsupported` for
// now (use mha_fwd_kvcache's cache_leftpad). Dropout as mha_fwd (i, j count within the
// sequence; the mask index uses max_seqlen_q/k). num_splits as in mha_fwd_kvcache.
Status mha_varlen_fwd(const TensorView& q, const TensorView& k, const TensorView& v,
                      const TensorView& out, const TensorView& softmax_lse,
                      const TensorView& cu_seqlens_q, const TensorView& cu_seqlens_k,
                      const std::optional<TensorView>& seqused_k,
                      const std::optional<TensorView>& leftpad_k,
                      const std::optional<TensorView>& block_table,
                      const std::optional<TensorView>& alibi_slopes, int max_seqlen_q,
                      int max_seqlen_k, float p_dropout, float softmax_scale, bool zero_tensors,
                      bool is_causal, int window_size_left, int window_size_right, float softcap,
                      bool return_softmax, int num_splits = 0, const RunOptions& opts = {});
// The same with S_dmask (return_softmax, as mha_fwd): (b, h, round128(max_seqlen_q),
// round128(max_seqlen_k)); row i / column j are query i / key j of sequence b.
Status mha_varlen_fwd(const TensorView& q, const TensorView& k, const TensorView& v,
                      const TensorView& out, const TensorView& softmax_lse,
                      const TensorView& cu_seqlens_q, const TensorView& cu_seqlens_k,
                      const std::optional<TensorView>& seqused_k,
                      const std::optional<TensorView>& leftpad_k,
                      const std::optional<TensorView>& block_table,
                      const std::optional<TensorView>& alibi_slopes, int max_seqlen_q,
                      int max_seqlen_k, float p_dropout, float softmax_scale, bool zero_tensors,
                      bool is_causal, int window_size_left, int window_size_right, float softcap,
                      bool return_softmax, int num_splits,
                      const std::optional<TensorView>& s_dmask,
                      const RunOptions& opts = {});

// Backward of mha_varlen_fwd. dout, out, dq like q; dk, dv like k; softmax_lse (h, total_q) as
// the forward wrote it; softmax_d, if given, fp32 (h, total_q). Rows of dq/dk/dv that no
// sequence covers (and keys past a sequence's end) are left unwritten unless zero_tensors.
Status mha_varlen_bwd(const TensorView& dout, const TensorView& q, const TensorView& k,
                      const TensorView& v, const TensorView& out, const TensorView& softmax_lse,
                      const TensorView& dq, const TensorView& dk, const TensorView& dv,
                      const TensorView& cu_seqlens_q, const TensorView& cu_seqlens_k,
                      const std::optional<TensorView>& alibi_slopes, int max_seqlen_q,
                      int max_seqlen_k, float p_dropout, float softmax_scale, bool zero_tensors,
                      bool is_causal, int window_size_left, int window_size_right, float softcap,
                      bool deterministic,
                      const std::optional<TensorView>& softmax_d = std::nullopt,
                      const RunOptions& opts = {});

// ---- KV-cache decoding (API.md §3.7; forward only) ----------------------------------------------
// q (b, sq, h, d). kcache, vcache: contiguous (b_cache, seqlen_cache, hk, d), or paged
// (num_blocks, page_block_size, hk, d) with block_table (b, max_blocks_per_seq) int32 — any
// page size (upstream: multiples of 256). Capacity = seqlen_cache, or max_blocks_per_seq *
// page_block_size. k_new, v_new (b, s_new, hk, d), optional: written in place into the cache at
// logical positions cache_seqlens[b] .. cache_seqlens[b] + s_new - 1 (k after rotary) before
// attending; nothing else in the cache changes and cache_seqlens is not incremented.
// cache_seqlens (b) int32 (required with k_new; absent = the whole capacity). cache_batch_idx
// (b) int32: cache row of batch b (not with block_table). cache_leftpad (b) int32: first valid
// position of sequence b; keys count from it for masks and ALiBi (not with block_table).
// Sequence b attends to cache positions [leftpad, cache_seqlens[b] + s_new).
// rotary_cos/sin (seqlen_ro >= capacity, rotary_dim / 2), dtype of q, contiguous, require
// k_new: the first rotary_dim channels of k_new (position cache_seqlens[b] + t) and of q
// (cache_seqlens[b] + i when causal or windowed, else cache_seqlens[b]) are rotated in fp32
// and rounded to q's dtype (API.md §7.1; interleaved pairs (2j, 2j+1), else (j, j + R/2)).
// out like q; softmax_lse fp32 (b, h, sq). num_splits: 0 = choose, 1 = no split, n <= 128 =
// n pieces of the key sequence combined through their LSE (equal results within rounding).
// Host memory: cache_seqlens beyond the capacity, out-of-range cache_batch_idx/cache_leftpad
// and out-of-range block_table entries (of the pages a sequence uses) are invalid_args, checked
// before anything is read or written. Device memory: not checked (as upstream).
Status mha_fwd_kvcache(const TensorView& q, const TensorView& kcache, const TensorView& vcache,
                       const std::optional<TensorView>& k_new,
                       const std::optional<TensorView>& v_new,
                       const std::optional<TensorView>& cache_seqlens,
                       const std::optional<TensorView>& rotary_cos,
                       const std::optional<TensorView>& rotary_sin,
                       const std::optional<TensorView>& cache_batch_idx,
                       const std::optional<TensorView>& cache_leftpad,
                       const std::optional<TensorView>& block_table,
                       const std::optional<TensorView>& alibi_slopes, const TensorView& out,
                       const TensorView& softmax_lse, float softmax_scale, bool is_causal,
                       int window_size_left, int window_size_right, float softcap,
                       bool is_rotary_interleaved, int num_splits, const RunOptions& opts = {});

// ---- what this build can do ------------------------------------------------------------------
struct DeviceDesc {
  Backend backend;
  int index = 0;
  std::string name;        // "NVIDIA H100 80GB HBM3", "cpu: 2 threads"
  std::string arch;        // "sm_90", "gfx90a", "x86_64"
  int multiprocessors = 0; // SMs / CUs / hardware threads
  size_t memory_bytes = 0;
};

// Backends compiled into this library (cpu always).
std::vector<Backend> compiled_backends();
// Devices found at run time, over all compiled backends.
std::vector<DeviceDesc> list_devices();
// The backend `auto` means for tensors allocated by a caller with no preference: the first GPU
// backend with a device, else cpu.
Backend best_backend();

}  // namespace flashplus
